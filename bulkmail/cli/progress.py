"""Progress for long runs: a live bar on a terminal, a plain line every few
seconds otherwise (logs, CI), nothing with ``--quiet``.  Written to stderr so
stdout stays clean for scripts.

The total is the number of recipients the run will report on -- what
:func:`count_recipients` finds in the file, not its lines -- and the last
line, drawn when the run ends, shows the same counts as the summary.

A destination that cannot be reached (a down or mistyped relay) is shown at
once -- a line is drawn as soon as the engine reports the failure, not at the
next tick -- with its error, failed attempts and next try, until a delivery
shows the run moving again; :attr:`Progress.unreachable` keeps the last
failure per destination for the summary.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

import trio

from ..delivery.connector import ConnectionFailure
from ..results import Result, Status
from .inputs import InputError, read_recipients


def count_recipients(path: str) -> int | None:
    """How many recipients ``path`` holds as the run will see them: no CSV
    header, blank lines or comments, and an address listed twice counted
    once (the engine sends it once).  None for stdin or an unreadable file.

    A pass over the file before sending (about 2 s per million recipients,
    measured on a busy 2-core machine); only hashes of the addresses are
    kept, so a million cost tens of megabytes, briefly.
    """
    if path == "-":
        return None
    seen: set[int] = set()
    try:
        for recipient in read_recipients(path):
            local, at, domain = recipient.address.strip().rpartition("@")
            seen.add(hash(f"{local}@{domain.lower()}" if at else domain))
    except (InputError, OSError, UnicodeError, ValueError):
        return None
    return len(seen)


#: destinations remembered for the summary (an MX run may have thousands failing)
MAX_UNREACHABLE = 1000
#: a failure draws a line at once, but not more often than this (seconds)
MIN_GAP = 1.0
# hot-path enum members as module globals (see protocol/connection.py)
_DELIVERED = Status.DELIVERED


class Progress:
    def __init__(self, *, enabled: bool, total: int | None, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.counts = dict.fromkeys(Status, 0)
        self.done = 0
        self.started = time.monotonic()
        self._last_line = ""
        self._lines_shown = 0
        #: the last connection failure per destination key, for the summary
        self.unreachable: dict[str, ConnectionFailure] = {}
        #: the latest failure and when it came (monotonic), shown until a delivery
        self._failure: tuple[ConnectionFailure, float] | None = None
        self._wake = trio.Event()

    def add(self, result: Result) -> None:
        self.add_all((result,))

    def add_all(self, results: Sequence[Result]) -> None:
        counts = self.counts
        delivered = counts[_DELIVERED]
        for result in results:
            counts[result.status] += 1
        self.done += len(results)
        if self._failure is not None and counts[_DELIVERED] > delivered:
            self._failure = None  # moving again: the failure line goes

    def connection_failed(self, failure: ConnectionFailure) -> None:
        """The engine's :class:`ConnectionFailure` observer: remember it, draw now."""
        if failure.destination in self.unreachable or len(self.unreachable) < MAX_UNREACHABLE:
            self.unreachable[failure.destination] = failure
        self._failure = (failure, time.monotonic())
        self._wake.set()

    def message(self, text: str) -> None:
        if self.enabled:
            self._clear()
            print(text, file=self.stream, flush=True)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        c = self.counts
        counts = (
            f"delivered {c[Status.DELIVERED]:,}  bounced {c[Status.BOUNCED]:,}"
            f"  deferred {c[Status.DEFERRED]:,}  suppressed {c[Status.SUPPRESSED]:,}"
        )
        if self.total:
            share = min(1.0, self.done / self.total)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta_text = f"{eta:,.0f}s" if eta != float("inf") else "?"
            width = 24
            filled = int(share * width)
            bar = "#" * filled + "-" * (width - filled) if self.tty else ""
            head = f"[{bar}] " if bar else ""
            done = f"{self.done:,}/{self.total:,}"
            text = f"{head}{share:6.1%} {done}  {counts}  {rate:,.0f}/s  ETA {eta_text}"
        else:
            text = f"{self.done:,} done  {counts}  {rate:,.0f}/s"
        return text + self._failure_text()

    def _failure_text(self) -> str:
        """``  | cannot reach relay:host:25: 451 4.4.1 ... (3 failed, next try in 4s)``"""
        if self._failure is None:
            return ""
        failure, at = self._failure
        next_try = max(0.0, failure.next_try - (time.monotonic() - at))
        attempts = f"{failure.failures} failed attempt{'s' if failure.failures != 1 else ''}"
        return (f"  | cannot reach {failure.destination}: {failure.reply}"
                f" ({attempts}, next try in {next_try:.0f}s)")

    def _fit(self, text: str) -> str:
        """One screen line: a wrapped line cannot be redrawn with ``\\r``.  Only
        a failure's text is cut, never the counts."""
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return text
        if width <= 0 or len(text) < width:
            return text
        suffix = self._failure_text()
        keep = max(len(text) - len(suffix), width - 1)
        return text[:keep]

    def _clear(self) -> None:
        if self.tty and self._last_line:
            self.stream.write("\r" + " " * len(self._last_line) + "\r")
            self._last_line = ""

    async def run(self) -> None:
        if not self.enabled:
            return
        interval = 0.25 if self.tty else 5.0
        while True:
            # a tick, or a connection failure to show now (at most one per MIN_GAP)
            with trio.move_on_after(interval):
                await self._wake.wait()
            woken = self._wake.is_set()
            self._wake = trio.Event()
            self._show()
            if woken:
                await trio.sleep(MIN_GAP)

    def _show(self) -> None:
        text = self.line()
        if self.tty:
            text = self._fit(text)
            self.stream.write("\r" + text.ljust(len(self._last_line)))
            self.stream.flush()
            self._last_line = text
        else:
            print(text, file=self.stream, flush=True)
        self._lines_shown += 1

    def close(self) -> None:
        """The final state, once: on a terminal always (the bar ends at N/N),
        in a log only if progress lines were written -- the last line then
        agrees with the summary that follows, even when a stopped run's last
        results arrived after the last tick."""
        if not self.enabled or not (self.tty or self._lines_shown):
            return
        self._show()
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
            self._last_line = ""
        self._lines_shown = 0
