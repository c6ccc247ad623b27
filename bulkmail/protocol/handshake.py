"""From the greeting to a session ready for mail: EHLO (HELO for an old
server), STARTTLS, AUTH -- decisions only, the connection does the writing.

A 421 never reaches these rules: the connection ends the session on it at
any stage (no HELO fallback that would hide it).  Each reply yields one
:class:`HandshakeStep`: a command to send, TLS to start, a failure, or (none
of these) ready.  SASL is driven through the API of
:mod:`.auth` (``choose_mechanism``, ``SASLClient``), whatever mechanisms it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from . import commands
from .auth import Credentials, SASLClient, choose_mechanism
from .client import Stage
from .errors import LocalProtocolError, RemoteProtocolError
from .extensions import Extensions, parse_ehlo
from .replies import Reply, synthetic_reply


class Failure(Enum):
    """Why a session ended; the I/O layer raises the matching error."""

    #: 421 at any stage, or a greeting other than 220
    UNAVAILABLE = "unavailable"
    #: a session command (EHLO, HELO) refused
    COMMAND = "command"
    TLS = "tls"
    AUTH = "auth"
    #: the server broke the protocol
    PROTOCOL = "protocol"
    #: the connection closed or broke
    LOST = "lost"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class HandshakeStep:
    """What follows a handshake reply; none of the three means ready."""

    #: (line, stage, what the trace shows instead of the line or None)
    send: tuple[bytes, Stage, str | None] | None = None
    start_tls: bool = False
    failure: tuple[Failure, Reply] | None = None


#: EHLO refusals after which an old server gets HELO.  421 never falls back:
#: it would hide the real error (the server is going away).
_NO_ESMTP = frozenset({500, 502, 504, 550})


class Handshake:
    """The greeting, EHLO/HELO, STARTTLS and AUTH rules for one connection."""

    def __init__(
        self,
        client_hostname: str,
        host: str,
        secure: str,
        credentials: Credentials | None,
        allow_plaintext_auth: bool,
        tls_active: bool,
    ) -> None:
        self._name = client_hostname
        self._host = host
        self._secure = secure
        self._credentials = credentials
        self._allow_plaintext_auth = allow_plaintext_auth
        self._tls_active = tls_active
        self._sasl: SASLClient | None = None
        self._cancelled: LocalProtocolError | None = None
        self.extensions = Extensions()
        self.authenticated = False

    def on_reply(self, stage: Stage, reply: Reply, *, tls_injected: bool) -> HandshakeStep:
        code = reply.code
        if stage is Stage.GREETING:
            if code != 220:
                return HandshakeStep(failure=(Failure.UNAVAILABLE, reply))
            return self._ehlo()
        if stage is Stage.EHLO:
            if code == 250:
                self.extensions = parse_ehlo(reply)
                return self._after_ehlo()
            if code in _NO_ESMTP:
                return HandshakeStep(send=(commands.helo(self._name), Stage.HELO, None))
            return self._refused(reply)
        if stage is Stage.HELO:
            if code == 250:
                self.extensions = Extensions()
                return self._after_ehlo()
            return self._refused(reply)
        if stage is Stage.STARTTLS:
            return self._on_starttls(reply, tls_injected)
        if stage is Stage.AUTH:
            return self._on_auth(reply)
        raise AssertionError(f"{stage} is no handshake stage")  # pragma: no cover

    def tls_started(self) -> HandshakeStep:
        self._tls_active = True
        return self._ehlo()

    def _ehlo(self) -> HandshakeStep:
        return HandshakeStep(send=(commands.ehlo(self._name), Stage.EHLO, None))

    @staticmethod
    def _refused(reply: Reply) -> HandshakeStep:
        return HandshakeStep(failure=(Failure.COMMAND, reply))

    def _after_ehlo(self) -> HandshakeStep:
        secure = self._secure
        if secure in ("may", "starttls") and not self._tls_active:
            if self.extensions.starttls:
                return HandshakeStep(send=(commands.STARTTLS, Stage.STARTTLS, None))
            if secure == "starttls":
                reply = synthetic_reply(421, "4.7.10", "TLS required but the server lacks STARTTLS")
                return HandshakeStep(failure=(Failure.TLS, reply))
        return self._start_auth()

    def _on_starttls(self, reply: Reply, injected: bool) -> HandshakeStep:
        if reply.code == 220:
            if injected:
                text = "data injected after 220 to STARTTLS; aborted"
                return HandshakeStep(
                    failure=(Failure.PROTOCOL, synthetic_reply(421, "4.7.0", text))
                )
            return HandshakeStep(start_tls=True)
        if self._secure == "starttls":
            return HandshakeStep(failure=(Failure.TLS, reply))
        return self._start_auth()  # opportunistic: carry on in plaintext

    def _start_auth(self) -> HandshakeStep:
        credentials = self._credentials
        if credentials is None:
            return HandshakeStep()
        if not self._tls_active and not self._allow_plaintext_auth:
            reply = synthetic_reply(530, "5.7.11", "refusing to send credentials without TLS")
            return HandshakeStep(failure=(Failure.AUTH, reply))
        try:
            mechanism = choose_mechanism(self.extensions.auth_mechanisms, credentials)
        except LocalProtocolError as exc:
            return HandshakeStep(failure=(Failure.AUTH, synthetic_reply(530, "5.7.8", str(exc))))
        sasl = self._sasl = SASLClient(mechanism, credentials, host=self._host)
        line = sasl.start()
        return HandshakeStep(send=(line, Stage.AUTH, sasl.redacted(line)))

    def _on_auth(self, reply: Reply) -> HandshakeStep:
        sasl = self._sasl
        assert sasl is not None
        if self._cancelled is not None:
            text = f"cannot authenticate: {self._cancelled}"
            return HandshakeStep(failure=(Failure.AUTH, synthetic_reply(535, "5.7.8", text)))
        if reply.code == 235:
            self.authenticated = True
            return HandshakeStep()
        if reply.code != 334:
            return HandshakeStep(failure=(Failure.AUTH, reply))
        try:
            line = sasl.respond(reply.text if reply.lines != ("",) else "")
        except RemoteProtocolError as exc:
            return HandshakeStep(
                failure=(Failure.PROTOCOL, synthetic_reply(421, "4.7.0", str(exc)))
            )
        except LocalProtocolError as exc:
            # we cannot answer this challenge: cancel the exchange (RFC 4954 §4)
            self._cancelled = exc
            return HandshakeStep(send=(b"*\r\n", Stage.AUTH, "*"))
        return HandshakeStep(send=(line, Stage.AUTH, sasl.redacted(line)))
