"""The client side of one SMTP connection, sans-IO: every rule, no I/O, no clock.

Like h11, the caller moves bytes and this object decides: feed what the
server sent to :meth:`ClientConnection.receive_data`, then ask
:meth:`~ClientConnection.next_event` what to do -- write
:meth:`~ClientConnection.data_to_send` (``SEND``), read more (``NEED_DATA``,
for a reply to :attr:`~ClientConnection.awaiting`), start TLS, record
transactions in doubt (``MARK``), hand on finished results (``FINISHED``).

Replies are paired with their commands by :class:`~.client.ClientProtocol`
(the FIFO that makes pipelining safe) and handed on as ``(stage, reply,
count)``: the same reply to the next RCPTs, already received, is taken in one
step.  The greeting, EHLO/HELO, STARTTLS and AUTH rules are in
:mod:`.handshake`, the transactions' in :mod:`.pipeline`; the one rule kept
here is 421: at any stage it ends the session.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from .auth import Credentials
from .client import ClientProtocol, Stage
from .errors import RemoteProtocolError
from .extensions import Extensions
from .handshake import Failure, Handshake, HandshakeStep
from .pipeline import CHUNKING, LOCKSTEP, PIPELINED, Mode, Pipeline, TraceSink
from .replies import Reply, synthetic_reply
from .transaction import Envelope, TransactionResult

__all__ = ["ClientConnection", "Event", "Failure", "Mode"]


class Event(Enum):
    """What the caller must do next (the data comes from the connection's accessors)."""

    #: read from the server: a reply to :attr:`ClientConnection.awaiting` is owed
    NEED_DATA = "need data"
    #: write :meth:`ClientConnection.data_to_send`
    SEND = "send"
    #: 220 to STARTTLS: do the TLS handshake, then :meth:`ClientConnection.tls_started`
    START_TLS = "start tls"
    #: greeted, EHLO'd, maybe TLS'd and authenticated: transactions may start
    READY = "ready"
    #: the reply to :meth:`ClientConnection.command` is :attr:`ClientConnection.last_reply`
    REPLY = "reply"
    #: record :meth:`ClientConnection.take_marks` in doubt, then call ``marked()``
    MARK = "mark"
    #: hand on :meth:`ClientConnection.take_finished` (in envelope order)
    FINISHED = "finished"
    #: :meth:`ClientConnection.extend` with more envelopes, or with none
    WANT_MORE = "want more"
    #: every transaction of the batch has its result
    BATCH_DONE = "batch done"
    #: the session is over: :attr:`ClientConnection.failure` says why
    CLOSED = "closed"


# Enum members as module globals on the hot path (here, in pipeline.py and in
# session.py): on Python 3.11 ``Event.SEND`` goes through EnumType.__getattr__'s
# slow attribute hook, ~100 ns against ~4 ns for a global, and scenario a read
# 38 members a message (a d's 50-recipient transaction 40).
NEED_DATA, SEND, START_TLS, READY, REPLY = (
    Event.NEED_DATA, Event.SEND, Event.START_TLS, Event.READY, Event.REPLY
)
MARK, FINISHED, WANT_MORE, BATCH_DONE, CLOSED = (
    Event.MARK, Event.FINISHED, Event.WANT_MORE, Event.BATCH_DONE, Event.CLOSED
)
_RCPT = Stage.RCPT


def _violation(exc: RemoteProtocolError) -> Reply:
    return synthetic_reply(451, "4.5.0", f"protocol error from server: {exc}")


class ClientConnection:
    """One SMTP client connection's state: handshake, commands, transactions."""

    def __init__(
        self,
        *,
        client_hostname: str,
        host: str,
        secure: str = "none",
        credentials: Credentials | None = None,
        allow_plaintext_auth: bool = False,
        tls_active: bool = False,
        max_reply_line: int = 4096,
        trace: TraceSink | None = None,
    ) -> None:
        self._protocol = ClientProtocol(max_reply_line)
        self._trace = trace
        self._out: list[bytes] = []
        self._handshake: Handshake | None = Handshake(
            client_hostname, host, secure, credentials, allow_plaintext_auth, tls_active
        )
        self._pipeline = Pipeline(self._protocol, self._out, trace)
        #: the commands whose replies are owed, oldest first (``awaiting`` is
        #: its head): the same deque for the connection's life, for a driver
        #: that reads it at every read and write
        self.owed = self._protocol.pending
        self.extensions = Extensions()
        self.greeting: Reply | None = None
        self.tls_active = tls_active
        self.authenticated = False
        #: why the session ended (the reply every unanswered recipient gets)
        self.failure: tuple[Failure, Reply] | None = None
        self.last_reply: Reply | None = None
        #: replies taken so far (a read's deadline restarts when it grows)
        self.replies = 0
        self._event: Event | None = None
        self._eof = False
        self._batch = False

    # -- bytes in, bytes out -------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the server; ``b""`` means it closed the connection."""
        if not data:
            self._eof = True
        self._protocol.receive_data(data)
        self._pipeline.may_ask = True

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        return data

    @property
    def awaiting(self) -> Stage | None:
        """The command whose reply is owed next (what a read waits for)."""
        return self._protocol.expected

    # -- events ----------------------------------------------------------------

    def next_event(self) -> Event:
        """Process every reply already received, then say what must happen next."""
        if self._batch and self._pipeline.postmarks and not self._out:
            return MARK  # before any reply that could let their end of data go
        if self.failure is None:
            try:
                self._take_replies()
            except RemoteProtocolError as exc:
                self._protocol_error(exc)
            if self._event is not None:
                event, self._event = self._event, None
                return event
        if not self._batch:
            if self.failure is not None:
                return CLOSED
            return SEND if self._out else NEED_DATA
        pipeline = self._pipeline
        if pipeline.finished:
            return FINISHED
        if self.failure is None:
            try:
                if pipeline.fill():
                    return WANT_MORE
            except RemoteProtocolError as exc:
                self._protocol_error(exc)
                return self.next_event()
        if pipeline.premarks:
            return MARK  # before the write that carries their content (BDAT)
        if self._out:
            return SEND
        if pipeline.postmarks:
            return MARK  # after the write of their DATA: during the round trip
        if pipeline.settled:
            self._batch = False
            return BATCH_DONE
        return NEED_DATA

    def _take_replies(self) -> None:
        """Handle every reply already received.  The same reply to the next
        RCPTs, already buffered (fifty "250 2.1.5 Ok"), is taken in one step.

        The reply loop of every transaction, written out in one function (it
        was three calls deep per reply: 21 Python calls a one-recipient
        message, ~7% of scenario a's calls)."""
        protocol = self._protocol
        take = protocol.next_reply
        pipeline = self._pipeline
        handlers = pipeline.handlers
        inflight = pipeline.inflight  # (one deque for the connection's life)
        while self._event is None:
            item = take()
            if item is None:
                if self._eof and self.failure is None:
                    stage = protocol.expected
                    awaiting = f" awaiting {stage.value}" if stage is not None else ""
                    self._close(Failure.LOST, synthetic_reply(
                        451, "4.4.2", f"server closed the connection{awaiting}"
                    ))
                return
            stage, reply = item
            count = 1
            if stage is _RCPT:
                txn = inflight[0]
                left = len(txn.sendable) - txn.rcpt_at - 1
                if left:
                    count += protocol.take_repeats(_RCPT, left)
            self.replies += count
            if self._trace is not None:
                for _ in range(count):
                    self._trace.server(reply)
            handler = handlers.get(stage)
            if handler is not None:  # a transaction's reply: the common case, inline
                handler(inflight[0], reply, count)
                if reply.code == 421 and self.failure is None:
                    self._close(Failure.UNAVAILABLE, reply)  # the 421 rule
            else:
                self._dispatch(stage, reply, count)
            if self.failure is not None:
                return

    def _dispatch(self, stage: Stage, reply: Reply, count: int) -> None:
        """A reply outside a transaction (``_take_replies`` handles those)."""
        if stage is Stage.RSET:
            pass  # (a refused RSET shows at the MAIL after it)
        elif self._handshake is not None:
            if stage is Stage.GREETING:
                self.greeting = reply
            if reply.code != 421:
                self._apply(self._handshake.on_reply(
                    stage, reply, tls_injected=self._protocol.has_unsolicited_data
                ))
        else:
            self.last_reply = reply
            self._event = REPLY
        if reply.code == 421 and self.failure is None:
            self._close(Failure.UNAVAILABLE, reply)  # the 421 rule

    # -- handshake and lone commands --------------------------------------------

    def _apply(self, step: HandshakeStep) -> None:
        handshake = self._handshake
        assert handshake is not None
        self.extensions = handshake.extensions
        self.authenticated = handshake.authenticated
        if step.failure is not None:
            self._close(*step.failure)
        elif step.send is not None:
            line, stage, shown = step.send
            self._command(line, stage, shown)
        elif step.start_tls:
            self._event = START_TLS
        else:
            self._handshake = None
            self._event = READY

    def tls_started(self) -> None:
        """TLS is up after STARTTLS: EHLO again (RFC 3207 §4.2)."""
        handshake = self._handshake
        assert handshake is not None
        self.tls_active = True
        if self._trace is not None:
            self._trace.note("[ TLS handshake occurs ]")
        self._apply(handshake.tls_started())

    def command(self, line: bytes, stage: Stage) -> None:
        """Write one command outside a transaction (QUIT, NOOP, RSET): ``REPLY`` follows."""
        self._command(line, stage, None)
        if stage is Stage.RSET:
            self._pipeline.server_open = False

    def _command(self, line: bytes, stage: Stage, shown: str | None) -> None:
        try:
            self._protocol.expect(stage)
        except RemoteProtocolError as exc:
            self._protocol_error(exc)
            return
        self._out.append(line)
        if self._trace is not None:
            self._trace.client(shown if shown is not None else line)

    # -- the end ---------------------------------------------------------------

    def abort(self, failure: Failure, reply: Reply) -> None:
        """The session failed outside the protocol (timeout, lost connection, cancel)."""
        self._close(failure, reply)

    def _protocol_error(self, exc: RemoteProtocolError) -> None:
        self._close(Failure.PROTOCOL, _violation(exc))

    def _close(self, failure: Failure, reply: Reply) -> None:
        """The session is over: every transaction gets its result now."""
        if self.failure is not None:
            return
        self.failure = (failure, reply)
        self._protocol.clear_pending()
        self._out.clear()
        self._event = None
        self._pipeline.finish_all(reply, said_by_server=failure is Failure.UNAVAILABLE)

    # -- transactions (the rules are in .pipeline) ------------------------------

    def start_batch(
        self,
        envelopes: Sequence[Envelope],
        *,
        pipelining: bool = True,
        chunking: bool = True,
        window: int = 1,
        mark: bool = False,
    ) -> None:
        """Transactions to run back to back, in the mode the server's offer and
        the caller's wishes allow; ``mark``: hand out ``MARK`` events."""
        ext = self.extensions
        if not (pipelining and ext.pipelining):
            mode = LOCKSTEP
        elif chunking and ext.chunking:
            mode = CHUNKING
        else:
            mode = PIPELINED
        self.start_in_mode(envelopes, mode, window=window, mark=mark)

    def start_in_mode(
        self, envelopes: Sequence[Envelope], mode: Mode, *, window: int = 1, mark: bool = False
    ) -> None:
        self._batch = True
        self._pipeline.start(envelopes, self.extensions, mode=mode, window=window, mark=mark)
        if self.failure is not None:  # a dead session: everything back, unsent
            self._pipeline.finish_all(self.failure[1], said_by_server=True)

    def extend(self, envelopes: Sequence[Envelope]) -> None:
        """More transactions for the batch (after ``WANT_MORE``; none is fine)."""
        self._pipeline.extend(envelopes, self.extensions)

    @property
    def writes_ahead(self) -> bool:
        """The batch runs with CHUNKING: whole transactions are written ahead,
        up to a window (``set_window``)."""
        return self._pipeline.mode is CHUNKING

    @property
    def window(self) -> int:
        """Transactions the batch may have in flight: its BDAT window, else 1."""
        return self._pipeline.window

    def set_window(self, window: int) -> None:
        """With CHUNKING: transactions that may be in flight from now on."""
        self._pipeline.set_window(window)

    def stop(self) -> None:
        """Write no new MAIL; what is in flight finishes, the rest comes back not sent."""
        self._pipeline.stop()

    def take_marks(self) -> list[Envelope]:
        """Transactions whose end of data may leave next: record them in doubt first."""
        return self._pipeline.take_marks()

    def marked(self) -> None:
        """The transactions of the last ``take_marks`` are recorded in doubt."""
        try:
            self._pipeline.marked()
        except RemoteProtocolError as exc:
            self._protocol_error(exc)

    def take_finished(self) -> list[TransactionResult]:
        pipeline = self._pipeline
        finished, pipeline.finished = pipeline.finished, []
        return finished

    @property
    def transactions(self) -> int:
        """Transactions that reached the server (a connection's limit counts them)."""
        return self._pipeline.transactions

    @property
    def pipelining_broken(self) -> bool:
        return self._pipeline.pipelining_broken
