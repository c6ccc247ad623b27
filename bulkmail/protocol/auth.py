"""SASL client side of SMTP AUTH (RFC 4954) -- sans-IO.

Each mechanism is a generator: its first value is the initial response (or
``None`` when it must wait for a challenge), and every decoded 334 challenge
sent into it yields the next response.  A generator that has finished means
the server asked more than the mechanism allows, which is the server's fault.
The session owns the socket and the replies; this module only turns
challenges into lines and keeps secrets out of traces.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "PASSWORD_MECHANISMS",
    "TOKEN_MECHANISMS",
    "Credentials",
    "NoCommonMechanism",
    "SASLClient",
    "choose_mechanism",
]

# Preference order for password credentials.  DIGEST-MD5 is historic (RFC 6331)
# and comes last: used only when nothing else is offered, or when forced.
PASSWORD_MECHANISMS = ("CRAM-MD5", "PLAIN", "LOGIN", "DIGEST-MD5")
TOKEN_MECHANISMS = ("XOAUTH2",)

# RFC 4954 §4: the AUTH line keeps the RFC 5321 command limit (512 octets with
# CRLF); a longer initial response goes unsent and answers the empty challenge.
MAX_AUTH_LINE = 512
# RFC 2831 §2.1.1: a digest-challenge must be shorter than 2048 bytes.
MAX_DIGEST_CHALLENGE = 2047

_FORBIDDEN = re.compile(r"[\r\n\x00]")

_Steps = Generator[bytes | None, bytes, None]


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who we are.  Secrets stay out of ``repr`` so a logged config leaks nothing."""

    username: str
    password: str | None = field(default=None, repr=False)
    oauth_token: str | None = field(default=None, repr=False)
    mechanism: str | None = None  # force one mechanism (upper-case name); None = choose
    authzid: str = ""


class NoCommonMechanism(LocalProtocolError):
    """The server offers no mechanism we can use with these credentials.

    ``offered`` is the server's list, ``usable`` ours (most preferred first).
    """

    def __init__(self, offered: Sequence[str], usable: Sequence[str]) -> None:
        theirs = " ".join(offered) or "no AUTH mechanisms"
        ours = " ".join(usable) or "nothing"
        super().__init__(f"server offers {theirs}; these credentials can use {ours}")
        self.offered = tuple(offered)
        self.usable = tuple(usable)


def _usable(credentials: Credentials) -> tuple[str, ...]:
    """Mechanisms these credentials can drive, most preferred first (a forced one alone)."""
    usable: tuple[str, ...] = ()
    if credentials.oauth_token is not None:
        usable += TOKEN_MECHANISMS
    if credentials.password is not None:
        usable += PASSWORD_MECHANISMS
    if credentials.mechanism is not None:
        forced = credentials.mechanism.upper()
        usable = (forced,) if forced in usable else ()
    return usable


def choose_mechanism(offered: Sequence[str], credentials: Credentials) -> str:
    """The mechanism to use: a token prefers XOAUTH2, a password CRAM-MD5 > PLAIN > LOGIN >
    DIGEST-MD5; a forced mechanism must be offered.  Raises ``NoCommonMechanism``."""
    theirs = [m.upper() for m in offered]
    usable = _usable(credentials)
    for mechanism in usable:
        if mechanism in theirs:
            return mechanism
    raise NoCommonMechanism(theirs, usable)


