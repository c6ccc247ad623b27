"""SASL client mechanisms: known answers from the RFCs and the seed session, the
choice of mechanism, injection and redaction, fuzzing, and one real server."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import socket
from typing import BinaryIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkmail.protocol import sasl
from bulkmail.protocol.auth import Credentials, NoCommonMechanism, SASLClient, choose_mechanism
from bulkmail.protocol.errors import LocalProtocolError, RemoteProtocolError

from .aiosmtpd_util import Authenticator, aiosmtpd_server


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(line: bytes) -> bytes:
    assert line.endswith(b"\r\n")
    return base64.b64decode(line[:-2], validate=True)


# -- PLAIN (RFC 4616) ---------------------------------------------------------


def test_plain_reproduces_the_seed_session_line() -> None:
    client = SASLClient("PLAIN", Credentials("username", "password", authzid="username"))
    assert client.start() == b"AUTH PLAIN dXNlcm5hbWUAdXNlcm5hbWUAcGFzc3dvcmQ=\r\n"


def test_plain_without_authzid_starts_with_nul() -> None:
    line = SASLClient("PLAIN", Credentials("alice", "wonder")).start()
    assert line == b"AUTH PLAIN " + b64(b"\0alice\0wonder").encode() + b"\r\n"


def test_plain_utf8_credentials() -> None:
    line = SASLClient("PLAIN", Credentials("jürgen", "pässwörd")).start()
    assert base64.b64decode(line.split()[2]) == "\0jürgen\0pässwörd".encode()


def test_plain_rejects_a_challenge_after_its_initial_response() -> None:
    client = SASLClient("PLAIN", Credentials("alice", "wonder"))
    client.start()
    with pytest.raises(RemoteProtocolError, match="unexpected PLAIN challenge"):
        client.respond("")


def test_plain_too_long_for_the_auth_line_waits_for_the_empty_challenge() -> None:
    password = "p" * 600
    client = SASLClient("PLAIN", Credentials("alice", password))
    assert client.start() == b"AUTH PLAIN\r\n"
    assert unb64(client.respond("")) == f"\0alice\0{password}".encode()
    with pytest.raises(RemoteProtocolError):
        client.respond("")


# -- LOGIN (draft-murchison-sasl-login) -----------------------------------------


def test_login_sequence() -> None:
    client = SASLClient("LOGIN", Credentials("alice", "wonder"))
    assert client.start() == b"AUTH LOGIN\r\n"
    assert client.respond("VXNlcm5hbWU6") == b64(b"alice").encode() + b"\r\n"  # "Username:"
    assert client.respond("UGFzc3dvcmQ6") == b64(b"wonder").encode() + b"\r\n"  # "Password:"
    with pytest.raises(RemoteProtocolError, match="unexpected LOGIN challenge"):
        client.respond("UGFzc3dvcmQ6")


# -- CRAM-MD5 (RFC 2195) --------------------------------------------------------


def test_cram_md5_rfc2195_example() -> None:
    client = SASLClient("CRAM-MD5", Credentials("tim", "tanstaaftanstaaf"))
    assert client.start() == b"AUTH CRAM-MD5\r\n"
    # the RFC's own base64 lines, server and client
    reply = client.respond("PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+")
    assert reply == b"dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw\r\n"
    assert unb64(reply) == b"tim b913a602c7eda7a495b4e6e7334d3890"


def test_cram_md5_rejects_an_empty_challenge() -> None:
    client = SASLClient("CRAM-MD5", Credentials("tim", "tanstaaftanstaaf"))
    client.start()
    with pytest.raises(RemoteProtocolError, match="empty"):
        client.respond("")


# -- DIGEST-MD5 (RFC 2831) -------------------------------------------------------

RFC_CHALLENGE = (
    b'realm="elwood.innosoft.com",nonce="OA6MG9tEQGm2hh",qop="auth",'
    b"algorithm=md5-sess,charset=utf-8"
)
RFC_RESPONSE = (
    b'charset=utf-8,username="chris",realm="elwood.innosoft.com",nonce="OA6MG9tEQGm2hh",'
    b'nc=00000001,cnonce="OA6MHXh6VqTrRk",digest-uri="imap/elwood.innosoft.com",'
    b"response=d388dad90d4bbd760a152321f2143af7,qop=auth"
)


def rfc2831(user: bytes, realm: bytes, password: bytes, nonce: str, cnonce: str, uri: str,
            *, authzid: bytes = b"", server: bool = False) -> str:
    """RFC 2831 §2.1.2.1 written out independently of the code under test."""
    def h(data: bytes) -> bytes:
        return hashlib.md5(data).digest()

    def hex_h(data: bytes) -> str:
        return hashlib.md5(data).hexdigest()

    a1 = h(user + b":" + realm + b":" + password) + f":{nonce}:{cnonce}".encode()
    if authzid:
        a1 += b":" + authzid
    a2 = ("" if server else "AUTHENTICATE") + ":" + uri
    kd_input = f"{hex_h(a1)}:{nonce}:00000001:{cnonce}:auth:{hex_h(a2.encode())}"
    return hex_h(kd_input.encode())


def digest_client(username: str = "chris", password: str = "secret", **kwargs: str) -> SASLClient:
    kwargs.setdefault("authzid", "")
    credentials = Credentials(username, password, authzid=kwargs.pop("authzid"))
    client = SASLClient("DIGEST-MD5", credentials, host="elwood.innosoft.com", service="imap",
                        cnonce="OA6MHXh6VqTrRk")
    assert client.start() == b"AUTH DIGEST-MD5\r\n"
    return client


def directives(response: bytes) -> dict[str, str]:
    """The response's directives, values as sent (quoted ones keep their quotes)."""
    pairs = re.findall(r'([a-z-]+)=("(?:[^"\\]|\\.)*"|[^,]*)', response.decode("utf-8"))
    return dict(pairs)


