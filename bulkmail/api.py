"""The public library API: ``Mailer`` and the one-call ``send``.

``Mailer`` owns its nursery openly (an async context manager): pools,
routing and retries live there and are torn down when the block exits.
"""

from __future__ import annotations

import math
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from types import TracebackType
from typing import TYPE_CHECKING, Any

import trio

from .config import Security, SessionConfig, Timeouts
from .delivery.connector import ConnectionObserver
from .delivery.engine import CANCELLED, Engine
from .delivery.engine_config import BatchBy, EngineConfig
from .delivery.health import ShapingAction
from .delivery.job import (
    DeferredHook,
    InDoubtHook,
    Job,
    JobOptions,
    Presettle,
    ResultCallback,
    ResultsCallback,
)
from .delivery.retry import RetryPolicy
from .errors import SMTPError, synthetic_reply
from .message import Content, Recipient, as_content
from .observe import RunMetrics
from .protocol import commands
from .protocol.auth import Credentials
from .protocol.errors import InvalidAddress
from .protocol.replies import Reply
from .records import SessionCallback, SessionRecords
from .relay_router import RelayRouter
from .results import Result, Summary
from .routing import DNSConfig, MXRouter, Router
from .shaping import PoolLimits, Shaping
from .tls_policy.settings import TLSPolicyConfig

if TYPE_CHECKING:
    from .tls_policy.planner import TLSPolicies

MessageLike = bytes | str | EmailMessage | Content | Callable[[Recipient], bytes]
Recipients = Iterable[Recipient | str] | AsyncIterable[Recipient | str]
#: seconds a cancelled ``send`` waits, shielded, for its workers to settle the
#: transactions they hold (they do so as soon as they run: a safety net)
CUT_SHORT_GRACE = 5.0


@dataclass(frozen=True, slots=True)
class Relay:
    """A smarthost: every recipient goes through it."""

    host: str
    port: int = 25


@dataclass(frozen=True, slots=True)
class MailerConfig:
    """Everything a run needs; frozen and passed down, no global state."""

    relay: Relay | None = None
    dns: DNSConfig = field(default_factory=DNSConfig)
    #: direct mode defaults to opportunistic STARTTLS, like Postfix's ``may``
    secure: Security = "may"
    ssl_context: ssl.SSLContext | None = None
    credentials: Credentials | None = None
    allow_plaintext_auth: bool = False
    client_hostname: str = field(default_factory=socket.gethostname)
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: PoolLimits = field(default_factory=PoolLimits)
    shaping: Shaping | None = None
    total_connections: int = 200
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retry_for: float | None = None
    max_pending: int = 20_000
    pipelining: bool = True
    chunking: bool = True
    window: int = 32
    #: see ``EngineConfig.in_doubt_share``: what a crash may duplicate, as a share
    in_doubt_share: float = 0.01
    linger: float = 0.05
    seed: int | None = None
    #: called with each action a ``[[reactions]]`` rule of the shaping file takes
    on_shaping_action: Callable[[ShapingAction], None] | None = None
    #: SQLite file keeping the ``[[warmup]]`` counters across runs (None: this run only)
    warmup_store: str | None = None
    #: seconds since the epoch for warm-up windows (None: the system clock, read
    #: through trio's clock so a virtual clock moves it too)
    wall_clock: Callable[[], float] | None = None
    #: ``"site"`` (default, as before the option existed): domains with the same
    #: MX host set share transactions (fewer, fuller ones); ``"domain"``: a
    #: transaction holds one domain's recipients (for a provider that applies
    #: per-domain policy at RCPT -- the 452/5xx handling covers it either way)
    batch_by: BatchBy = "site"
    #: MX delivery only (a relay gets ``secure``): MTA-STS by default, DANE on request
    tls_policy: TLSPolicyConfig = field(default_factory=TLSPolicyConfig)
    #: called at once when no host of a destination can be reached (a down or
    #: mistyped relay), with a ``ConnectionFailure``; once per failed connection
    on_connection_failure: ConnectionObserver | None = None
    #: hears one record per SMTP session in the seed's schema (``bulkmail.records``)
    on_session: SessionCallback | None = None
    #: ``on_session`` hears one session in this many
    session_sample: int = 1
    #: counters for Prometheus (``bulkmail.observe``): serve ``metrics.registry()``
    metrics: RunMetrics | None = None

    def session_config(self) -> SessionConfig:
        return SessionConfig(
            host="",
            secure=self.secure,
            ssl_context=self.ssl_context,
            credentials=self.credentials,
            allow_plaintext_auth=self.allow_plaintext_auth,
            client_hostname=self.client_hostname,
            timeouts=self.timeouts,
            use_pipelining=self.pipelining,
            use_chunking=self.chunking,
            chunking_window=self.window,
            records=(
                SessionRecords(self.on_session, self.session_sample)
                if self.on_session is not None else None
            ),
        )

    def engine_config(self) -> EngineConfig:
        shaping = self.shaping or Shaping(self.limits)
        return EngineConfig(
            session=self.session_config(),
            shaping=shaping,
            total_connections=self.total_connections,
            retry=self.retry,
            retry_for=self.retry_for,
            max_pending=self.max_pending,
            linger=self.linger,
            seed=self.seed,
            in_doubt_share=self.in_doubt_share,
            on_shaping_action=self.on_shaping_action,
            warmup_store=self.warmup_store,
            wall_clock=self.wall_clock,
            on_connection_failure=self.on_connection_failure,
            metrics=self.metrics,
            batch_by=self.batch_by,
        )

    def router(self, policies: TLSPolicies | None = None) -> Router:
        """The relay, or MX routing (with ``policies``' TLS plans attached)."""
        if self.relay is not None:
            return RelayRouter(self.relay.host, self.relay.port)
        if policies is not None:
            from .tls_policy.router import PolicyRouter

            return PolicyRouter(MXRouter(self.dns), policies)
        return MXRouter(self.dns)

    def tls_policies(self) -> TLSPolicies | None:
        """The MTA-STS / DANE state of an MX run (None: a relay, or opportunistic TLS)."""
        if self.relay is not None or self.tls_policy.policy == "opportunistic":
            return None
        from .tls_policy.planner import TLSPolicies

        return TLSPolicies(self.tls_policy, self.dns)


