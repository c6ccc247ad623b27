"""``bulkmail send --processes N``: one job worked by N child processes, each
a whole ``send`` run on its shard of the list (``send_shard.py``), with one
progress line, one report and one summary here in the parent.

Why shards and not N workers on one SQLite store (argued, not measured):
SQLite has one writer at a time, and the in-doubt marks are durable commits
every session waits for; shards share nothing, so each child keeps the
single run's resume rules (its journal, lock, in-doubt marks) unchanged, and
killing any process loses nothing a single run would not.  Each child reads
the list itself and keeps its shard: parsing is parallel and no recipient
crosses a pipe (measured: 0.3-0.6 s a process per 100,000 lines on a busy
machine, against ~25 s for sending them; see README).

Stops: a signal to the parent is forwarded to every child (the children run
in their own sessions, so a terminal's Ctrl-C reaches them once, through the
parent).  The parent's death closes the pipe each child watches
(:func:`send_shard.watch_parent`): the child stops as on a first SIGTERM.
A child that dies leaves its shard journal as a killed single run would;
the parent reports it not finished (exit 75) and a rerun resumes it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ..api import MailerConfig
from ..journal import JobIdentity, JobLock, sqlite_path
from ..results import Status, Summary
from .inputs import InputError
from .progress import Progress, count_recipients
from .send_job import default_journal
from .send_run import RunOutcome
from .send_shard import Shard, counts_of, outcome_from_json, shard_path, smallest_cap

__all__ = ["check_sharding", "journal_display", "plan_processes", "run_processes"]

EX_USAGE = 2


def base_journal(args: argparse.Namespace, identity: JobIdentity) -> str | None:
    """The journal a single-process run would use; shards are named after it."""
    if args.no_journal:
        return None
    return str(args.journal or default_journal(identity))


def plan_processes(args: argparse.Namespace, config: MailerConfig) -> int:
    """How many processes to start: ``--processes``, but never more than the
    smallest connection cap (each process needs one connection per
    destination, and the caps must hold in sum)."""
    if args.recipients == "-":
        raise InputError("--processes needs --recipients from a file (each process reads it)")
    if args.journal and sqlite_path(args.journal) is None:
        raise InputError("--processes works with SQLite journals only")
    cap = smallest_cap(config)
    if args.processes > cap:
        if not args.quiet:
            print(f"bulkmail send: --processes {args.processes} lowered to {cap}: a destination's"
                  f" connection cap is {cap}, and each process needs one", file=sys.stderr)
        return cap
    return int(args.processes)


_PART = re.compile(r"\.part(\d+)-of-(\d+)$")


def check_sharding(args: argparse.Namespace, identity: JobIdentity, processes: int) -> None:
    """Refuse to resume a job with another process count than it began with:
    its recipients are spread over journals by that count."""
    base = base_journal(args, identity)
    if base is None or sqlite_path(base) is None:
        return
    path = Path(sqlite_path(base) or base)
    counts = set()
    if path.parent.is_dir():
        for part in path.parent.glob(path.name + ".part*-of-*"):
            m = _PART.search(part.name)
            if m and part.name == path.name + m.group(0):
                counts.add(int(m.group(2)))
    begun = None
    if processes > 1 and path.exists():
        begun = 1
    elif counts - {processes}:
        begun = min(counts - {processes})
    if begun is not None:
        raise InputError(
            f"journal {base} was begun with --processes {begun}: run with --processes {begun}"
            f" to resume it, or delete {'it' if begun == 1 else 'its parts'} to start again")


def journal_display(args: argparse.Namespace, identity: JobIdentity, n: int) -> str | None:
    base = base_journal(args, identity)
    return None if base is None else f"{base}.part{{1..{n}}}-of-{n}"


@dataclass
class Child:
    shard: Shard
    proc: subprocess.Popen[bytes]
    pipe: int
    counts: dict[Status, int] = field(default_factory=dict)
    outcome: RunOutcome | None = None
    status: int | None = None


def run_processes(
    args: argparse.Namespace, identity: JobIdentity, n: int
) -> tuple[RunOutcome, list[int]]:
    """Run the job in ``n`` children; their merged outcome and exit statuses."""
    base = base_journal(args, identity)
    with contextlib.ExitStack() as stack:
        if base is not None:
            # one parent per job, and no single-process run beside it
            path = Path(sqlite_path(base) or base)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"cannot create {path.parent}: {exc.strerror}") from exc
            stack.enter_context(JobLock(path))
        total = None if args.quiet else count_recipients(args.recipients)
        children = [_spawn(args, base, Shard(k, n)) for k in range(n)]
        for child in children:
            stack.callback(_reap, child)
        trio.run(_supervise, args, children, total)
        if args.report:
            _join_reports(args.report, n)
        return _merged(children), [c.status if c.status is not None else -1 for c in children]


def combined_status(finished: int, statuses: list[int]) -> int:
    """``send``'s status from the merged outcome's and every child's."""
    if EX_USAGE in statuses:
        return EX_USAGE
    if finished == 0 and any(statuses):
        return 75
    return finished


