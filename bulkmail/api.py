"""The public library API: ``Mailer`` and the one-call ``send``.

``Mailer`` owns its nursery openly (an async context manager): pools,
routing and retries live there and are torn down when the block exits.
"""

from __future__ import annotations

import math
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from types import TracebackType
from typing import Any

import trio

from .config import Security, SessionConfig, Timeouts
from .engine import Engine, EngineConfig, Job, ResultCallback, ResultsCallback
from .message import Content, Recipient, as_content
from .policy import RetryPolicy
from .protocol import commands
from .protocol.auth import Credentials
from .protocol.errors import InvalidAddress
from .records import SessionCallback, SessionRecords
from .results import Result, Summary
from .routing import DNSConfig, MXRouter, RelayRouter, Router
from .shaping import PoolLimits, Shaping

MessageLike = bytes | str | EmailMessage | Content | Callable[[Recipient], bytes]
Recipients = Iterable[Recipient | str] | AsyncIterable[Recipient | str]


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
    linger: float = 0.05
    seed: int | None = None
    #: hears one record per SMTP session in the seed's schema (``bulkmail.records``)
    on_session: SessionCallback | None = None
    #: ``on_session`` hears one session in this many
    session_sample: int = 1

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
        )

    def router(self) -> Router:
        if self.relay is not None:
            return RelayRouter(self.relay.host, self.relay.port)
        return MXRouter(self.dns)


class Mailer:
    """Sends jobs through shared pools.

    ::

        async with Mailer(MailerConfig(relay=Relay("127.0.0.1", 2525))) as mailer:
            summary = await mailer.send("news@example.org", message, recipients)
    """

    def __init__(self, config: MailerConfig | None = None, **overrides: Any) -> None:
        base = config or MailerConfig()
        self.config = replace(base, **overrides) if overrides else base
        self._engine: Engine | None = None
        self._nursery_manager: Any = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("use 'async with Mailer(...)' before sending")
        return self._engine

    async def __aenter__(self) -> Mailer:
        self._nursery_manager = trio.open_nursery()
        nursery = await self._nursery_manager.__aenter__()
        self._engine = Engine(self.config.engine_config(), self.config.router(), nursery)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        engine = self.engine
        engine.stop()  # idle sessions say QUIT now instead of after their idle timeout
        if exc is not None:
            engine.nursery.cancel_scope.cancel()
        result: bool | None = await self._nursery_manager.__aexit__(exc_type, exc, tb)
        return result

    def stop(self) -> None:
        """Graceful stop: no new work; in-flight transactions finish; the rest is deferred."""
        self.engine.stop()

    async def send(
        self,
        sender: str,
        message: MessageLike,
        recipients: Recipients,
        *,
        on_result: ResultCallback | None = None,
        on_results: ResultsCallback | None = None,
        verp: bool = False,
    ) -> Summary:
        """Deliver ``message`` to every recipient; returns when each has a final result.

        ``on_result`` hears of each result; ``on_results`` (instead, or as
        well) of results in the groups they finished in -- a transaction's
        recipients at once, cheaper for a consumer that batches (a journal).
        ``verp``: each recipient gets its own envelope sender
        (``bounces+alice=example.com@sender.org``) so bounces map back to them.
        """
        if sender:
            try:
                commands.validate_address(sender, smtputf8=True)
            except InvalidAddress as exc:
                raise ValueError(f"sender {sender!r}: {exc.reason}") from exc
        engine = self.engine
        job = Job(engine, sender, as_content(message), on_result)
        job.on_results = on_results
        job.verp = verp
        try:
            if isinstance(recipients, AsyncIterable):
                n = 0
                async for recipient in recipients:
                    if engine.stopping:
                        break
                    await engine.add(job, recipient)
                    n += 1
                    if n % 256 == 0:
                        await trio.lowlevel.checkpoint()
            else:
                await engine.submit(job, recipients)
        finally:
            job.end_of_input()
        await job.done.wait()
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