def test_digest_md5_rfc2831_example() -> None:
    client = digest_client()
    assert unb64(client.respond(b64(RFC_CHALLENGE))) == RFC_RESPONSE
    expected = rfc2831(b"chris", b"elwood.innosoft.com", b"secret", "OA6MG9tEQGm2hh",
                       "OA6MHXh6VqTrRk", "imap/elwood.innosoft.com")
    assert expected == "d388dad90d4bbd760a152321f2143af7"
    assert client.respond(b64(b"rspauth=ea40f60335c427b5527b84dbabcdfffd")) == b"\r\n"
    with pytest.raises(RemoteProtocolError, match="unexpected DIGEST-MD5 challenge"):
        client.respond("")


def test_digest_md5_default_digest_uri_is_smtp_host() -> None:
    client = SASLClient("DIGEST-MD5", Credentials("chris", "secret"), host="mx.bulkmail.test")
    client.start()
    sent = directives(unb64(client.respond(b64(RFC_CHALLENGE))))
    assert sent["digest-uri"] == '"smtp/mx.bulkmail.test"'
    cnonce = sent["cnonce"].strip('"')
    assert len(cnonce) >= 16  # random, at least 64 bits
    assert sent["response"] == rfc2831(b"chris", b"elwood.innosoft.com", b"secret",
                                       "OA6MG9tEQGm2hh", cnonce, "smtp/mx.bulkmail.test")


def test_digest_md5_rspauth_mismatch_is_the_servers_fault() -> None:
    client = digest_client()
    client.respond(b64(RFC_CHALLENGE))
    with pytest.raises(RemoteProtocolError, match="rspauth"):
        client.respond(b64(b"rspauth=00000000000000000000000000000000"))


def test_digest_md5_authzid_and_parsing_of_quoted_lists() -> None:
    challenge = (
        b' realm = "first, realm" , realm="second",nonce="n\\"o,n\\\\ce",,'
        b' qop="auth-int, auth",maxbuf=65536,algorithm=MD5-SESS,charset=UTF-8,cipher="rc4"'
    )
    client = digest_client(authzid="boss")
    sent = directives(unb64(client.respond(b64(challenge))))
    assert sent["realm"] == '"first, realm"'
    assert sent["nonce"] == '"n\\"o,n\\\\ce"'  # re-quoted as received
    assert sent["authzid"] == '"boss"'
    assert sent["response"] == rfc2831(b"chris", b"first, realm", b"secret", 'n"o,n\\ce',
                                       "OA6MHXh6VqTrRk", "imap/elwood.innosoft.com",
                                       authzid=b"boss")
    server = rfc2831(b"chris", b"first, realm", b"secret", 'n"o,n\\ce', "OA6MHXh6VqTrRk",
                     "imap/elwood.innosoft.com", authzid=b"boss", server=True)
    assert client.respond(b64(f'rspauth="{server}"'.encode())) == b"\r\n"


