"""One SMTP connection on a trio stream: a thin driver of :class:`ClientConnection`.

Every protocol rule lives in :mod:`bulkmail.protocol.connection`; this module
only moves bytes between the stream and the connection, applies the RFC 5321
§4.5.3.2 stage deadlines, starts TLS, and awaits the caller's in-doubt hook
before an end of data may leave.  Transactions never raise for what a server
says: each recipient gets a reply (the server's, or a synthesised one), always.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, NamedTuple, TypeVar

import trio

from .config import SessionConfig
from .deadlines import DEADLINE_SLACK, stage_timeouts
from .errors import ERROR_FOR_FAILURE, SMTPError, lost_connection
from .protocol import commands
from .protocol.client import Stage
from .protocol.connection import (  # Event's hot members as globals: see connection.py
    FINISHED,
    MARK,
    NEED_DATA,
    SEND,
    WANT_MORE,
    ClientConnection,
    Event,
    Failure,
)
from .protocol.extensions import Extensions
from .protocol.pipeline import TraceSink
from .protocol.replies import Reply
from .protocol.transaction import Envelope, TransactionResult
from .results import PeerName, TLSStatus
from .trace import Tee, Trace
from .transport import TLSFailed, open_stream, start_tls

__all__ = ["DataEndHook", "Envelope", "Refill", "SMTPSession", "Stage", "TransactionResult"]

RECEIVE_SIZE = 65536
_T = TypeVar("_T")
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

#: awaited with the envelopes whose end of data is next: the journal marks them in doubt
DataEndHook = Callable[[Sequence[Envelope]], Awaitable[None]]
#: more envelopes for the batch in progress, or none (never waits)
Refill = Callable[[], Sequence[Envelope]]


class _FromConnection(Generic[_T]):
    """A read-only attribute of the session that its ClientConnection keeps."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, session: SMTPSession, owner: type | None = None) -> _T:
        return getattr(session._conn, self._name)  # type: ignore[no-any-return]


class _Batch(NamedTuple):
    """The caller's hooks for one ``send_batch``."""

    on_data_end: DataEndHook | None
    refill: Refill | None
    report: Callable[[TransactionResult], None]
    stopping: Callable[[], bool] | None
    write_ahead: Callable[[], int] | None


