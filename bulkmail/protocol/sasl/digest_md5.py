"""DIGEST-MD5 (RFC 2831), historic (RFC 6331) but still met: authentication
only, with the server's rspauth checked, and the RFC's charset rules for
user, realm and password."""

from __future__ import annotations

import hashlib
import hmac
import re

from ..errors import LocalProtocolError, RemoteProtocolError
from .base import Credentials, Exchange, Mechanism, Steps

# RFC 2831 §2.1.1: a digest-challenge must be shorter than 2048 bytes.
MAX_DIGEST_CHALLENGE = 2047

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_LWS = re.compile(r"[ \t\r\n]*")
_SINGLE = frozenset({"nonce", "qop", "charset", "algorithm", "maxbuf", "stale", "rspauth"})


def _steps(credentials: Credentials, exchange: Exchange) -> Steps:
    """Authentication only (qop=auth, no integrity or privacy layer), with the server's
    rspauth checked before we acknowledge it: mutual authentication is the point."""
    digest_uri, cnonce = exchange.digest_uri, exchange.cnonce
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


MECHANISM = Mechanism("DIGEST-MD5", "password", _steps)