def test_digest_md5_without_realm_or_charset_hashes_latin1() -> None:
    client = digest_client(username="josé", password="s€cret")
    with pytest.raises(LocalProtocolError, match="Latin-1"):
        client.respond(b64(b'nonce="abc",algorithm=md5-sess'))
    client = digest_client(username="josé", password="secret")
    raw = unb64(client.respond(b64(b'nonce="abc",algorithm=md5-sess')))
    assert b"realm" not in raw and b"charset" not in raw
    assert raw.startswith('username="josé"'.encode("latin-1"))
    assert directives(raw.decode("latin-1").encode())["response"] == rfc2831(
        "josé".encode("latin-1"), b"", b"secret", "abc", "OA6MHXh6VqTrRk",
        "imap/elwood.innosoft.com")


def test_digest_md5_utf8_hashes_latin1_representable_values_in_latin1() -> None:
    client = digest_client(username="josé", password="s€cret")
    raw = unb64(client.respond(b64(RFC_CHALLENGE)))
    assert 'username="josé"'.encode() in raw  # sent in UTF-8
    assert directives(raw)["response"] == rfc2831(
        "josé".encode("latin-1"), b"elwood.innosoft.com", "s€cret".encode(), "OA6MG9tEQGm2hh",
        "OA6MHXh6VqTrRk", "imap/elwood.innosoft.com")


def test_digest_md5_challenge_charsets() -> None:
    latin1 = b'realm="caf\xe9",nonce="abc",algorithm=md5-sess'
    raw = unb64(digest_client().respond(b64(latin1)))
    assert b'realm="caf\xe9",nonce="abc"' in raw  # echoed byte for byte
    assert directives(raw.decode("latin-1").encode())["response"] == rfc2831(
        b"chris", b"caf\xe9", b"secret", "abc", "OA6MHXh6VqTrRk", "imap/elwood.innosoft.com")
    utf8 = 'realm="東京",nonce="abc",algorithm=md5-sess,charset=utf-8'.encode()
    raw = unb64(digest_client().respond(b64(utf8)))
    assert directives(raw)["realm"] == '"東京"'
    assert directives(raw)["response"] == rfc2831(
        b"chris", "東京".encode(), b"secret", "abc", "OA6MHXh6VqTrRk", "imap/elwood.innosoft.com")
    with pytest.raises(RemoteProtocolError, match="not UTF-8"):
        digest_client().respond(b64(b'realm="\xff",nonce="a",algorithm=md5-sess,charset=utf-8'))


@pytest.mark.parametrize(
    ("challenge", "match"),
    [
        (b'realm="x",qop="auth",algorithm=md5-sess', "exactly one nonce"),
        (b'nonce="a",nonce="b",algorithm=md5-sess', "repeated"),
        (b'nonce="a"', "exactly one algorithm"),
        (b'nonce="a",algorithm=md5', "md5-sess"),
        (b'nonce="a",algorithm=md5-sess,qop="auth-conf"', "qop=auth"),
        (b'nonce="a",algorithm=md5-sess,charset=latin1', "charset"),
        (b'nonce="a,algorithm=md5-sess', "unterminated"),
        (b'nonce="a" algorithm=md5-sess', "separated"),
        (b'nonce,algorithm=md5-sess', "without a value"),
        (b'=x', "expected a token"),
        (b'nonce="' + b"x" * 2048 + b'",algorithm=md5-sess', "2048"),
    ],
)
def test_digest_md5_malformed_challenges(challenge: bytes, match: str) -> None:
    client = digest_client()
    with pytest.raises(RemoteProtocolError, match=match):
        client.respond(b64(challenge))


def test_digest_md5_second_challenge_must_carry_rspauth() -> None:
    client = digest_client()
    client.respond(b64(RFC_CHALLENGE))
    with pytest.raises(RemoteProtocolError, match="rspauth"):
        client.respond(b64(RFC_CHALLENGE))


# -- XOAUTH2 -----------------------------------------------------------------------


def test_xoauth2_line_and_error_challenge() -> None:
    client = SASLClient("XOAUTH2", Credentials("someuser@example.com", oauth_token="ya29.vF9d"))
    expected = b64(b"user=someuser@example.com\x01auth=Bearer ya29.vF9d\x01\x01")
    assert client.start() == f"AUTH XOAUTH2 {expected}\r\n".encode()
    error = b64(b'{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}')
    assert client.respond(error) == b"\r\n"  # acknowledge; the server then answers 5xx
    with pytest.raises(RemoteProtocolError, match="unexpected XOAUTH2 challenge"):
        client.respond(error)