class SASLClient:
    """Drives one AUTH exchange without I/O: ``start()`` gives the command line, then
    each 334 challenge is answered via ``respond()``."""

    def __init__(
        self,
        mechanism: str,
        credentials: Credentials,
        *,
        host: str = "localhost",
        service: str = "smtp",
        cnonce: str | None = None,
    ) -> None:
        self.mechanism = mechanism.upper()
        _check_clean(credentials, host, service, cnonce)
        if self.mechanism == "XOAUTH2":
            if credentials.oauth_token is None:
                raise LocalProtocolError("XOAUTH2 needs an OAuth token")
        elif self.mechanism in PASSWORD_MECHANISMS:
            if credentials.password is None:
                raise LocalProtocolError(f"{self.mechanism} needs a password")
        else:
            raise LocalProtocolError(f"unsupported SASL mechanism {mechanism!r}")
        self._steps = _mechanism_steps(
            self.mechanism, credentials, f"{service}/{host}", cnonce or secrets.token_hex(16)
        )
        self._start_line: bytes | None = None
        self._deferred: bytes | None = None  # initial response too long for the AUTH line

    def start(self) -> bytes:
        """The ``AUTH`` command line, with the initial response when it fits.

        Idempotent: a second call returns the same line (for a trace, say).
        """
        if self._start_line is not None:
            return self._start_line
        bare = f"AUTH {self.mechanism}\r\n".encode("ascii")
        self._start_line = bare
        initial = next(self._steps)
        if initial is not None:
            line = f"AUTH {self.mechanism} {_encode(initial, empty='=')}\r\n".encode("ascii")
            if len(line) <= MAX_AUTH_LINE:
                self._start_line = line
            else:
                self._deferred = initial
        return self._start_line

    def respond(self, challenge: str) -> bytes:
        """The line answering a 334 reply whose text is ``challenge`` (base64, may be empty)."""
        self.start()  # a no-op once the AUTH line exists
        decoded = _decode_challenge(challenge)
        response: bytes | None
        if self._deferred is not None:
            response, self._deferred = self._deferred, None
        else:
            try:
                response = self._steps.send(decoded)
            except StopIteration:
                raise RemoteProtocolError(
                    f"unexpected {self.mechanism} challenge", challenge.encode("utf-8", "replace")
                ) from None
        assert response is not None, "only an initial response may be withheld"
        return f"{_encode(response, empty='')}\r\n".encode("ascii")

    def redacted(self, line: bytes) -> str:
        """What a trace shows for a line we sent: the command, never the credentials."""
        text = line.decode("ascii", "replace").rstrip("\r\n")
        if text.startswith("AUTH "):  # base64 responses never contain a space
            parts = text.split(" ")
            return " ".join(parts[:2]) + (" <redacted>" if len(parts) > 2 else "")
        return "" if text == "" else "<redacted>"


# -- encoding helpers ---------------------------------------------------------


def _check_clean(credentials: Credentials, host: str, service: str, cnonce: str | None) -> None:
    """No CR, LF or NUL anywhere: they would split PLAIN's fields or a DIGEST directive."""
    values = {
        "username": credentials.username,
        "password": credentials.password or "",
        "oauth token": credentials.oauth_token or "",
        "authzid": credentials.authzid,
        "host": host,
        "service": service,
        "cnonce": cnonce or "",
    }
    for name, value in values.items():
        if _FORBIDDEN.search(value):
            raise LocalProtocolError(f"{name} contains CR, LF or NUL")
    # XOAUTH2 separates its fields with ^A
    if "\x01" in credentials.username or "\x01" in (credentials.oauth_token or ""):
        raise LocalProtocolError("username or oauth token contains ^A (0x01)")


def _encode(response: bytes, *, empty: str) -> str:
    """Base64 of a response; RFC 4954 writes an empty initial response as ``=``."""
    return base64.b64encode(response).decode("ascii") if response else empty


def _decode_challenge(challenge: str) -> bytes:
    text = challenge.strip()
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise RemoteProtocolError(
            "334 challenge is not valid base64", challenge.encode("utf-8", "replace")
        ) from exc


# -- mechanisms ---------------------------------------------------------------


def _mechanism_steps(
    mechanism: str, credentials: Credentials, digest_uri: str, cnonce: str
) -> _Steps:
    user = credentials.username
    secret = credentials.password or ""
    if mechanism == "PLAIN":
        return _plain(credentials.authzid, user, secret)
    if mechanism == "LOGIN":
        return _login(user, secret)
    if mechanism == "CRAM-MD5":
        return _cram_md5(user, secret)
    if mechanism == "DIGEST-MD5":
        return _digest_md5(credentials, digest_uri, cnonce)
    return _xoauth2(user, credentials.oauth_token or "")


