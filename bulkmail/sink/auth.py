"""The server side of AUTH PLAIN and LOGIN (RFC 4954, RFC 4616): just enough
SASL for a client's credentials to be checked, not a directory."""

from __future__ import annotations

import base64
import binascii
import hmac

from . import replies


class SaslServer:
    """One connection's AUTH exchanges against one (user, password)."""

    __slots__ = ("_password", "_step", "_user", "_username", "authenticated")

    def __init__(self, credentials: tuple[str, str]) -> None:
        self._user = credentials[0].encode()
        self._password = credentials[1].encode()
        self._step: str | None = None
        self._username = b""
        self.authenticated = False

    @property
    def in_progress(self) -> bool:
        """True while the next line is a SASL response, not a command."""
        return self._step is not None

    def start(self, arguments: bytes) -> bytes:
        """Answer ``AUTH <arguments>``."""
        mechanism, _, initial = arguments.strip().partition(b" ")
        mechanism = mechanism.upper()
        if mechanism == b"PLAIN":
            if initial:
                return self._plain(initial)
            self._step = "plain"
            return replies.AUTH_CONTINUE
        if mechanism == b"LOGIN":
            if initial:
                return self._login_user(initial)
            self._step = "user"
            return replies.AUTH_USERNAME
        return replies.AUTH_MECHANISM

    def respond(self, line: bytes) -> bytes:
        """Answer one response line of the exchange in progress."""
        step, self._step = self._step, None
        if line == b"*":
            return replies.AUTH_CANCELLED
        if step == "plain":
            return self._plain(line)
        if step == "user":
            return self._login_user(line)
        password = _decode(line)
        if password is None:
            return replies.AUTH_MALFORMED
        return self._check(self._username, password)

    def _plain(self, token: bytes) -> bytes:
        decoded = _decode(token)
        if decoded is None or decoded.count(b"\0") != 2:
            return replies.AUTH_MALFORMED
        authzid, user, password = decoded.split(b"\0")
        if authzid not in (b"", user):
            return replies.AUTH_FAILED
        return self._check(user, password)

    def _login_user(self, token: bytes) -> bytes:
        user = _decode(token)
        if user is None:
            return replies.AUTH_MALFORMED
        self._username = user
        self._step = "password"
        return replies.AUTH_PASSWORD

    def _check(self, user: bytes, password: bytes) -> bytes:
        user_ok = hmac.compare_digest(user, self._user)
        if hmac.compare_digest(password, self._password) and user_ok:
            self.authenticated = True
            return replies.AUTH_OK
        return replies.AUTH_FAILED


def _decode(token: bytes) -> bytes | None:
    if token == b"=":  # RFC 4954: an empty initial response
        return b""
    try:
        return base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        return None