class Mailer:
    """Sends jobs through shared pools.

    ::

        async with Mailer(MailerConfig(relay=Relay("127.0.0.1", 2525))) as mailer:
            summary = await mailer.send("news@example.org", message, recipients)

    Leaving the block stops the engine (idle sessions say QUIT).  If the block
    raises or is cancelled, nothing new is sent, in-flight transactions are
    cut short, and every recipient handed in still gets its one result.
    """

    def __init__(self, config: MailerConfig | None = None, **overrides: Any) -> None:
        base = config or MailerConfig()
        self.config = replace(base, **overrides) if overrides else base
        self._engine: Engine | None = None
        self._running: AbstractAsyncContextManager[Engine] | None = None
        self._policies: TLSPolicies | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("use 'async with Mailer(...)' before sending")
        return self._engine

    async def __aenter__(self) -> Mailer:
        if self._running is not None:
            raise RuntimeError("a Mailer is entered once")
        self._running = self._run()
        self._engine = await self._running.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._running is not None
        return await self._running.__aexit__(exc_type, exc, tb)

    @asynccontextmanager
    async def _run(self) -> AsyncIterator[Engine]:
        """The nursery the pools live in, entered and left as one ``async with``
        (never driven by hand), so nothing can unwind between the two."""
        failure: Exception | None = None
        policies = self._policies = self.config.tls_policies()
        engine: Engine | None = None
        try:
            async with trio.open_nursery() as nursery:
                engine = Engine(self.config.engine_config(), self.config.router(policies),
                                nursery)
                try:
                    yield engine
                except BaseException as exc:
                    # the block raised or was cancelled: queued work ends deferred
                    # now, and the workers settle their transactions as they unwind
                    engine.stop()
                    nursery.cancel_scope.cancel()
                    if not isinstance(exc, Exception):
                        raise  # Cancelled, KeyboardInterrupt: trio's to route
                    # the caller's own error, raised as itself once the pools are
                    # down (not wrapped in the nursery's exception group)
                    failure = exc
                else:
                    engine.stop()  # idle sessions say QUIT now, not after their idle timeout
        finally:
            if engine is not None:
                engine.close()  # (the warm-up counters' file)
        if policies is not None:
            policies.close()  # (an error above skips it: the store is closed when collected)
        if failure is not None:
            raise failure

    def stop(self) -> None:
        """Graceful stop: no new transaction starts; in-flight transactions
        finish; everything taken in ends deferred (resumable).  Recipients a
        source has not yielded yet are left in it, without a result."""
        self.engine.stop()

    def abort(self, reason: Reply | BaseException) -> None:
        """Stop everything now, with a reason: no new transactions, in-flight
        ones finish, everything else ends deferred, and each running job's
        ``Summary.aborted`` is ``reason`` (as a reply: an :class:`SMTPError`'s
        own, or a made-up ``451 4.3.0`` naming any other exception).

        An authentication failure (a 535/534/530 to AUTH, or bulkmail refusing
        to send credentials without TLS) aborts the run this way by itself:
        nobody bounces for a wrong password."""
        if isinstance(reason, Reply):
            reply = reason
        elif isinstance(reason, SMTPError):
            reply = reason.reply
        else:
            reply = synthetic_reply(451, "4.3.0", f"{type(reason).__name__}: {reason}")
        self.engine.abort(reply)

    async def send(
        self,
        sender: str,
        message: MessageLike,
        recipients: Recipients,
        *,
        on_result: ResultCallback | None = None,
        on_results: ResultsCallback | None = None,
        verp: bool = False,
        on_in_doubt: InDoubtHook | None = None,
        presettle: Presettle | None = None,
        on_deferred: DeferredHook | None = None,
    ) -> Summary:
        """Deliver ``message`` to every recipient; returns when each has a final result.

        ``on_result`` hears of each result; ``on_results`` (instead, or as
        well) of results in the groups they finished in -- a transaction's
        recipients at once, cheaper for a consumer that batches (a journal).
        ``verp``: each recipient gets its own envelope sender
        (``bounces+alice=example.com@sender.org``) so bounces map back to them.
        ``on_in_doubt`` is awaited with the recipients whose end of data is
        about to leave (a journal's durable mark); ``presettle`` may decide a
        recipient's result without sending it (suppressed, already final).
        ``on_deferred`` hears of each retry scheduled after a temporary failure
        (a :class:`Result` with status ``DEFERRED`` and the seconds until the
        retry): the recipient is still outstanding, its result comes later.

        Every recipient handed in gets exactly one result, also when this call
        is cancelled: then queued ones end deferred, transactions in flight
        are cut short (recipients whose end of data may have left end deferred
        and flagged ``possible_duplicate``), and the call returns at once.
        If a callback or ``on_in_doubt`` raises, the job stops the same way
        (no end of data leaves without its in-doubt mark) and the exception is
        raised here, once, as itself; the callbacks are not called again.
        After :meth:`abort` (or an authentication failure) the summary's
        ``aborted`` says why.
        """
        if sender:
            try:
                commands.validate_address(sender, smtputf8=True)
            except InvalidAddress as exc:
                raise ValueError(f"sender {sender!r}: {exc.reason}") from exc
        engine = self.engine
        options = JobOptions(
            on_result=on_result, on_results=on_results, on_in_doubt=on_in_doubt,
            presettle=presettle, verp=verp, on_deferred=on_deferred,
        )
        job = engine.open_job(sender, as_content(message), options)
        try:
            try:
                await engine.feed(job, recipients)
                await job.settled.wait()
            except BaseException:
                # cancelled, or the recipients' source raised
                await _cut_short(engine, job, CANCELLED)
                raise
            if job.failure is not None:
                reason = f"stopped: {type(job.failure).__name__}: {job.failure}"
                await _cut_short(engine, job, synthetic_reply(451, "4.3.0", reason))
                raise job.failure
        finally:
            engine.forget(job)
        return job.summary

    @asynccontextmanager
    async def results(
        self, sender: str, message: MessageLike, recipients: Recipients
    ) -> AsyncIterator[AsyncIterator[Result]]:
        """Per-recipient results as an async iterator::

            async with mailer.results(sender, msg, rcpts) as results:
                async for result in results: ...
        """
        # Results are produced synchronously by the engine, so the channel is
        # unbounded: a consumer slower than the network accumulates results.
        send_channel, receive_channel = trio.open_memory_channel[Result](math.inf)

        async def run() -> None:
            async with send_channel:
                await self.send(sender, message, recipients, on_result=send_channel.send_nowait)

        async def iterate() -> AsyncIterator[Result]:
            async with receive_channel:
                async for result in receive_channel:
                    yield result

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            yield iterate()


async def _cut_short(engine: Engine, job: Job, reason: Reply) -> None:
    """Cancel ``job`` and wait (shielded, briefly) until each of its recipients
    has a result: the workers settle their cut-short batches as they next run."""
    engine.cancel(job, reason)
    with trio.CancelScope(shield=True), trio.move_on_after(CUT_SHORT_GRACE):
        await job.finished.wait()


async def send(
    sender: str,
    message: MessageLike,
    recipients: Recipients,
    *,
    on_result: ResultCallback | None = None,
    config: MailerConfig | None = None,
    **overrides: Any,
) -> Summary:
    """One call: open a mailer, deliver, close.  ``overrides`` are MailerConfig fields."""
    async with Mailer(config, **overrides) as mailer:
        return await mailer.send(sender, message, recipients, on_result=on_result)
