"""SASL client mechanisms (sans-IO): known answers, choice, injection, redaction."""

from __future__ import annotations

import base64

import pytest

from bulkmail.protocol.auth import Credentials, NoCommonMechanism, SASLClient, choose_mechanism
from bulkmail.protocol.errors import LocalProtocolError, RemoteProtocolError


def test_plain_reproduces_the_seed_session_line() -> None:
    sasl = SASLClient("PLAIN", Credentials("username", "password", authzid="username"))
    assert sasl.start() == b"AUTH PLAIN dXNlcm5hbWUAdXNlcm5hbWUAcGFzc3dvcmQ=\r\n"
    assert "cGFzc3dvcmQ" not in sasl.redacted(sasl.start())


def test_login_sequence() -> None:
    sasl = SASLClient("LOGIN", Credentials("tim", "secret"))
    assert sasl.start() == b"AUTH LOGIN\r\n"
    assert base64.b64decode(sasl.respond("VXNlcm5hbWU6").strip()) == b"tim"
    assert base64.b64decode(sasl.respond("UGFzc3dvcmQ6").strip()) == b"secret"
    assert sasl.redacted(b"c2VjcmV0\r\n") == "<redacted>"


def test_cram_md5_rfc_2195_example() -> None:
    sasl = SASLClient("CRAM-MD5", Credentials("tim", "tanstaaftanstaaf"))
    challenge = base64.b64encode(b"<1896.697170952@postoffice.reston.mci.net>").decode()
    answer = base64.b64decode(sasl.respond(challenge).strip())
    assert answer == b"tim b913a602c7eda7a495b4e6e7334d3890"


def test_xoauth2_line_and_error_challenge() -> None:
    sasl = SASLClient("XOAUTH2", Credentials("u@x.test", oauth_token="tok"))
    line = sasl.start()
    assert base64.b64decode(line.split()[2]) == b"user=u@x.test\x01auth=Bearer tok\x01\x01"
    assert sasl.respond(base64.b64encode(b'{"status":"401"}').decode()) == b"\r\n"


def test_mechanism_choice() -> None:
    assert choose_mechanism(["LOGIN", "PLAIN", "CRAM-MD5"], Credentials("u", "p")) == "CRAM-MD5"
    assert choose_mechanism(["LOGIN", "PLAIN"], Credentials("u", "p")) == "PLAIN"
    assert choose_mechanism(["XOAUTH2", "PLAIN"], Credentials("u", oauth_token="t")) == "XOAUTH2"
    assert choose_mechanism(["PLAIN", "LOGIN"], Credentials("u", "p", mechanism="LOGIN")) == (
        "LOGIN"
    )
    with pytest.raises(NoCommonMechanism):
        choose_mechanism(["GSSAPI"], Credentials("u", "p"))
    with pytest.raises(NoCommonMechanism):
        choose_mechanism(["PLAIN"], Credentials("u", "p", mechanism="LOGIN"))


def test_credentials_cannot_inject_lines_and_bad_challenges_raise() -> None:
    with pytest.raises(LocalProtocolError):
        SASLClient("PLAIN", Credentials("u\r\nMAIL FROM:<x>", "p"))
    sasl = SASLClient("LOGIN", Credentials("u", "p"))
    with pytest.raises(RemoteProtocolError):
        sasl.respond("not base64!!")
