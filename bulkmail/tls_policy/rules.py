"""What one MX host's session must satisfy, and what its outcome is reported as.

A :class:`HostRule` is decided per destination (see :mod:`.planner`) and
applied per connection: it turns the base :class:`SessionConfig` into the
policy's (STARTTLS required, certificate verified against the MX name, or a
DANE check), refuses a host the policy excludes before any byte is sent,
and counts the session for TLS-RPT.  :func:`result_type` maps a failed TLS
session to RFC 8460's result types from the exception chain, never from text.
"""

from __future__ import annotations

import sqlite3
import ssl
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import trio

from ..config import SessionConfig
from ..errors import SMTPError, SMTPTLSError
from ..protocol.replies import Reply
from ..results import PeerName, TLSStatus
from ..session import SMTPSession
from .dane import DANEMismatch
from .tlsrpt import ReportPolicy, TLSReportStore

#: OpenSSL's X509_V_ERR_CERT_HAS_EXPIRED and X509_V_ERR_HOSTNAME_MISMATCH
_EXPIRED, _HOST_MISMATCH = 10, 62

Verifier = Callable[[trio.SSLStream[trio.abc.Stream]], None]


def result_type(exc: BaseException) -> str:
    """The RFC 8460 §4.3 result type of a TLS session failure."""
    seen: BaseException | None = exc.__cause__ or exc.__context__
    if seen is None:
        return "starttls-not-supported"  # not offered, or refused by the server
    while seen is not None:
        if isinstance(seen, DANEMismatch):
            return "tlsa-invalid"
        if isinstance(seen, ssl.SSLCertVerificationError):
            if seen.verify_code == _EXPIRED:
                return "certificate-expired"
            if seen.verify_code == _HOST_MISMATCH:
                return "certificate-host-mismatch"
            return "certificate-not-trusted"
        seen = seen.__cause__ or seen.__context__
    return "validation-failure"


@lru_cache(maxsize=1)
def unverified_context() -> ssl.SSLContext:
    """For DANE: the TLSA records, not the web PKI, authenticate the server."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True, slots=True)
class HostRule:
    """The TLS terms for one MX host under one policy domain's plan."""

    #: "opportunistic", "mta-sts", "mta-sts-testing" or "dane"
    policy: str
    #: STARTTLS required, no plaintext, no fallback to an unverified session
    required: bool = False
    ssl_context: ssl.SSLContext | None = None
    verify: Verifier | None = None
    #: the policy excludes this host: not even a connection (enhanced code 4.7.5)
    refusal: Reply | None = None
    #: testing mode: a failure is reported, then the host gets mail as without a policy
    testing: bool = False
    report: ReportPolicy | None = None
    #: a failure known before connecting (testing mode: MX not in the policy)
    known_failure: tuple[str, str] | None = None
    #: where sessions are counted for TLS-RPT
    recorder: Recorder | None = None

    def refuse(self, host: str) -> SMTPTLSError:
        """The error for a host the policy excludes (it is never connected to)."""
        assert self.refusal is not None
        if self.recorder is not None:
            self.recorder.refused(self, host)
        return SMTPTLSError(self.refusal, host=PeerName(host, TLSStatus(self.policy, False, False)))

    async def open(self, config: SessionConfig, address: str) -> SMTPSession:
        """Connect under this rule (``config`` from :meth:`apply`); count the outcome."""
        recorder = self.recorder or Recorder(None)
        host = config.host
        probe = self.probe(config)
        if probe is not None:  # testing mode: try the policy, report, then go on as today
            try:
                session = await SMTPSession.connect(probe, address)
            except SMTPTLSError as exc:
                recorder.failed(self, exc, host, address)
            else:
                recorder.connected(self, host, address)
                return session
            return await SMTPSession.connect(config, address)
        try:
            session = await SMTPSession.connect(config, address)
        except SMTPError as exc:
            recorder.failed(self, exc, host, address)
            raise
        recorder.connected(self, host, address)
        return session

    def apply(self, config: SessionConfig) -> SessionConfig:
        """The session config the caller connects with.  Testing mode keeps the
        caller's (its TLS fallbacks stay as they are); see :meth:`probe`."""
        if self.testing:
            return replace(config, tls_policy=self.policy)
        return replace(
            config, secure="starttls" if self.required else config.secure,
            ssl_context=self.ssl_context or config.ssl_context, tls_verify=self.verify,
            tls_policy=self.policy,
        )

    def probe(self, config: SessionConfig) -> SessionConfig | None:
        """Testing mode: the policy's verified session, tried first (None: nothing to try)."""
        if not self.testing or self.known_failure is not None:
            return None
        return replace(config, secure="starttls", ssl_context=self.ssl_context,
                       tls_verify=self.verify)


class Recorder:
    """Counts sessions into a TLS-RPT store (when one is configured).

    Reporting never stands in the way of delivery: a store that cannot be
    written (read-only directory, full disk) is dropped with one warning."""

    def __init__(self, store: TLSReportStore | None) -> None:
        self.store = store

    def refused(self, rule: HostRule, host: str) -> None:
        report, refusal = rule.report, rule.refusal
        if report is not None and refusal is not None:
            kind = rule.known_failure[0] if rule.known_failure else "validation-failure"
            self._write(lambda store: store.failure(
                report, kind, receiving_mx=host, reason=refusal.text))

    def fetch_failed(self, report: ReportPolicy, domain: str, reason: str) -> None:
        self._write(lambda store: store.failure(
            report, "sts-policy-fetch-error", receiving_mx=f"mta-sts.{domain}", reason=reason))

    def connected(self, rule: HostRule, host: str, address: str) -> None:
        report = rule.report
        if report is None:
            return
        if rule.known_failure is not None:
            kind, reason = rule.known_failure
            self._write(lambda store: store.failure(
                report, kind, receiving_mx=host, receiving_ip=address, reason=reason))
        else:
            self._write(lambda store: store.success(report))

    def failed(self, rule: HostRule, error: SMTPError, host: str, address: str) -> None:
        report = rule.report
        if report is None or not isinstance(error, SMTPTLSError):
            return
        self._write(lambda store: store.failure(
            report, result_type(error), receiving_mx=host, receiving_ip=address,
            reason=error.reply.text))

    def _write(self, write: Callable[[TLSReportStore], None]) -> None:
        store = self.store
        if store is None:
            return
        try:
            write(store)
        except (sqlite3.Error, OSError) as exc:
            self.store = None
            warnings.warn(f"TLS-RPT counts not recorded from now on: {exc}", stacklevel=2)
