"""SASL client mechanisms for SMTP AUTH (RFC 4954) -- sans-IO.

(Minimal version: PLAIN, LOGIN, CRAM-MD5, XOAUTH2.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import LocalProtocolError, RemoteProtocolError

_FORBIDDEN = re.compile(r"[\r\n\x00]")


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str | None = None
    oauth_token: str | None = None
    mechanism: str | None = None
    authzid: str = ""


class NoCommonMechanism(LocalProtocolError):
    """The server offers no mechanism usable with these credentials."""


PREFERENCE = ("CRAM-MD5", "PLAIN", "LOGIN")


def choose_mechanism(offered: Sequence[str], credentials: Credentials) -> str:
    offered_upper = [m.upper() for m in offered]
    if credentials.mechanism:
        if credentials.mechanism.upper() in offered_upper:
            return credentials.mechanism.upper()
        raise NoCommonMechanism(
            f"server offers {' '.join(offered_upper) or 'no AUTH'}, "
            f"{credentials.mechanism} was required"
        )
    wanted = ("XOAUTH2",) if credentials.oauth_token else PREFERENCE
    for mech in wanted:
        if mech in offered_upper:
            return mech
    raise NoCommonMechanism(
        f"server offers {' '.join(offered_upper) or 'no AUTH'}; we can use {', '.join(wanted)}"
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class SASLClient:
    def __init__(
        self, mechanism: str, credentials: Credentials, *, host: str = "localhost"
    ) -> None:
        for value in (credentials.username, credentials.password or "",
                      credentials.oauth_token or "", credentials.authzid):
            if _FORBIDDEN.search(value):
                raise LocalProtocolError("credentials contain CR, LF or NUL")
        self.mechanism = mechanism.upper()
        self.credentials = credentials
        self.host = host
        self._step = 0

    def start(self) -> bytes:
        c = self.credentials
        if self.mechanism == "PLAIN":
            token = f"{c.authzid}\0{c.username}\0{c.password or ''}".encode()
            return f"AUTH PLAIN {_b64(token)}\r\n".encode()
        if self.mechanism == "XOAUTH2":
            token = f"user={c.username}\x01auth=Bearer {c.oauth_token or ''}\x01\x01".encode()
            return f"AUTH XOAUTH2 {_b64(token)}\r\n".encode()
        return f"AUTH {self.mechanism}\r\n".encode()

    def respond(self, challenge: str) -> bytes:
        try:
            decoded = base64.b64decode(challenge.strip(), validate=True)
        except ValueError as exc:
            raise RemoteProtocolError("malformed base64 challenge", challenge.encode()) from exc
        c = self.credentials
        self._step += 1
        if self.mechanism == "LOGIN":
            if self._step == 1:
                return f"{_b64(c.username.encode())}\r\n".encode()
            if self._step == 2:
                return f"{_b64((c.password or '').encode())}\r\n".encode()
        elif self.mechanism == "CRAM-MD5" and self._step == 1:
            digest = hmac.new((c.password or "").encode(), decoded, hashlib.md5).hexdigest()
            return f"{_b64(f'{c.username} {digest}'.encode())}\r\n".encode()
        elif self.mechanism == "XOAUTH2":
            return b"\r\n"
        raise RemoteProtocolError(f"unexpected {self.mechanism} challenge", challenge.encode())

    def redacted(self, line: bytes) -> str:
        if line.startswith(b"AUTH "):
            parts = line.decode("ascii", "replace").split()
            return " ".join(parts[:2] + (["<redacted>"] if len(parts) > 2 else []))
        return "<redacted>"