def _plain(authzid: str, user: str, password: str) -> _Steps:
    """RFC 4616: one message, ``authzid NUL authcid NUL passwd``, as the initial response."""
    yield f"{authzid}\0{user}\0{password}".encode()


def _login(user: str, password: str) -> _Steps:
    """draft-murchison-sasl-login: the prompts are fixed, so their text is not checked."""
    yield None
    yield user.encode()
    yield password.encode()


def _cram_md5(user: str, password: str) -> _Steps:
    """RFC 2195: ``user`` and the hex HMAC-MD5 of the challenge keyed by the password."""
    challenge = yield None
    if not challenge:
        raise RemoteProtocolError("CRAM-MD5 challenge is empty")
    digest = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
    yield f"{user} {digest}".encode()


def _xoauth2(user: str, token: str) -> _Steps:
    """Google / Microsoft XOAUTH2.  A 334 after the token carries a JSON error; the
    client acknowledges it with an empty line and the server then answers 5xx."""
    yield f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
    yield b""


# -- DIGEST-MD5 (RFC 2831) ------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_LWS = re.compile(r"[ \t\r\n]*")
_SINGLE = frozenset({"nonce", "qop", "charset", "algorithm", "maxbuf", "stale", "rspauth"})


def _digest_md5(credentials: Credentials, digest_uri: str, cnonce: str) -> _Steps:
    """Authentication only (qop=auth, no integrity or privacy layer), with the server's
    rspauth checked before we acknowledge it: mutual authentication is the point."""
    raw = yield None
    realm, nonce, utf8 = _digest_challenge(raw)
    encoding = "utf-8" if utf8 else "latin-1"
    try:
        user_realm_password = (credentials.username, realm or "", credentials.password or "")
        a1 = _md5(b":".join(_digest_bytes(v, utf8) for v in user_realm_password))
        a1 += f":{nonce}:{cnonce}".encode(encoding)
        if credentials.authzid:
            a1 += b":" + credentials.authzid.encode()  # authzid is always UTF-8

        def kd(a2: str) -> str:
            """RFC 2831's KD(HEX(H(A1)), nonce:nc:cnonce:qop:HEX(H(A2))), in hex."""
            tail = f"{nonce}:00000001:{cnonce}:auth:{_md5(a2.encode(encoding)).hex()}"
            return _md5(f"{_md5(a1).hex()}:{tail}".encode(encoding)).hex()

        directives = ["charset=utf-8"] if utf8 else []
        directives.append(f"username={_quote(credentials.username)}")
        if realm is not None:
            directives.append(f"realm={_quote(realm)}")
        directives += [
            f"nonce={_quote(nonce)}",
            "nc=00000001",
            f"cnonce={_quote(cnonce)}",
            f"digest-uri={_quote(digest_uri)}",
            f"response={kd('AUTHENTICATE:' + digest_uri)}",
            "qop=auth",
        ]
        if credentials.authzid:
            directives.append(f"authzid={_quote(credentials.authzid)}")
        response = ",".join(directives).encode(encoding)
    except UnicodeEncodeError:
        raise LocalProtocolError(
            "DIGEST-MD5 server without charset=utf-8 cannot take non-Latin-1 credentials"
        ) from None

    raw = yield response
    rspauth = _single(_parse_directives(raw), "rspauth", raw)
    if not hmac.compare_digest(rspauth.lower().encode(), kd(":" + digest_uri).encode()):
        raise RemoteProtocolError("DIGEST-MD5 rspauth does not match: server not verified", raw)
    yield b""