def test_xoauth2_long_token_goes_in_answer_to_the_empty_challenge() -> None:
    token = "t" * 2000
    client = SASLClient("XOAUTH2", Credentials("u@example.com", oauth_token=token))
    assert client.start() == b"AUTH XOAUTH2\r\n"
    expected = f"user=u@example.com\x01auth=Bearer {token}\x01\x01".encode()
    assert unb64(client.respond("")) == expected
    assert client.respond(b64(b'{"status":"400"}')) == b"\r\n"


# -- choose_mechanism ----------------------------------------------------------------

PASSWORD = Credentials("alice", "wonder")
TOKEN = Credentials("alice", oauth_token="tok")


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["LOGIN", "PLAIN", "DIGEST-MD5", "CRAM-MD5"], "CRAM-MD5"),
        (["LOGIN", "DIGEST-MD5", "PLAIN"], "PLAIN"),
        (["DIGEST-MD5", "LOGIN", "XOAUTH2"], "LOGIN"),
        (["DIGEST-MD5", "GSSAPI"], "DIGEST-MD5"),
        (["login", "plain"], "PLAIN"),
    ],
)
def test_password_preferences(offered: list[str], chosen: str) -> None:
    assert choose_mechanism(offered, PASSWORD) == chosen


def test_token_chooses_xoauth2_and_requires_it() -> None:
    assert choose_mechanism(["PLAIN", "XOAUTH2"], TOKEN) == "XOAUTH2"
    with pytest.raises(NoCommonMechanism) as info:
        choose_mechanism(["PLAIN", "LOGIN"], TOKEN)
    assert str(info.value) == "server offers PLAIN LOGIN; these credentials can use XOAUTH2"
    assert info.value.offered == ("PLAIN", "LOGIN") and info.value.usable == ("XOAUTH2",)


def test_token_and_password_fall_back_to_the_password() -> None:
    both = Credentials("alice", "wonder", oauth_token="tok")
    assert choose_mechanism(["XOAUTH2", "PLAIN"], both) == "XOAUTH2"
    assert choose_mechanism(["LOGIN"], both) == "LOGIN"


def test_forced_mechanism_must_be_offered() -> None:
    forced = Credentials("alice", "wonder", mechanism="login")
    assert choose_mechanism(["CRAM-MD5", "LOGIN"], forced) == "LOGIN"
    with pytest.raises(NoCommonMechanism, match=r"server offers CRAM-MD5 PLAIN; .* use LOGIN$"):
        choose_mechanism(["CRAM-MD5", "PLAIN"], forced)


@pytest.mark.parametrize(
    ("credentials", "offered", "message"),
    [
        (Credentials("a", "p", mechanism="GSSAPI"), ["GSSAPI"], "offers GSSAPI; .* use nothing"),
        (Credentials("a", "p", mechanism="XOAUTH2"), ["XOAUTH2"], "use nothing"),
        (Credentials("a"), ["PLAIN"], "offers PLAIN; .* use nothing"),
        (PASSWORD, [], "offers no AUTH mechanisms; .* use CRAM-MD5 PLAIN LOGIN DIGEST-MD5"),
    ],
)
def test_no_common_mechanism(credentials: Credentials, offered: list[str], message: str) -> None:
    with pytest.raises(NoCommonMechanism, match=message):
        choose_mechanism(offered, credentials)
    assert issubclass(NoCommonMechanism, LocalProtocolError)


# -- misuse, injection, malformed input ---------------------------------------------------