class SMTPSession:
    """A connected, greeted, EHLO'd (and maybe TLS'd and authenticated) session."""

    def __init__(self, stream: trio.abc.Stream, config: SessionConfig, *, peer: str) -> None:
        self._stream: trio.abc.Stream = stream
        self.config = config
        self.peer = peer
        self.trace: Trace | None = Trace() if config.trace else None
        records = config.records
        #: this session's record (``bulkmail.records``), when one is wanted
        self.recorder = records.recorder(config, peer) if records is not None else None
        sink: TraceSink | None = self.trace
        if self.recorder is not None:
            sink = self.recorder if sink is None else Tee(sink, self.recorder)
        self._conn = ClientConnection(
            client_hostname=config.client_hostname, host=config.host, secure=config.secure,
            credentials=config.credentials, allow_plaintext_auth=config.allow_plaintext_auth,
            tls_active=config.secure == "tls", max_reply_line=config.max_reply_line,
            trace=sink,
        )
        #: the error that ended this session; a closed session is never reused
        self.error: SMTPError | None = None
        self._closed = False
        self._timeouts = stage_timeouts(config.timeouts)
        #: what the read or write in flight waits for (None: a write), for its error
        self._waiting: tuple[Stage | None, float] = (None, 0.0)
        #: the certificate was checked (by the context, or config.tls_verify)
        self._verified = False

    # what the connection knows, read through the session
    extensions: _FromConnection[Extensions] = _FromConnection()
    greeting: _FromConnection[Reply | None] = _FromConnection()
    tls_active: _FromConnection[bool] = _FromConnection()
    authenticated: _FromConnection[bool] = _FromConnection()
    #: transactions that reached the server (a connection's message limit counts them)
    transactions: _FromConnection[int] = _FromConnection()
    #: the server answered pipelined commands out of sequence: don't pipeline to it
    pipelining_broken: _FromConnection[bool] = _FromConnection()
    window: _FromConnection[int] = _FromConnection()  # in flight at most: 1 unless BDAT

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    async def connect(cls, config: SessionConfig, address: str | None = None) -> SMTPSession:
        """Open TCP (and TLS), read the greeting, EHLO, STARTTLS, AUTH.

        ``address`` is the IP to connect to (from routing); ``config.host`` is
        the name used for TLS verification.
        """
        stream = await open_stream(config, address)
        session = cls(stream, config, peer=address or config.host)
        try:
            if config.secure == "tls":
                await session._start_tls()
            if await session._run() is not Event.READY:
                assert session.error is not None
                raise session.error
        except BaseException:
            await session.aclose()
            raise
        return session

    @property
    def is_usable(self) -> bool:
        return not self._closed and self.error is None

    @property
    def peer_name(self) -> PeerName:
        """The host name, carrying how this session is secured (for results)."""
        tls = TLSStatus(self.config.tls_policy, self.tls_active, self._verified)
        return PeerName(self.config.host, tls)

    async def _start_tls(self) -> None:
        try:
            self._stream, self._verified = await start_tls(self._stream, self.config)
        except TLSFailed as exc:
            self._fail(Failure.TLS, exc.reply)
            assert self.error is not None
            raise self.error from exc.__cause__

    async def command(self, line: bytes, stage: Stage) -> Reply:
        """Send one command outside a transaction and read its reply (lock-step)."""
        if self.error is not None:
            raise self.error
        self._conn.command(line, stage)
        if await self._run() is not Event.REPLY:
            assert self.error is not None
            raise self.error
        reply = self._conn.last_reply
        assert reply is not None
        return reply

    async def quit(self) -> None:
        """Say goodbye politely; never raises, never hangs past the quit timeout."""
        if self._closed:
            return
        try:
            if self.error is None:
                with trio.move_on_after(self.config.timeouts.quit), contextlib.suppress(SMTPError):
                    await self.command(commands.QUIT, Stage.QUIT)
        finally:  # also when cancelled: the socket closes now, and the record goes out
            await self.aclose()

    async def aclose(self) -> None:
        """Close at once, without waiting for the peer (shielded: runs during cancellation)."""
        if self._closed:
            return
        self._closed = True
        if self.recorder is not None:
            self.recorder.finish(self.error.reply if self.error is not None else None)
        with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(*_BROKEN):
            await self._stream.aclose()

    # -- transactions -------------------------------------------------------

    async def send_batch(
        self,
        envelopes: Sequence[Envelope],
        *,
        on_data_end: DataEndHook | None = None,
        refill: Refill | None = None,
        on_done: Callable[[TransactionResult], None] | None = None,
        stopping: Callable[[], bool] | None = None,
        write_ahead: Callable[[], int] | None = None,
    ) -> list[TransactionResult]:
        """Run transactions back to back on this session.

        Every envelope -- the given ones, then any that ``refill`` supplied
        when the mode had room to write ahead -- gets one result, in order:
        passed to ``on_done`` as soon as the read that finished it is handled,
        or returned at the end without ``on_done``.  ``on_data_end`` is awaited
        before an end of data may leave, for just the transactions in flight;
        ``write_ahead()`` (with CHUNKING) says how many may be in flight, asked
        at the start and before each refill.
        Once ``stopping()`` is true no new MAIL is written: transactions in
        flight finish, the rest come back with ``attempted=False``.  If the
        session dies midway, the rest get the error's reply and ``self.error``
        is set.
        """
        config = self.config
        results: list[TransactionResult] = []
        report = on_done or results.append
        if self.recorder is not None:
            report, refill = self.recorder.follow(envelopes, report, refill)
        self._conn.start_batch(
            envelopes, pipelining=config.use_pipelining, chunking=config.use_chunking,
            window=config.chunking_window if write_ahead is None else write_ahead(),
            mark=on_data_end is not None,
        )
        if not self._conn.writes_ahead:
            write_ahead = None  # only BDAT has a window to move: not asked per refill
        await self._run(_Batch(on_data_end, refill, report, stopping, write_ahead))
        return results

    # -- the driver -----------------------------------------------------------

    async def _run(self, batch: _Batch | None = None) -> Event:
        """Drive the connection until it needs the caller; the event that says so.

        One cancel scope for the whole run, its deadline moved (see ``deadlines``)
        for each read and write: cheaper than a scope per I/O (~7 us each in
        trio), and inside structured concurrency, unlike a watchdog task."""
        try:
            with trio.CancelScope() as scope:
                return await self._loop(scope, batch)
        except BaseException as exc:
            # cancelled from outside (or a hook raised) mid-dialogue: never reuse it
            self._fail(Failure.LOST, lost_connection("session interrupted"))
            if isinstance(exc, trio.Cancelled):
                self._drain(batch)  # every transaction still gets its one result
            raise
        # only the scope's own deadline gets here: a read or write took too long
        stage, timeout = self._waiting
        text = (
            "timed out sending to the server" if stage is None
            else f"no reply to {stage.value.upper()} within {timeout:g}s"
        )
        self._fail(Failure.TIMEOUT, lost_connection(text))
        return self._drain(batch)

    async def _loop(self, scope: trio.CancelScope, batch: _Batch | None) -> Event:
        conn, stream = self._conn, self._stream
        stopping = batch.stopping if batch is not None else None
        replies = -1  # conn.replies when the current read deadline was set
        # The stage deadline moves inline (see ``deadlines``): the clock read
        # directly and the scope's deadline mirrored in ``armed``, and the
        # owed command read off the connection's FIFO -- ``arm()``,
        # ``trio.current_time()``, ``scope.deadline`` and two properties were
        # 12 Python calls a message in scenario a, 2 left.
        clock = trio.lowlevel.current_clock()
        armed = scope.deadline
        owed = conn.owed
        while True:
            if stopping is not None and stopping():
                conn.stop()
                stopping = None
            event = conn.next_event()
            if event is NEED_DATA:
                if conn.replies != replies:  # a new wait: the last one was answered
                    replies = conn.replies
                    stage = owed[0] if owed else None
                    timeout = self._timeouts[stage]
                    self._waiting = (stage, timeout)
                    deadline = clock.current_time() + timeout
                    if not armed - DEADLINE_SLACK <= deadline <= armed:
                        armed = scope.deadline = deadline + DEADLINE_SLACK
                try:
                    conn.receive_data(await stream.receive_some(RECEIVE_SIZE))
                except _BROKEN as exc:
                    self._fail(Failure.LOST, lost_connection(f"connection lost: {exc}"))
            elif event is SEND:
                # at least RFC 5321's data block time, and no less than the
                # reply after it gets: that read then keeps this deadline
                timeout = max(self.config.timeouts.data_block,
                              self._timeouts[owed[0] if owed else None])
                self._waiting = (None, timeout)
                deadline = clock.current_time() + timeout
                if not armed - DEADLINE_SLACK <= deadline <= armed:
                    armed = scope.deadline = deadline + DEADLINE_SLACK
                replies = -1  # the next read waits for a reply to this
                try:
                    await stream.send_all(conn.data_to_send())
                except _BROKEN as exc:
                    text = f"connection lost while sending: {exc}"
                    self._fail(Failure.LOST, lost_connection(text))
            elif event is FINISHED:
                assert batch is not None
                for result in conn.take_finished():
                    batch.report(result)
            elif event is MARK:
                assert batch is not None
                envelopes = conn.take_marks()
                if batch.on_data_end is not None:
                    try:  # (the commit runs under the last write's deadline: minutes)
                        await batch.on_data_end(envelopes)
                    except SMTPError as exc:  # not marked: their end of data must not leave
                        self._fail(Failure.LOST, exc.reply)
                        return self._drain(batch)
                    if stopping is not None and stopping():
                        conn.stop()
                        stopping = None
                conn.marked()
            elif event is WANT_MORE:
                assert batch is not None
                if batch.write_ahead is not None:  # (the in-doubt budget moves)
                    conn.set_window(batch.write_ahead())
                conn.extend(batch.refill() if batch.refill is not None else ())
            elif event is Event.START_TLS:  # (the hot five are tested first)
                armed = scope.deadline = math.inf
                replies = -1
                await self._start_tls()
                stream = self._stream
                conn.tls_started()
            else:  # READY, REPLY, BATCH_DONE, CLOSED
                self._fail_as_connection()
                return event

    def _drain(self, batch: _Batch | None) -> Event:
        """After a timeout or a failed mark: the closed connection's last results, no I/O."""
        while True:
            event = self._conn.next_event()
            if event is FINISHED and batch is not None:
                for result in self._conn.take_finished():
                    batch.report(result)
            elif event in (Event.BATCH_DONE, Event.CLOSED):
                return event

    def _fail(self, failure: Failure, reply: Reply) -> None:
        """The session ends: the connection finishes every transaction with ``reply``."""
        self._conn.abort(failure, reply)
        self._fail_as_connection()

    def _fail_as_connection(self) -> None:
        failure = self._conn.failure
        if failure is not None and self.error is None:
            kind, reply = failure
            self.error = ERROR_FOR_FAILURE[kind](reply, host=self.peer)
