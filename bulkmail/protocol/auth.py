"""SASL client side of SMTP AUTH (RFC 4954) -- sans-IO.

The facade the session calls: which mechanism to use (:func:`choose_mechanism`)
and one exchange (:class:`SASLClient`).  The mechanisms themselves are a
table in :mod:`bulkmail.protocol.sasl`, one module each.  Each is a
generator: its first value is the initial response (or ``None`` when it must
wait for a challenge), and every decoded 334 challenge sent into it yields
the next response.  A generator that has finished means the server asked
more than the mechanism allows, which is the server's fault.  The session
owns the socket and the replies; this module only turns challenges into
lines and keeps secrets out of traces.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Sequence

from . import commands
from .errors import LocalProtocolError, RemoteProtocolError
from .sasl import MECHANISMS, Credentials, Exchange
from .sasl import mechanism as mechanism_named

__all__ = [
    "PASSWORD_MECHANISMS",
    "TOKEN_MECHANISMS",
    "Credentials",
    "NoCommonMechanism",
    "SASLClient",
    "choose_mechanism",
]

# Derived from the one table (bulkmail.protocol.sasl), in its preference order.
PASSWORD_MECHANISMS = tuple(n for n, m in MECHANISMS.items() if m.needs == "password")
TOKEN_MECHANISMS = tuple(n for n, m in MECHANISMS.items() if m.needs == "token")

# RFC 4954 §4: the AUTH line keeps the RFC 5321 command limit (512 octets with
# CRLF); a longer initial response goes unsent and answers the empty challenge.
MAX_AUTH_LINE = 512

_FORBIDDEN = re.compile(r"[\r\n\x00]")


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
    usable = tuple(n for n, m in MECHANISMS.items() if m.secret(credentials) is not None)
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
        chosen = mechanism_named(mechanism)  # an unknown name raises: no fall-through
        self.mechanism = chosen.name
        _check_clean(credentials, host, service, cnonce)
        if chosen.secret(credentials) is None:
            what = "an OAuth token" if chosen.needs == "token" else "a password"
            raise LocalProtocolError(f"{self.mechanism} needs {what}")
        exchange = Exchange(f"{service}/{host}", cnonce or secrets.token_hex(16))
        self._steps = chosen.steps(credentials, exchange)
        self._start_line: bytes | None = None
        self._deferred: bytes | None = None  # initial response too long for the AUTH line

    def start(self) -> bytes:
        """The ``AUTH`` command line, with the initial response when it fits.

        Idempotent: a second call returns the same line (for a trace, say).
        """
        if self._start_line is not None:
            return self._start_line
        self._start_line = commands.auth(self.mechanism)
        initial = next(self._steps)
        if initial is not None:
            line = commands.auth(self.mechanism, _encode(initial, empty=""))
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
