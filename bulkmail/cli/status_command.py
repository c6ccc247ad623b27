"""``bulkmail status JOURNAL|URL [--watch]``: a job's progress, rate, and a
``qshape``-style table of what is still to send, by domain and age.

``JOURNAL`` is a ``send`` journal (``PATH``, ``sqlite:PATH``); ``URL`` a job
in the PostgreSQL store (``postgresql://...?job=ID``), which every worker of
the job writes to -- the job's totals, whatever machine sent them.

Read from the journal only (``open_journal``, no job lock: a running
``send`` keeps writing while this reads; SQLite's WAL lets both go on), so it
works during a run, after one, and from another terminal.  What the journal
knows during a run: final results (delivered, bounced, suppressed), and an
in-doubt mark for everyone whose message is being sent -- a recipient
waiting for a retry keeps that mark (with the reply that deferred it) until
it ends; at the end of a run the ones left are ``deferred``.  So the table's
rows are recipients *in flight or waiting* (in doubt) and *deferred*, and a
domain's "last deferral" is the latest 4xx the journal holds for it.

The age of a recipient is the time since its state last changed (the
journal keeps no arrival time), bucketed like Postfix's ``qshape``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..journal import Journal, JournalError, RecipientRecord, open_journal, sqlite_path
from ..results import Status
from .options import at_least, positive_duration

EXAMPLE = """\
example:
  bulkmail status .bulkmail/job-1f2e3d4c5b6a7980.sqlite --watch