def _digest_challenge(raw: bytes) -> tuple[str | None, str, bool]:
    """Realm (the first offered, if any), nonce and whether charset=utf-8 applies;
    anything that forbids qop=auth with md5-sess is the server's error."""
    if len(raw) > MAX_DIGEST_CHALLENGE:
        raise RemoteProtocolError("DIGEST-MD5 challenge longer than 2048 bytes", raw)
    challenge = _parse_directives(raw)
    nonce = _single(challenge, "nonce", raw)
    if _single(challenge, "algorithm", raw).lower() != "md5-sess":
        raise RemoteProtocolError("DIGEST-MD5 challenge without algorithm=md5-sess", raw)
    qops = [q.strip().lower() for q in challenge.get("qop", ["auth"])[0].split(",")]
    if "auth" not in qops:
        raise RemoteProtocolError("DIGEST-MD5 server does not offer qop=auth", raw)
    charset = challenge.get("charset", [None])[0]
    if charset is not None and charset.lower() != "utf-8":
        raise RemoteProtocolError(f"DIGEST-MD5 charset {charset!r} is not utf-8", raw)
    utf8 = charset is not None
    realms = challenge.get("realm")
    realm = _from_wire(realms[0], utf8, raw) if realms else None
    return realm, _from_wire(nonce, utf8, raw), utf8


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data).digest()


def _digest_bytes(value: str, utf8: bool) -> bytes:
    """RFC 2831 §2.1.2.1: with charset=utf-8, values that fit ISO 8859-1 are hashed in it
    (as Cyrus SASL does for user, realm and password); without it they must fit."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        if not utf8:
            raise
        return value.encode("utf-8")


def _from_wire(value: str, utf8: bool, raw: bytes) -> str:
    """A challenge value parsed as ISO 8859-1, re-read as UTF-8 when charset=utf-8."""
    if not utf8:
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("DIGEST-MD5 charset=utf-8 challenge is not UTF-8", raw) from None


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _single(directives: dict[str, list[str]], name: str, raw: bytes) -> str:
    values = directives.get(name, [])
    if len(values) != 1:
        raise RemoteProtocolError(f"DIGEST-MD5 challenge needs exactly one {name}", raw)
    return values[0]


def _parse_directives(raw: bytes) -> dict[str, list[str]]:
    """``#(token "=" (token | quoted-string))`` into name -> values (realm may repeat).

    Decoded as ISO 8859-1, the RFC's default and lossless; see ``_from_wire``.
    """
    text = raw.decode("latin-1")
    directives: dict[str, list[str]] = {}
    pos = _skip(text, 0)
    while pos < len(text):
        if text[pos] == ",":  # the #rule allows empty elements
            pos = _skip(text, pos + 1)
            continue
        name, pos = _token(text, pos, raw)
        pos = _skip(text, pos)
        if not text.startswith("=", pos):
            raise RemoteProtocolError(f"DIGEST-MD5 directive {name!r} without a value", raw)
        pos = _skip(text, pos + 1)
        quoted = text.startswith('"', pos)
        value, pos = _quoted(text, pos, raw) if quoted else _token(text, pos, raw)
        key = name.lower()
        directives.setdefault(key, []).append(value)
        if key in _SINGLE and len(directives[key]) > 1:
            raise RemoteProtocolError(f"DIGEST-MD5 directive {key!r} repeated", raw)
        pos = _skip(text, pos)
        if pos < len(text):
            if text[pos] != ",":
                raise RemoteProtocolError("DIGEST-MD5 directives not separated by ','", raw)
            pos = _skip(text, pos + 1)
    return directives


def _skip(text: str, pos: int) -> int:
    match = _LWS.match(text, pos)
    return match.end() if match else pos


def _token(text: str, pos: int, raw: bytes) -> tuple[str, int]:
    match = _TOKEN.match(text, pos)
    if match is None:
        raise RemoteProtocolError(f"DIGEST-MD5 challenge: expected a token at {pos}", raw)
    return match.group(), match.end()


def _quoted(text: str, pos: int, raw: bytes) -> tuple[str, int]:
    out: list[str] = []
    pos += 1  # opening quote
    while pos < len(text):
        char = text[pos]
        if char == '"':
            return "".join(out), pos + 1
        if char == "\\":
            pos += 1
            if pos == len(text):
                break
            char = text[pos]
        out.append(char)
        pos += 1
    raise RemoteProtocolError("DIGEST-MD5 challenge: unterminated quoted string", raw)