@pytest.mark.parametrize("bad", ["a\r\nRSET", "a\nb", "a\rb", "a\0b"])
@pytest.mark.parametrize("where", ["username", "password", "oauth_token", "authzid"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5", "XOAUTH2"])
def test_control_characters_in_credentials_are_refused_up_front(
    bad: str, where: str, mechanism: str
) -> None:
    fields = {"username": "alice", "password": "wonder", "oauth_token": "tok", "authzid": ""}
    fields[where] = bad
    with pytest.raises(LocalProtocolError, match="CR, LF or NUL"):
        SASLClient(mechanism, Credentials(**fields))


def test_xoauth2_field_separator_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="0x01"):
        SASLClient("XOAUTH2", Credentials("a\x01auth=Bearer evil", oauth_token="tok"))
    with pytest.raises(LocalProtocolError, match="0x01"):
        SASLClient("XOAUTH2", Credentials("a", oauth_token="tok\x01\x01"))


def test_host_and_cnonce_are_checked_too() -> None:
    with pytest.raises(LocalProtocolError, match="host"):
        SASLClient("DIGEST-MD5", PASSWORD, host="mx\r\nQUIT")
    with pytest.raises(LocalProtocolError, match="cnonce"):
        SASLClient("DIGEST-MD5", PASSWORD, cnonce="x\n")


@pytest.mark.parametrize(
    ("mechanism", "credentials", "message"),
    [
        ("GSSAPI", PASSWORD, "unsupported"),
        ("XOAUTH2", PASSWORD, "needs an OAuth token"),
        ("PLAIN", TOKEN, "needs a password"),
    ],
)
def test_mechanism_must_fit_the_credentials(
    mechanism: str, credentials: Credentials, message: str
) -> None:
    with pytest.raises(LocalProtocolError, match=message):
        SASLClient(mechanism, credentials)


def test_start_is_idempotent_and_respond_implies_it() -> None:
    client = SASLClient("PLAIN", PASSWORD)
    line = client.start()
    assert client.start() == line == b"AUTH PLAIN AGFsaWNlAHdvbmRlcg==\r\n"
    with pytest.raises(RemoteProtocolError):
        client.respond("")  # the initial response was not consumed twice
    client = SASLClient("LOGIN", PASSWORD)
    assert client.respond("") == b64(b"alice").encode() + b"\r\n"
    assert client.start() == b"AUTH LOGIN\r\n"
    long = SASLClient("XOAUTH2", Credentials("u", oauth_token="t" * 600))
    assert long.start() == long.start() == b"AUTH XOAUTH2\r\n"


@pytest.mark.parametrize("mechanism", ["LOGIN", "CRAM-MD5", "DIGEST-MD5", "XOAUTH2"])
@pytest.mark.parametrize("challenge", ["not base64!", "abc", "YWJj\nZGVm", "ümlaut"])
def test_malformed_base64_is_the_servers_fault(mechanism: str, challenge: str) -> None:
    client = SASLClient(mechanism, Credentials("alice", "wonder", oauth_token="tok"))
    client.start()
    with pytest.raises(RemoteProtocolError, match="base64"):
        client.respond(challenge)


ALL = ["PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5", "XOAUTH2"]
CHALLENGES = st.text(max_size=60) | st.binary(max_size=200).map(b64)


@settings(max_examples=300, deadline=None)
@given(mechanism=st.sampled_from(ALL), challenges=st.lists(CHALLENGES, max_size=4))
def test_fuzz_challenges_answer_or_raise_remote_error(
    mechanism: str, challenges: list[str]
) -> None:
    client = SASLClient(mechanism, Credentials("alice", "wonder", oauth_token="tok"))
    client.start()
    for challenge in challenges:
        try:
            assert client.respond(challenge).endswith(b"\r\n")
        except RemoteProtocolError:
            return


DIRECTIVE_NAMES = st.sampled_from(
    ["realm", "nonce", "qop", "charset", "algorithm", "maxbuf", "stale", "rspauth", "x"]
)
DIRECTIVE_VALUES = (
    st.sampled_from(["md5-sess", "utf-8", "auth", '"auth,auth-int"', '""', '"\\"', '"'])
    | st.text(alphabet=st.characters(max_codepoint=0x3FF), max_size=12).map(
        lambda v: '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    )
    | st.text(max_size=8)
)
DIRECTIVES = st.lists(
    st.tuples(DIRECTIVE_NAMES, DIRECTIVE_VALUES, st.sampled_from([",", " , ", ",,", " "])),
    max_size=8,
).map(lambda items: "".join(f"{k}={v}{sep}" for k, v, sep in items).encode())


@settings(max_examples=300, deadline=None)
@given(first=DIRECTIVES | st.binary(max_size=300), second=DIRECTIVES)
def test_fuzz_digest_challenges_answer_or_raise_remote_error(first: bytes, second: bytes) -> None:
    for prefix in (b"", b'nonce="n",algorithm=md5-sess,'):
        client = digest_client()
        with contextlib.suppress(RemoteProtocolError):
            assert client.respond(b64(prefix + first)).endswith(b"\r\n")
            assert client.respond(b64(second)) == b"\r\n"


# -- redaction ----------------------------------------------------------------------


def exchange(mechanism: str, credentials: Credentials) -> tuple[SASLClient, list[bytes]]:
    """Every line the client sends in a successful run of ``mechanism``."""
    client = SASLClient(mechanism, credentials, host="elwood.innosoft.com", service="imap",
                        cnonce="OA6MHXh6VqTrRk")
    challenges = {
        "PLAIN": [],
        "LOGIN": ["VXNlcm5hbWU6", "UGFzc3dvcmQ6"],
        "CRAM-MD5": [b64(b"<1896.697170952@postoffice.reston.mci.net>")],
        "DIGEST-MD5": [b64(RFC_CHALLENGE)],
        "XOAUTH2": [b64(b'{"status":"401"}')],
    }[mechanism]
    lines = [client.start()] + [client.respond(c) for c in challenges]
    return client, lines


@pytest.mark.parametrize(
    ("mechanism", "trace"),
    [
        ("PLAIN", ["AUTH PLAIN <redacted>"]),
        ("LOGIN", ["AUTH LOGIN", "<redacted>", "<redacted>"]),
        ("CRAM-MD5", ["AUTH CRAM-MD5", "<redacted>"]),
        ("DIGEST-MD5", ["AUTH DIGEST-MD5", "<redacted>"]),
        ("XOAUTH2", ["AUTH XOAUTH2 <redacted>", ""]),
    ],
)
def test_redaction_never_reveals_the_secret(mechanism: str, trace: list[str]) -> None:
    credentials = Credentials("chris", "secret", oauth_token="tokensecret")
    client, lines = exchange(mechanism, credentials)
    shown = [client.redacted(line) for line in lines]
    assert shown == trace
    for text in shown:
        assert "secret" not in text and "chris" not in text
    assert "secret" not in repr(credentials) and "tokensecret" not in repr(credentials)


# -- a real server ------------------------------------------------------------------------


def read_reply(stream: BinaryIO) -> tuple[int, str]:
    """One (possibly multi-line) reply from a blocking file: (code, text of last line)."""
    while True:
        line = stream.readline()
        assert line.endswith(b"\r\n"), line
        if line[3:4] != b"-":
            return int(line[:3]), line[4:-2].decode()


def authenticate(port: int, client: SASLClient) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        stream = sock.makefile("rb")
        assert read_reply(stream)[0] == 220
        sock.sendall(b"EHLO client.bulkmail.test\r\n")
        assert read_reply(stream)[0] == 250
        sock.sendall(client.start())
        code, text = read_reply(stream)
        while code == 334:
            sock.sendall(client.respond(text))
            code, text = read_reply(stream)
        sock.sendall(b"QUIT\r\n")
        return code


def test_aiosmtpd_accepts_plain_and_login() -> None:
    auth = Authenticator("user", "s3cret")
    with aiosmtpd_server(authenticator=auth, auth_require_tls=False) as (_, port):
        codes = [
            authenticate(port, SASLClient(mechanism, Credentials("user", "s3cret")))
            for mechanism in ("PLAIN", "LOGIN")
        ]
    assert codes == [235, 235]
    assert auth.attempts == [("PLAIN", True), ("LOGIN", True)]


# -- the registry: one table, no fall-through -----------------------------------------


@pytest.mark.parametrize("name", ["SCRAM-SHA-256", "GSSAPI", "NTLM", "xoauth", "PLAIN2", ""])
def test_an_unregistered_name_raises_instead_of_sending_another_mechanisms_blob(
    name: str,
) -> None:
    both = Credentials("alice", "wonder", oauth_token="tok")
    with pytest.raises(LocalProtocolError, match="unsupported SASL mechanism"):
        SASLClient(name, both)
    with pytest.raises(LocalProtocolError, match="unsupported SASL mechanism"):
        sasl.mechanism(name)


def test_every_registered_mechanism_runs_its_own_exchange() -> None:
    both = Credentials("alice", "wonder", oauth_token="tok")
    assert list(sasl.MECHANISMS) == ["XOAUTH2", "CRAM-MD5", "PLAIN", "LOGIN", "DIGEST-MD5"]
    for name, mechanism in sasl.MECHANISMS.items():
        assert mechanism.name == name
        line = SASLClient(name.lower(), both).start()
        command = b"AUTH " + name.encode()
        assert line == command + b"\r\n" or line.startswith(command + b" ")
    # the preference lists are read from the table, not kept beside it
    from bulkmail.protocol import auth

    assert auth.TOKEN_MECHANISMS == ("XOAUTH2",)
    assert auth.PASSWORD_MECHANISMS == ("CRAM-MD5", "PLAIN", "LOGIN", "DIGEST-MD5")
