"""The transactions of one connection: one driver for every mode, and what
each reply means.  No I/O: commands go to a shared output list, replies come
from :class:`~.connection.ClientConnection`, in order.

The modes differ only in what may be written ahead of the replies
(:meth:`Pipeline._room`):

- lock-step (no PIPELINING): one command, then its reply;
- pipelined DATA (RFC 2920): MAIL, every RCPT and DATA in one write, the
  content after the 354 together with the next transaction's commands;
- BDAT (RFC 3030 + 2920): whole transactions, content included, up to a
  window of them in flight, topped up once half of it has been answered.

The rules, one place each:

- **RSET** (:attr:`Pipeline._server_open`): a transaction the server may still
  hold open -- MAIL accepted (or 503) and no end of data followed, or a
  refused BDAT, whose state RFC 3030 calls indeterminate -- is followed by
  RSET before the next MAIL.
- **503** (bad sequence) answers the session's state, never a recipient: the
  recipients it concerns get a local 451 (after a 503 to MAIL: no answer and
  no attempt counted), and RSET comes next.  A 503 to RCPT after MAIL was
  accepted means the server cannot pipeline: ``pipelining_broken``.
- **421** at any stage ends the session (:meth:`Pipeline.finish_all`): the
  reply answers the command it came for and every recipient still without
  an answer; nothing is in doubt, since the server said it stopped.
- **Every RCPT refused**: no content is sent for nobody.  Lock-step sends no
  DATA; a DATA written ahead that gets 354 is ended at once with a lone "."
  (RFC 2920 §3.1); a BDAT written ahead cannot be recalled and the server
  refuses it.  Either way each recipient keeps its own RCPT refusal (never
  the DATA/BDAT reply), in every mode.
- **Stopping** or broken pipelining: no new MAIL is written; transactions in
  flight finish; those not started come back not attempted.
- **In doubt**: a transaction is handed out to be marked (``take_marks``)
  before its end of data can leave -- right after the write that carries its
  DATA command (the marking overlaps the round trip to the 354), or for
  BDAT before the write that carries its content -- so what is marked is
  what is really in flight.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Protocol

from . import commands
from .client import ClientProtocol, Stage
from .extensions import Extensions
from .replies import Reply, synthetic_reply
from .transaction import Envelope, Transaction, TransactionResult, plan


class Mode(Enum):
    LOCKSTEP = "lock-step"
    PIPELINED = "pipelined DATA"
    CHUNKING = "BDAT"


# hot-path enum members as module globals (see protocol/connection.py)
LOCKSTEP, PIPELINED, CHUNKING = Mode.LOCKSTEP, Mode.PIPELINED, Mode.CHUNKING
_MAIL, _RCPT, _DATA, _DATA_END, _BDAT, _RSET = (
    Stage.MAIL, Stage.RCPT, Stage.DATA, Stage.DATA_END, Stage.BDAT, Stage.RSET
)


class TraceSink(Protocol):
    """Where the dialogue is recorded (``bulkmail.trace.Trace``)."""

    def client(self, data: bytes | str, note: str | None = None) -> None: ...
    def server(self, reply: Reply, note: str | None = None) -> None: ...
    def note(self, text: str) -> None: ...


#: what a recipient without any answer (and no session failure) is told
NO_REPLY = synthetic_reply(451, "4.3.0", "no reply")
PIPELINING_BROKEN = synthetic_reply(
    451, "4.5.0", "server mishandled pipelined commands (503); retrying without PIPELINING"
)
NOT_STARTED = synthetic_reply(451, "4.3.0", "not started on this session")

# a transaction's phases
PLANNED, ENVELOPE, CONTENT, DONE = range(4)
_ACCEPTED = frozenset({250, 251, 252})


def out_of_sequence(reply: Reply, stage: Stage) -> Reply:
    """The local answer for recipients whose command got 503 (the 503 rule)."""
    return synthetic_reply(
        451, "4.5.0", f"server answered {stage.value.upper()} out of sequence ({reply})"
    )


class Pipeline:
    """Transactions in order: planned, written ahead as the mode allows, answered."""

    def __init__(self, protocol: ClientProtocol, out: list[bytes], trace: TraceSink | None) -> None:
        self._protocol = protocol
        self._out = out
        self._trace = trace
        self.pipelining_broken = False
        #: transactions that reached the server (a connection's limit counts them)
        self.transactions = 0
        self.mode = LOCKSTEP
        #: transactions that may be in flight: the BDAT window, else 1
        self.window = 1
        self._track = False
        self._stopped = False
        #: a read happened since the caller was last asked for more work
        self.may_ask = False
        #: the server may hold a transaction open at the end of what was written
        self.server_open = False
        self._last: Transaction | None = None
        self._queue: deque[Transaction] = deque()
        #: written and not yet answered, oldest (the next reply's) first (an
        #: attribute, not a property: the reply loop reads it at every call)
        self.inflight: deque[Transaction] = deque()
        self._unreported: deque[Transaction] = deque()
        self.premarks: list[Transaction] = []
        self.postmarks: list[Transaction] = []
        self._marking: list[Transaction] = []
        self.finished: list[TransactionResult] = []
        #: the reply every transaction still unanswered gets (the session's end)
        self._fallback = NO_REPLY
        #: the reply of a transaction that will not be started
        self._unstarted = NOT_STARTED
        self.handlers: dict[Stage, Callable[[Transaction, Reply, int], None]] = {
            _MAIL: self._on_mail,
            _RCPT: self._on_rcpt,
            _DATA: self._on_data,
            _DATA_END: self._on_end,
            _BDAT: self._on_end,
        }

    @property
    def settled(self) -> bool:
        """Every transaction of the batch has its result."""
        return not self._unreported

    def start(self, envelopes: Sequence[Envelope], ext: Extensions, *,
              mode: Mode, window: int, mark: bool) -> None:
        self.mode = mode
        self.window = max(1, window) if mode is CHUNKING else 1
        self._track = mark
        self._stopped = False
        self.may_ask = True
        self.extend(envelopes, ext)

    def set_window(self, window: int) -> None:
        """BDAT: how many transactions may be in flight from now on (the
        caller's in-doubt budget moves as a run goes; see ``Engine.write_ahead``)."""
        if self.mode is CHUNKING:
            self.window = max(1, window)

    def extend(self, envelopes: Sequence[Envelope], ext: Extensions) -> None:
        for envelope in envelopes:
            txn = plan(envelope, ext)
            self._unreported.append(txn)
            if txn.sendable and not self._stopped:
                self._queue.append(txn)
            else:
                if txn.sendable:
                    txn.answer(self._unstarted, None, range(len(txn.replies)))
                txn.phase = DONE
        self._collect()

    def stop(self) -> None:
        """Write no new MAIL; what is in flight finishes, the rest is not sent."""
        self._stopped = True
        for txn in (*self._queue, *self.premarks):
            txn.answer(self._unstarted, None, range(len(txn.replies)))
            txn.phase = DONE
        self._queue.clear()
        self.premarks.clear()
        self._collect()

    def take_marks(self) -> list[Envelope]:
        self._marking = self.premarks + self.postmarks
        self.premarks = []
        self.postmarks = []
        return [t.envelope for t in self._marking]

    def marked(self) -> None:
        marking, self._marking = self._marking, []
        for txn in marking:
            txn.marked = True
            if txn.phase == PLANNED:  # BDAT: its content goes with its commands
                if self._stopped:
                    txn.answer(self._unstarted, None, range(len(txn.replies)))
                    txn.phase = DONE
                else:
                    self._write(txn)
        self._collect()

    def finish_all(self, reply: Reply, *, said_by_server: bool) -> None:
        """The session ended: every transaction gets its result, the unanswered ``reply``.

        ``said_by_server`` (a 421): the server stopped, so nothing written
        after the command it answered was taken -- nobody is in doubt."""
        self._fallback = self._unstarted = reply
        for txn in self._unreported:
            if said_by_server:
                txn.data_sent = False
            txn.phase = DONE
        self._stopped = True
        self._queue.clear()
        self.inflight.clear()
        self.premarks.clear()
        self.postmarks.clear()
        self._collect()

    # -- writing ---------------------------------------------------------------

    def _room(self) -> bool:
        """Whether the next transaction may be written now: the only difference
        between the modes."""
        inflight = self.inflight
        mode = self.mode
        if mode is PIPELINED:
            return not inflight or inflight[-1].phase >= CONTENT
        if mode is LOCKSTEP:
            return not inflight
        # BDAT: top the window up once half of it has been answered, so that
        # writes stay large (one per half window, not one per reply)
        return len(inflight) + len(self.premarks) <= self.window // 2

    def fill(self) -> bool:
        """Write what the mode allows ahead; True to ask the caller for more work."""
        if self._stopped or self.pipelining_broken or not self._room():
            return False
        queue = self._queue
        if not queue:
            if self.may_ask:
                self.may_ask = False
                return True
            return False
        if self.mode is CHUNKING:
            limit = self.window - len(self.inflight) - len(self.premarks)
        else:
            limit = 1
        while queue and limit > 0:
            txn = queue.popleft()
            limit -= 1
            if self.mode is CHUNKING and self._track:
                self.premarks.append(txn)  # marked first: its content goes in this write
            else:
                self._write(txn)
        return False

    def _write(self, txn: Transaction) -> None:
        """A transaction's first write: what its mode lets go before any reply."""
        protocol, out, trace = self._protocol, self._out, self._trace
        if self.server_open:
            protocol.expect(_RSET)
            out.append(commands.RSET)
            if trace is not None:
                trace.client(commands.RSET)
            self.server_open = False
        protocol.expect(_MAIL)
        out.append(txn.mail)
        txn.phase = ENVELOPE
        self.inflight.append(txn)
        self._last = txn
        mode = self.mode
        if trace is not None:
            trace.client(txn.mail)
        if mode is LOCKSTEP:
            return
        protocol.expect(_RCPT, len(txn.rcpts))
        out.extend(txn.rcpts)
        if trace is not None:
            for line in txn.rcpts:
                trace.client(line)
        if mode is PIPELINED:
            protocol.expect(_DATA)
            out.append(commands.DATA)
            if trace is not None:
                trace.client(commands.DATA)
            if self._track:
                self.postmarks.append(txn)
            return
        payload = txn.envelope.message.normalized
        header = commands.bdat(len(payload), last=True)
        protocol.expect(_BDAT)
        out.append(header)
        out.append(payload)
        txn.phase = CONTENT
        txn.data_sent = True
        if trace is not None:
            trace.client(header.rstrip(b"\r\n") + b" <message content>", "BDAT chunk")

    def _command(self, line: bytes, stage: Stage) -> None:
        self._protocol.expect(stage)
        self._out.append(line)
        if self._trace is not None:
            self._trace.client(line)

    def _next_in_lockstep(self, txn: Transaction) -> None:
        """Lock-step: the next RCPT, or DATA once all are answered, or the end."""
        if txn.rcpt_at < len(txn.rcpts):
            self._command(txn.rcpts[txn.rcpt_at], _RCPT)
        elif txn.accepted:
            self._command(commands.DATA, _DATA)
            if self._track:
                self.postmarks.append(txn)
        else:
            self._done(txn)  # everyone refused: no DATA (RSET follows: server_open)

    def _write_content(self, txn: Transaction) -> None:
        """After 354: the content, or a lone "." when every RCPT was refused."""
        if txn.accepted:
            if self._track and not txn.marked:  # pragma: no cover - a bug in the driver
                raise AssertionError("end of data before its transaction was marked in doubt")
            self._out.append(txn.envelope.message.data_payload)
            txn.data_sent = True
        else:
            self._out.append(b".\r\n")  # RFC 2920 §3.1: a DATA written ahead must be ended
        self._protocol.expect(_DATA_END)
        txn.phase = CONTENT
        self.server_open = False
        if self._trace is not None:
            self._trace.client(b"<message content>\r\n.", "message content and end of data")

    # -- what each reply means (one handler per stage) -------------------------

    def _on_mail(self, txn: Transaction, reply: Reply, count: int) -> None:
        code = txn.mail_code = reply.code
        if code == 250 or code == 503:
            # 503: out of sequence -- the server's state is not what we wrote
            # (nobody's answer, no attempt counted; RSET next)
            if code == 250:
                txn.got_reply = True
            if txn is self._last and txn.phase == ENVELOPE:
                self.server_open = True
        elif code != 421:  # 421: a stale pooled session; counts no attempt
            txn.got_reply = True
            txn.answer(reply, _MAIL, txn.sendable)  # every recipient's answer
        if self.mode is LOCKSTEP:
            if code == 250:
                self._next_in_lockstep(txn)
            else:
                self._done(txn)

    def _on_rcpt(self, txn: Transaction, reply: Reply, count: int) -> None:
        k = txn.rcpt_at
        txn.rcpt_at = k + count
        mail = txn.mail_code
        code = reply.code
        if mail == 250 or mail == 503:
            indices = txn.sendable[k : k + count] if count > 1 else (txn.sendable[k],)
            if code in _ACCEPTED:
                txn.accepted.extend(indices)
            elif code == 503:
                if mail == 250:
                    # "need MAIL" after a 250 to MAIL: PIPELINING advertised, not done
                    self.pipelining_broken = True
                    txn.answer(PIPELINING_BROKEN, None, indices)
                    self.stop()  # the pool goes on without PIPELINING
            else:
                txn.got_reply = True
                txn.answer(reply, _RCPT, indices)
        if self.mode is LOCKSTEP and code != 421:
            self._next_in_lockstep(txn)

    def _on_data(self, txn: Transaction, reply: Reply, count: int) -> None:
        code = reply.code
        if code == 354:
            self._write_content(txn)
            return
        if code == 503:
            txn.answer(out_of_sequence(reply, _DATA), None, txn.accepted)
        else:
            txn.got_reply = True
            txn.answer(reply, _DATA, txn.accepted)
        self._done(txn)

    def _on_end(self, txn: Transaction, reply: Reply, count: int) -> None:
        stage = _BDAT if self.mode is CHUNKING else _DATA_END
        txn.data_sent = False  # the reply came: nobody is in doubt
        code = reply.code
        if code == 503:
            txn.answer(out_of_sequence(reply, stage), None, txn.accepted)
        else:
            txn.got_reply = True
            txn.answer(reply, stage, txn.accepted)
        if code >= 300 and stage is _BDAT:
            self.server_open = True  # RFC 3030: state indeterminate after a refused BDAT
        self._done(txn)

    def _done(self, txn: Transaction) -> None:
        txn.phase = DONE
        inflight = self.inflight
        if inflight and inflight[0] is txn:
            inflight.popleft()
        self._collect()

    def _collect(self) -> None:
        """Finished transactions at the head, in order, become results."""
        unreported = self._unreported
        finished = self.finished
        fallback = self._fallback
        while unreported and unreported[0].phase == DONE:
            txn = unreported.popleft()
            if txn.reached_server:
                self.transactions += 1
            finished.append(txn.result(fallback))
