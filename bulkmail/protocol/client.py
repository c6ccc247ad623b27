"""The client side of one SMTP connection as a pure state machine.

It keeps the FIFO of commands awaiting replies -- the one thing that makes
PIPELINING (RFC 2920) correct: every reply is paired with the command it
answers, in order, and a reply that answers nothing, or one that cannot answer
the command at the head of the queue (a stray ``221`` among RCPT replies), is a
:class:`RemoteProtocolError` rather than a silent mis-pairing.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from itertools import repeat

from .errors import RemoteProtocolError
from .replies import DEFAULT_MAX_LINE_LENGTH, DEFAULT_MAX_LINES, Reply, ReplyParser


class Stage(Enum):
    """What a reply answers; also selects the RFC 5321 §4.5.3.2 timeout."""

    GREETING = "greeting"
    EHLO = "ehlo"
    HELO = "helo"
    STARTTLS = "starttls"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    DATA_END = "data_end"
    BDAT = "bdat"
    RSET = "rset"
    NOOP = "noop"
    VRFY = "vrfy"
    EXPN = "expn"
    QUIT = "quit"

    # Members are singletons: identity hashing is exact, and it is C code --
    # Enum's own __hash__ is a Python call, 7 per message in dict lookups
    # (reply handlers, stage timeouts) on the hot path.
    __hash__ = object.__hash__


#: Codes that only make sense as the answer to particular commands.  Anything
#: else in the 2xx/4xx/5xx range is accepted everywhere (servers vary widely);
#: 3xx only where listed (``ClientProtocol.next_reply`` applies this).
_ONLY_FOR: dict[int, frozenset[Stage]] = {
    220: frozenset({Stage.GREETING, Stage.STARTTLS}),
    221: frozenset({Stage.QUIT}),
    334: frozenset({Stage.AUTH}),
    354: frozenset({Stage.DATA}),
}


class ClientProtocol:
    """Pairs replies with the commands that were sent, in order.

    ``expect(stage)`` is called for every command (or end of data) written;
    ``receive_data`` feeds what the socket returned; ``next_reply`` yields
    ``(stage, reply)`` pairs or ``None`` when more bytes are needed.
    """

    __slots__ = ("_parser", "_pending")

    def __init__(
        self,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_lines: int = DEFAULT_MAX_LINES,
    ) -> None:
        self._parser = ReplyParser(max_line_length, max_lines)
        self._pending: deque[Stage] = deque([Stage.GREETING])

    @property
    def awaiting(self) -> int:
        """Number of replies still owed by the server."""
        return len(self._pending)

    @property
    def pending(self) -> deque[Stage]:
        """The owed commands, oldest first: one deque for the protocol's life."""
        return self._pending

    @property
    def expected(self) -> Stage | None:
        """What the next reply must answer, or None when nothing is owed."""
        return self._pending[0] if self._pending else None

    @property
    def has_unsolicited_data(self) -> bool:
        """Bytes arrived while no reply was owed (e.g. after ``220`` to STARTTLS)."""
        return not self._pending and self._parser.in_progress

    def expect(self, stage: Stage, count: int = 1) -> None:
        """Register that ``count`` commands of ``stage`` are being sent (a
        transaction's RCPTs: many at once).

        Data that arrived while nothing was owed is a server speaking out of
        turn -- the STARTTLS injection family of bugs -- and aborts.
        """
        if not self._pending and self._parser.in_progress:  # has_unsolicited_data, inline
            raise RemoteProtocolError("server sent data before the command it would answer")
        if count == 1:
            self._pending.append(stage)
        else:
            self._pending.extend(repeat(stage, count))

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the server; ``b""`` means it closed the connection."""
        self._parser.feed(data)

    def next_reply(self) -> tuple[Stage, Reply] | None:
        reply = self._parser.next_reply()
        if reply is None:
            return None
        if not self._pending:
            raise RemoteProtocolError(f"reply without a command: {reply}", str(reply).encode())
        stage = self._pending[0]
        code = reply.code
        only = _ONLY_FOR.get(code)  # (inline: this runs for every reply)
        if code != 421 and (300 <= code < 400 if only is None else stage not in only):
            raise RemoteProtocolError(
                f"reply {reply.code} cannot answer {stage.value.upper()}", str(reply).encode()
            )
        self._pending.popleft()
        return stage, reply

    def take_repeats(self, stage: Stage, limit: int) -> int:
        """After ``next_reply``: consume up to ``limit`` buffered copies of that
        same reply, each answering the next owed command if it is of ``stage``."""
        pending = self._pending
        owed = 0
        for owed_stage in pending:
            if owed_stage is not stage or owed == limit:
                break
            owed += 1
        n = self._parser.take_repeats(owed)
        for _ in range(n):
            pending.popleft()
        return n

    def clear_pending(self) -> None:
        """Forget owed replies (after a 421 the server owes nothing more)."""
        self._pending.clear()
