"""One shard of a ``bulkmail send --processes N`` run: what a child process
needs that a single-process run does not.

A recipient belongs to shard ``crc32(key) % N``, ``key`` being the engine's
dedupe key (``local@domain`` with the domain lower-cased), so an address
listed twice lands in one shard and is still sent once.  Each shard has its
own SQLite journal (``JOURNAL.partK-of-N``) whose identity records N; the
connection caps and rates of every destination are divided among the
shards so that they hold in sum.  A child reports to its parent over a pipe,
one JSON object per line: ``counts`` (the progress), ``message`` (a line for
the user) and, last, ``outcome`` (its :class:`RunOutcome`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

from trio_util import periodic

from ..api import MailerConfig
from ..protocol.replies import Reply
from ..results import Status, Summary
from ..shaping import PoolLimits, Rule, Shaping
from .progress import Progress
from .send_run import RunOutcome

__all__ = [
    "PipeProgress",
    "Shard",
    "outcome_from_json",
    "outcome_to_json",
    "shard_path",
    "watch_parent",
]


def shard_path(base: str, index: int, count: int) -> str:
    """``base`` for shard ``index`` (0-based) of ``count``: ``base.part1-of-2``."""
    return f"{base}.part{index + 1}-of-{count}"


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def owns(self, address: str) -> bool:
        """Whether this shard sends to ``address`` (by the engine's dedupe key)."""
        plain = address.strip()
        at = plain.rfind("@") + 1  # 0 without one: then all of it, lower-cased
        key = plain[:at] + plain[at:].lower()
        return zlib.crc32(key.encode("utf-8", "surrogateescape")) % self.count == self.index

    def identity_fields(self) -> dict[str, str]:
        """Recorded in the shard's journal: a shard is never resumed as another."""
        return {"processes": str(self.count), "shard": f"{self.index + 1} of {self.count}"}

    def share(self, cap: int) -> int:
        """This shard's part of ``cap`` connections: the parts add up to ``cap``
        (the parent never starts more shards than the smallest cap)."""
        return max(1, cap // self.count + (1 if self.index < cap % self.count else 0))

    def divide(self, config: MailerConfig) -> MailerConfig:
        """``config`` with every connection cap and rate divided among the shards."""

        def part(limits: PoolLimits) -> PoolLimits:
            rate = limits.rate / self.count if limits.rate is not None else None
            return dataclasses.replace(limits, connections=self.share(limits.connections),
                                       rate=rate)

        shaping = None
        if config.shaping is not None:
            shaping = Shaping(part(config.shaping.default),
                              tuple(Rule(r.pattern, part(r.limits)) for r in config.shaping.rules))
        return dataclasses.replace(
            config, limits=part(config.limits), shaping=shaping,
            total_connections=self.share(config.total_connections),
        )


def smallest_cap(config: MailerConfig) -> int:
    """The lowest connection cap any destination has: at most that many shards."""
    caps = [config.limits.connections, config.total_connections]
    if config.shaping is not None:
        caps.append(config.shaping.default.connections)
        caps += [r.limits.connections for r in config.shaping.rules]
    return min(caps)


class PipeProgress(Progress):
    """A child's progress: counts and messages go up the pipe to the parent,
    which draws the one progress line for every shard."""

    def __init__(self, fd: int) -> None:
        super().__init__(enabled=True, total=None)
        self._fd: int | None = fd

    def send(self, obj: dict[str, Any]) -> None:
        """One JSON line to the parent; a parent gone is not an error (it was
        killed: the liveness watch stops this run)."""
        if self._fd is None:
            return
        data = memoryview((json.dumps(obj) + "\n").encode())
        try:
            while data:  # an outcome can be longer than a pipe writes at once
                data = data[os.write(self._fd, data):]
        except OSError:
            self._fd = None

    def message(self, text: str) -> None:
        self.send({"message": text})

    def report_counts(self) -> None:
        self.send({"counts": {s.value: n for s, n in self.counts.items()}})

    async def run(self) -> None:
        async for _ in periodic(0.25):
            self.report_counts()

    def close(self) -> None:
        self.report_counts()


def watch_parent(fd: int) -> None:
    """Stop this run (as a first SIGTERM does) when the parent dies: its end of
    the pipe ``fd`` closes, however it died (SIGKILL included).  The parent
    keeps it open and never writes to it.  (A raw ``os.read``: a daemon thread
    blocked in a buffered file's read aborts the interpreter at exit.)"""

    def wait_for_eof() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait_for_eof, name="parent-watch", daemon=True).start()


def outcome_to_json(run: RunOutcome, status: int) -> dict[str, Any]:
    s = run.summary
    aborted = s.aborted
    return {"outcome": {
        "status": status,
        "summary": {
            "delivered": s.delivered, "bounced": s.bounced, "deferred": s.deferred,
            "suppressed": s.suppressed, "in_doubt": s.in_doubt,
            "possible_duplicates": s.possible_duplicates, "elapsed": s.elapsed,
            "codes": dict(s.codes), "domains": dict(s.domains),
            "aborted": None if aborted is None else
            [aborted.code, list(aborted.lines), aborted.enhanced],
        },
        "stopped": run.stopped, "cancelled": run.cancelled, "input_left": run.input_left,
        "failure": run.failure, "already_final": run.resume.already_final,
        "refused": run.refused, "classes": [[s_, c, n] for (s_, c), n in run.classes.items()],
        "suppressions_added": run.suppressions_added,
    }}


def outcome_from_json(data: dict[str, Any]) -> tuple[RunOutcome, int]:
    """A child's outcome and exit status, as :func:`outcome_to_json` wrote them."""
    s = data["summary"]
    aborted = s["aborted"]
    summary = Summary(
        delivered=s["delivered"], bounced=s["bounced"], deferred=s["deferred"],
        suppressed=s["suppressed"], in_doubt=s["in_doubt"],
        possible_duplicates=s["possible_duplicates"], elapsed=s["elapsed"],
        codes=Counter(s["codes"]), domains=Counter(s["domains"]),
        aborted=None if aborted is None else Reply(aborted[0], tuple(aborted[1]), aborted[2]),
    )
    run = RunOutcome(summary=summary, stopped=data["stopped"], cancelled=data["cancelled"],
                     input_left=data["input_left"], failure=data["failure"],
                     refused=data["refused"], suppressions_added=data["suppressions_added"],
                     classes=Counter({(st, c): n for st, c, n in data["classes"]}))
    run.resume.already_final = data["already_final"]
    return run, int(data["status"])


def counts_of(data: dict[str, int]) -> dict[Status, int]:
    return {Status(k): v for k, v in data.items()}