"""

#: qshape's buckets: minutes since the state last changed (the last is "and older")
AGE_BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)
#: the window the current rate is measured over
RATE_WINDOW = 60.0
_WAITING = frozenset({Status.IN_DOUBT, Status.DEFERRED, Status.PENDING, Status.IN_FLIGHT})


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("journal", metavar="JOURNAL|URL",
                   help="a journal written by 'bulkmail send' (PATH or sqlite:PATH), or a"
                        " job in PostgreSQL (postgresql://...?job=ID)")
    p.add_argument("--watch", action="store_true", help="redraw until interrupted (Ctrl-C)")
    p.add_argument("--interval", type=positive_duration, default=2.0, metavar="DURATION",
                   help="with --watch: seconds between redraws (default 2s)")
    p.add_argument("--count", type=at_least(1), default=None, metavar="N",
                   help="with --watch: stop after N redraws")
    p.add_argument("--top", type=at_least(1), default=10, metavar="N",
                   help="domains shown (the rest are summed as '(others)'; default 10)")


@dataclass
class DomainRow:
    total: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(AGE_BUCKETS) + 1))
    #: (when, "451 4.7.1 text") of the latest deferral the journal holds
    last_deferral: tuple[float, str] | None = None


@dataclass
class JobStatus:
    counts: Counter[str] = field(default_factory=Counter)
    possible_duplicates: int = 0
    #: final results recorded within the last RATE_WINDOW seconds
    recent: int = 0
    first: float | None = None
    last: float | None = None
    domains: dict[str, DomainRow] = field(default_factory=dict)


def _bucket(age_seconds: float) -> int:
    minutes = age_seconds / 60
    for i, bound in enumerate(AGE_BUCKETS):
        if minutes < bound:
            return i
    return len(AGE_BUCKETS)


def _reason(record: RecipientRecord) -> str:
    parts = [str(record.code)]
    if record.enhanced:
        parts.append(record.enhanced)
    if record.reply:
        parts.append(record.reply.splitlines()[0])
    return " ".join(parts)


def collect(records: Iterable[RecipientRecord], now: float) -> JobStatus:
    """What the view shows, from every record of a journal."""
    status = JobStatus()
    for record in records:
        status.counts[record.status.value] += 1
        status.possible_duplicates += record.possible_duplicate
        updated = record.updated_at
        status.first = updated if status.first is None else min(status.first, updated)
        status.last = updated if status.last is None else max(status.last, updated)
        if record.status not in _WAITING:
            if now - updated <= RATE_WINDOW:
                status.recent += 1
            continue
        domain = record.address.rpartition("@")[2].lower()
        row = status.domains.get(domain)
        if row is None:
            row = status.domains[domain] = DomainRow()
        row.total += 1
        row.buckets[_bucket(now - updated)] += 1
        if record.code is not None and 400 <= record.code < 500 and (
            row.last_deferral is None or updated >= row.last_deferral[0]
        ):
            row.last_deferral = (updated, _reason(record))
    return status


def render(status: JobStatus, now: float, top: int, name: str) -> str:
    counts = status.counts
    total = sum(counts.values())
    final = sum(counts[s.value] for s in (Status.DELIVERED, Status.BOUNCED, Status.SUPPRESSED))
    waiting = sum(row.total for row in status.domains.values())
    lines = [f"job {name}  at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}"]
    lines.append(
        f"recorded {total:,}: " + ", ".join(
            f"{s.replace('_', ' ')} {counts[s]:,}" for s in
            ("delivered", "bounced", "suppressed", "deferred", "in_doubt") if counts[s]
        ) if total else "recorded 0: nothing sent yet"
    )
    # over the last minute, or since the first record if the job is younger
    window = RATE_WINDOW if status.first is None else min(RATE_WINDOW, max(1.0, now - status.first))
    rate = status.recent / window
    if status.first is not None and status.last is not None and status.last > status.first:
        overall = final / (status.last - status.first)
        lines.append(f"rate: {rate:,.1f}/s over the last {window:.0f}s,"
                     f" {overall:,.1f}/s since the first record; {final:,} final,"
                     f" {waiting:,} still to send")
    else:
        lines.append(f"rate: {rate:,.1f}/s; {final:,} final, {waiting:,} still to send")
    if status.possible_duplicates:
        lines.append(f"possible duplicates (flagged): {status.possible_duplicates:,}")
    lines.append("")
    if not status.domains:
        lines.append("nothing queued or deferred")
        return "\n".join(lines)
    lines.extend(_table(status, top))
    return "\n".join(lines)


def _sum(rows: list[tuple[str, DomainRow]]) -> DomainRow:
    """One row adding up ``rows`` (the TOTAL line, the "others" line)."""
    summed = DomainRow()
    for _, row in rows:
        summed.total += row.total
        summed.buckets = [a + b for a, b in zip(summed.buckets, row.buckets, strict=True)]
    return summed


def _table(status: JobStatus, top: int) -> list[str]:
    """qshape's layout: a row per domain, T then one column per age bucket."""
    heads = ["T", *(str(b) for b in AGE_BUCKETS), f"{AGE_BUCKETS[-1]}+"]
    ranked = sorted(status.domains.items(), key=lambda kv: (-kv[1].total, kv[0]))
    shown = ranked[:top]
    rest = ranked[top:]
    rows: list[tuple[str, DomainRow]] = [("TOTAL", _sum(ranked)), *shown]
    if rest:
        rows.append((f"({len(rest)} others)", _sum(rest)))
    width = max(12, *(len(name) for name, _ in rows))
    out = [f"{'':>{width}} " + " ".join(f"{h:>6}" for h in heads) + "   last deferral",
           f"{'':>{width}} {'':>6} minutes since the state last changed"]
    for name, row in rows:
        cells = [row.total, *row.buckets]
        reason = row.last_deferral[1] if row.last_deferral is not None else ""
        out.append(f"{name:>{width}} " + " ".join(f"{c:>6}" for c in cells)
                   + (f"   {reason[:60]}" if reason else ""))
    return out


def _open(location: str) -> Journal:
    if sqlite_path(location) is None:  # a job in the PostgreSQL store
        from ..store import open_pg_journal  # (psycopg only when asked for)

        return open_pg_journal(location)
    return open_journal(location)


def snapshot(location: str, top: int) -> str:
    journal = _open(location)
    try:
        now = time.time()
        return render(collect(journal.iter_records(), now), now, top, location)
    finally:
        journal.close()


def run(args: argparse.Namespace) -> int:
    path = sqlite_path(args.journal)
    if path is not None and not Path(path).is_file():
        print(f"bulkmail status: no journal at {path}", file=sys.stderr)
        return 2
    clear = args.watch and sys.stdout.isatty()
    shown = 0
    try:
        while True:
            text = snapshot(args.journal, args.top)
            if clear:
                sys.stdout.write("\x1b[H\x1b[2J")
            elif shown:
                print()
            print(text, flush=True)
            shown += 1
            if not args.watch or (args.count is not None and shown >= args.count):
                return 0
            time.sleep(args.interval)
    except JournalError as exc:  # (a StoreError is one: an unreachable database)
        print(f"bulkmail status: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