def _spawn(args: argparse.Namespace, base: str | None, shard: Shard) -> Child:
    child_args = copy.copy(args)
    child_args.processes = 1
    child_args.shard = shard
    child_args.journal = None if base is None else shard_path(base, shard.index, shard.count)
    child_args.report = (None if not args.report
                         else shard_path(args.report, shard.index, shard.count))
    read_end, write_end = os.pipe()
    child_args.progress_fd = write_end
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulkmail.cli.send_child"],
        stdin=subprocess.PIPE, pass_fds=(write_end,), start_new_session=True,
    )
    os.close(write_end)
    assert proc.stdin is not None
    # the arguments, then the pipe stays open: its end tells the child we died
    proc.stdin.write(pickle.dumps(child_args))
    proc.stdin.flush()
    return Child(shard, proc, read_end)


def _reap(child: Child) -> None:
    """Wait for a child; on the way out of a failed supervision, first tell it
    to stop (its parent-watch pipe closes) and stop reading it (so it cannot
    block writing to us)."""
    if child.pipe >= 0:
        os.close(child.pipe)
        child.pipe = -1
    if child.proc.stdin is not None:
        with contextlib.suppress(OSError):
            child.proc.stdin.close()
    child.proc.wait()


async def _supervise(args: argparse.Namespace, children: list[Child], total: int | None) -> None:
    progress = Progress(enabled=not args.quiet, total=total)
    seen: set[str] = set()

    def on_line(child: Child, obj: dict[str, Any]) -> None:
        if "counts" in obj:
            child.counts = counts_of(obj["counts"])
            summed: Counter[Status] = Counter()
            for c in children:
                summed.update(c.counts)
            progress.counts = {s: summed[s] for s in Status}
            progress.done = sum(summed.values())
        elif "message" in obj:
            if obj["message"] not in seen:
                seen.add(obj["message"])
                progress.message(obj["message"])
        elif "outcome" in obj:
            child.outcome, child.status = outcome_from_json(obj["outcome"])

    async def follow(child: Child) -> None:
        buffer = bytearray()
        try:
            async with trio.lowlevel.FdStream(child.pipe) as stream:
                while chunk := await stream.receive_some(65536):
                    buffer += chunk
                    if b"\n" not in chunk:  # a long outcome (many domains) arrives in parts
                        continue
                    *lines, rest = buffer.split(b"\n")
                    buffer = rest
                    for line in lines:
                        on_line(child, json.loads(line))
        finally:
            child.pipe = -1  # closed by the stream
        code = await trio.to_thread.run_sync(child.proc.wait)
        if child.status is None:
            child.status = code

    async def forward_signals() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                for c in children:
                    if c.proc.returncode is None:
                        with contextlib.suppress(ProcessLookupError):
                            c.proc.send_signal(signum)

    try:
        async with trio.open_nursery() as outer:
            outer.start_soon(forward_signals)
            outer.start_soon(progress.run)
            async with trio.open_nursery() as nursery:
                for child in children:
                    nursery.start_soon(follow, child)
            outer.cancel_scope.cancel()
    finally:
        progress.close()


def _merged(children: list[Child]) -> RunOutcome:
    merged = RunOutcome()
    failures = []
    for child in children:
        part = child.outcome
        if part is None:
            failures.append(_not_finished(child))
            c = child.counts
            part = RunOutcome(summary=Summary(
                delivered=c.get(Status.DELIVERED, 0), bounced=c.get(Status.BOUNCED, 0),
                deferred=c.get(Status.DEFERRED, 0), suppressed=c.get(Status.SUPPRESSED, 0),
                in_doubt=c.get(Status.IN_DOUBT, 0)), input_left=True)
        elif part.failure is not None:
            failures.append(part.failure)
        merged.summary.merge(part.summary)
        merged.summary.elapsed = max(merged.summary.elapsed, part.summary.elapsed)
        merged.summary.aborted = merged.summary.aborted or part.summary.aborted
        merged.stopped |= part.stopped
        merged.cancelled |= part.cancelled
        merged.input_left |= part.input_left
        merged.resume.already_final += part.resume.already_final
        merged.refused += part.refused
        merged.classes.update(part.classes)
        merged.suppressions_added += part.suppressions_added
    if failures:
        merged.failure = "; ".join(dict.fromkeys(failures))
    return merged


def _not_finished(child: Child) -> str:
    code = child.status
    how = (f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0
           else f"exited with status {code}")
    return (f"process {child.shard.index + 1} of {child.shard.count} (pid {child.proc.pid}) {how}"
            " before it finished: run the same command again to resume its recipients")


def _join_reports(report: str, n: int) -> None:
    """The children's reports, one after the other, as the one ``--report``."""
    with open(report, "wb") as out:
        for k in range(n):
            part = shard_path(report, k, n)
            with contextlib.suppress(FileNotFoundError):
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out)
                os.unlink(part)
