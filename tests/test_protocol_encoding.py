"""Command encoding, address validation, message data and SASL -- sans-IO.

Nothing with a character that could end or smuggle a line is ever encoded;
whatever bytes a message holds, exactly one terminator reaches the wire."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkmail.protocol import commands
from bulkmail.protocol.auth import Credentials, NoCommonMechanism, SASLClient, choose_mechanism
from bulkmail.protocol.data import (
    PreparedMessage,
    bdat_chunks,
    dot_stuff,
    encode_data,
    normalize_newlines,
    unstuff,
)
from bulkmail.protocol.errors import (
    InvalidAddress,
    InvalidArgument,
    LocalProtocolError,
    MessageError,
    RemoteProtocolError,
)

# -- addresses and commands ---------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "a@b.com\r\nRCPT TO:<evil@x.test>",
        "a@b.com\n",
        "a\x00@b.com",
        "a\tb@b.com",
        "a\x7f@b.com",
        "a<b@b.com",
        "a>b@b.com",
        "a b@b.com",
        "a@b .com",
        "a@b\x85.com",
    ],
)
def test_injection_attempts_raise_and_encode_nothing(address: str) -> None:
    with pytest.raises(InvalidAddress):
        commands.rcpt_to(address)
    with pytest.raises(InvalidAddress):
        commands.mail_from(address)


def test_address_rules() -> None:
    assert commands.validate_address("user@example.com") == "user@example.com"
    assert commands.validate_address('"a b"@example.com') == '"a b"@example.com'
    assert commands.validate_address("u@[192.0.2.1]") == "u@[192.0.2.1]"
    assert commands.validate_address("u@[IPv6:2001:db8::1]") == "u@[IPv6:2001:db8::1]"
    assert commands.validate_address("x" * 64 + "@example.com")
    cases = {
        "no-at-sign": "missing @",
        "x" * 65 + "@example.com": "64 octets",
        "u@" + ("a" * 63 + ".") * 4 + "com": "255 octets",
        "@example.com": "empty local part",
        "u@": "empty domain",
        "u@-bad-.com": "malformed domain",
        "u@[300.1.1.1]": "address literal",
        '"unbalanced@example.com': "quotes",
    }
    for address, reason in cases.items():
        with pytest.raises(InvalidAddress, match=re.escape(reason)):
            commands.validate_address(address)


def test_non_ascii_local_part_needs_smtputf8() -> None:
    with pytest.raises(InvalidAddress, match="non-ASCII local part needs SMTPUTF8"):
        commands.validate_address("jörg@example.com")
    assert commands.validate_address("jörg@example.com", smtputf8=True) == "jörg@example.com"
    assert commands.needs_smtputf8("jörg@example.com")
    assert not commands.needs_smtputf8("user@bücher.example")


def test_idn_domain_goes_out_as_a_label_without_smtputf8() -> None:
    assert commands.validate_address("user@bücher.example") == "user@xn--bcher-kva.example"
    assert commands.validate_address("user@bücher.example", smtputf8=True) == (
        "user@bücher.example"
    )


def test_command_lines() -> None:
    assert commands.ehlo("client.sender.com") == b"EHLO client.sender.com\r\n"
    assert commands.helo("h") == b"HELO h\r\n"
    assert commands.mail_from("") == b"MAIL FROM:<>\r\n"
    assert commands.mail_from("a@b.c", size=10, body="8BITMIME", smtputf8=True,
                              params={"RET": "HDRS", "X": None}) == (
        b"MAIL FROM:<a@b.c> SIZE=10 BODY=8BITMIME SMTPUTF8 RET=HDRS X\r\n"
    )
    assert commands.rcpt_to("a@b.c", params={"NOTIFY": "NEVER"}) == (
        b"RCPT TO:<a@b.c> NOTIFY=NEVER\r\n"
    )
    assert commands.bdat(12, last=True) == b"BDAT 12 LAST\r\n"
    assert commands.bdat(0, last=False) == b"BDAT 0\r\n"
    assert commands.auth("PLAIN", "") == b"AUTH PLAIN =\r\n"
    assert commands.auth("LOGIN") == b"AUTH LOGIN\r\n"
    assert commands.vrfy("postmaster") == b"VRFY postmaster\r\n"
    assert commands.expn("list") == b"EXPN list\r\n"
    assert commands.noop() == b"NOOP\r\n"
    for constant in (commands.DATA, commands.RSET, commands.QUIT, commands.STARTTLS):
        assert constant.endswith(b"\r\n") and constant.count(b"\r\n") == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda: commands.ehlo("bad\r\nname"),
        lambda: commands.ehlo(""),
        lambda: commands.ehlo("host\x00"),
        lambda: commands.mail_from("a@b.c", params={"BAD KEY": "v"}),
        lambda: commands.mail_from("a@b.c", params={"K": "v=1"}),
        lambda: commands.mail_from("a@b.c", params={"K": "v\r\nRCPT"}),
        lambda: commands.mail_from("a@b.c", body="9BIT"),
        lambda: commands.vrfy("x\ry"),
        lambda: commands.line("abc\n"),
    ],
)
def test_bad_arguments_raise_before_encoding(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument):
        call()


# -- message data ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "message, wire",
    [
        (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r.\rb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r\r\n.\r\r\nb", b"a\r\n\r\n..\r\n\r\nb\r\n.\r\n"),
        (b".starts", b"..starts\r\n.\r\n"),
        (b".\r\n..\r\n", b"..\r\n...\r\n.\r\n"),
        (b"no final crlf", b"no final crlf\r\n.\r\n"),
        (b"", b".\r\n"),
    ],
)
def test_smuggling_shapes_reach_the_wire_safely(message: bytes, wire: bytes) -> None:
    assert encode_data(message) == wire


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300) | st.lists(
    st.sampled_from([b"\r", b"\n", b".", b"\r\n", b"x", b"\r\n.\r\n", b".."]), max_size=40
).map(b"".join))
def test_encoded_data_has_crlf_only_stuffing_and_one_terminator(message: bytes) -> None:
    wire = encode_data(message)
    body = wire[:-3]
    assert wire.endswith(b".\r\n")
    assert b"\r" not in body.replace(b"\r\n", b"") and b"\n" not in body.replace(b"\r\n", b"")
    lines = body.split(b"\r\n")[:-1] if body else []
    assert all(line != b"." for line in lines)  # only the terminator is a lone dot
    assert all(not line.startswith(b".") or line.startswith(b"..") for line in lines)
    assert unstuff(wire) == normalize_newlines(message)  # the round trip is exact


def test_prepared_message_checks_what_the_server_can_take() -> None:
    long_line = PreparedMessage.from_bytes(b"x" * 1200 + b"\r\n")
    with pytest.raises(MessageError, match="1200"):
        long_line.check_sendable(eightbitmime=True, max_size=None)
    eight = PreparedMessage.from_bytes("café\n".encode())
    with pytest.raises(MessageError, match="8BITMIME"):
        eight.check_sendable(eightbitmime=False, max_size=None)
    eight.check_sendable(eightbitmime=True, max_size=None)
    with pytest.raises(MessageError, match="SIZE"):
        eight.check_sendable(eightbitmime=True, max_size=3)


def test_bdat_chunks_reassemble() -> None:
    normalized = normalize_newlines(b"abc\n" * 1000)
    chunks = bdat_chunks(normalized, chunk_size=333)
    assert b"".join(chunks) == normalized and max(map(len, chunks)) == 333
    assert bdat_chunks(b"") == [b""]
    assert dot_stuff(b".a\r\n") == b"..a\r\n"


# -- SASL -------------------------------------------------------------------------------


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
