"""``bulkmail status JOURNAL|URL [--watch]``: a job's progress, rate, and a
``qshape``-style table of what is still to send, by domain and age.

``JOURNAL`` is a ``send`` journal (``PATH``, ``sqlite:PATH``); ``URL`` a job
in the PostgreSQL store (``postgresql://...?job=ID``), which every worker of
the job writes to -- the job's totals, whatever machine sent them.

Read from the journal only (``open_journal``, no job lock: a running
``send`` keeps writing while this reads; SQLite's WAL lets both go on), so it
works during a run, after one, and from another terminal.  What the journal
knows during a run: final results (delivered, bounced, suppressed); an
in-doubt mark for everyone whose end of data is being sent (or was, and no
reply is recorded: after a crash, or a lost connection); and, for everyone
who got a temporary failure and waits for a retry, ``deferred`` with the
reply and the retry's time.  At the end of a run the ones left are
``deferred`` without a retry time.  So the table's rows are recipients still
to send, split into deferred and in doubt, and a domain's "last deferral"
is the latest 4xx the journal holds for it.  One not yet tried has no row
in a ``send`` journal (a PostgreSQL job lists it as pending).

A SQLite journal is summed in SQL (``SQLiteJournal.tally`` and ``waiting``:
two scans in SQLite's C, not a Python object per record), and ``--watch``
keeps it open between redraws; other journals (PostgreSQL) are read record
by record.  The age of a recipient is the time since its state last changed
(the journal keeps no arrival time), bucketed like Postfix's ``qshape``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..journal import (
    Journal,
    JournalError,
    RecipientRecord,
    SQLiteJournal,
    existing_sqlite_path,
    open_journal,
    sqlite_path,
)
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
    #: of ``total``: waiting for a retry (or left deferred), and in doubt
    deferred: int = 0
    in_doubt: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(AGE_BUCKETS) + 1))
    #: (when, "451 4.7.1 text") of the latest deferral the journal holds
    last_deferral: tuple[float, str] | None = None

    def add(self, status: Status, minutes: float, count: int = 1) -> None:
        self.total += count
        if status is Status.DEFERRED:
            self.deferred += count
        elif status is Status.IN_DOUBT:
            self.in_doubt += count
        self.buckets[_bucket(minutes)] += count

    def deferral(self, when: float, reason: str) -> None:
        if self.last_deferral is None or when >= self.last_deferral[0]:
            self.last_deferral = (when, reason)


@dataclass
class JobStatus:
    counts: Counter[str] = field(default_factory=Counter)
    possible_duplicates: int = 0
    #: final results recorded within the last RATE_WINDOW seconds
    recent: int = 0
    first: float | None = None
    last: float | None = None
    #: the earliest retry time of the deferred recipients (None: none scheduled)
    next_retry: float | None = None
    domains: dict[str, DomainRow] = field(default_factory=dict)

    def seen(self, first: float, last: float) -> None:
        self.first = first if self.first is None else min(self.first, first)
        self.last = last if self.last is None else max(self.last, last)

    def retry_at(self, when: float | None) -> None:
        if when is not None and (self.next_retry is None or when < self.next_retry):
            self.next_retry = when

    def row(self, domain: str) -> DomainRow:
        row = self.domains.get(domain)
        if row is None:
            row = self.domains[domain] = DomainRow()
        return row


def _bucket(minutes: float) -> int:
    for i, bound in enumerate(AGE_BUCKETS):
        if minutes < bound:
            return i
    return len(AGE_BUCKETS)


def _reason(code: int, enhanced: str | None, reply: str | None) -> str:
    parts = [str(code)]
    if enhanced:
        parts.append(enhanced)
    if reply:
        parts.append(reply.splitlines()[0])
    return " ".join(parts)


def collect(records: Iterable[RecipientRecord], now: float) -> JobStatus:
    """What the view shows, from every record of a journal (any journal)."""
    status = JobStatus()
    for record in records:
        status.counts[record.status.value] += 1
        status.possible_duplicates += record.possible_duplicate
        updated = record.updated_at
        status.seen(updated, updated)
        if record.status not in _WAITING:
            if now - updated <= RATE_WINDOW:
                status.recent += 1
            continue
        if record.status is Status.DEFERRED:
            status.retry_at(record.next_attempt)
        row = status.row(record.address.rpartition("@")[2].lower())
        row.add(record.status, (now - updated) / 60)
        if record.code is not None and 400 <= record.code < 500:
            row.deferral(updated, _reason(record.code, record.enhanced, record.reply))
    return status


def summed(journal: SQLiteJournal, now: float) -> JobStatus:
    """The same as :func:`collect`, summed by SQLite: a few rows per domain and
    minute of age, whatever the number of records."""
    status = JobStatus()
    for state, n, flagged, first, last, recent, due in journal.tally(now - RATE_WINDOW):
        status.counts[state.value] += n
        status.possible_duplicates += flagged
        status.seen(first, last)
        if state not in _WAITING:
            status.recent += recent
        elif state is Status.DEFERRED:
            status.retry_at(due)
    for domain, state, minutes, n, at, code, enhanced, reply in journal.waiting(
        sorted(_WAITING, key=lambda s: s.value), now
    ):
        row = status.row(domain)
        row.add(state, minutes, n)
        if at is not None and code is not None:
            row.deferral(at, _reason(code, enhanced, reply))
    return status


def _ago(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


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
    if waiting:
        lines.append(f"still to send {waiting:,}: " + ", ".join(_waiting(status, now)))
    if status.possible_duplicates:
        lines.append(f"possible duplicates (flagged): {status.possible_duplicates:,}")
    lines.append("")
    if not status.domains:
        lines.append("nothing queued or deferred")
        return "\n".join(lines)
    lines.extend(_table(status, top))
    return "\n".join(lines)


def _waiting(status: JobStatus, now: float) -> list[str]:
    """What "still to send" is made of: deferred (and when the next retry is
    due) told apart from in doubt."""
    counts = status.counts
    parts: list[str] = []
    deferred = counts[Status.DEFERRED.value]
    if deferred:
        due = status.next_retry
        if due is None:
            when = "no retry scheduled: the run ended; a rerun retries them"
        elif due >= now:
            when = f"retry scheduled, the earliest in {_ago(due - now)}"
        else:
            when = f"retry scheduled, the earliest was due {_ago(now - due)} ago"
        parts.append(f"deferred {deferred:,} ({when})")
    if counts[Status.IN_DOUBT.value]:
        parts.append(f"in doubt {counts[Status.IN_DOUBT.value]:,}"
                     " (end of data sent, no reply recorded yet)")
    for state in (Status.PENDING, Status.IN_FLIGHT):  # (a job in PostgreSQL)
        if counts[state.value]:
            parts.append(f"{state.value.replace('_', ' ')} {counts[state.value]:,}")
    return parts


def _sum(rows: list[tuple[str, DomainRow]]) -> DomainRow:
    """One row adding up ``rows`` (the TOTAL line, the "others" line)."""
    summed = DomainRow()
    for _, row in rows:
        summed.total += row.total
        summed.deferred += row.deferred
        summed.in_doubt += row.in_doubt
        summed.buckets = [a + b for a, b in zip(summed.buckets, row.buckets, strict=True)]
    return summed


def _table(status: JobStatus, top: int) -> list[str]:
    """qshape's layout: a row per domain, T then one column per age bucket."""
    heads = ["T", "defer", "doubt", *(str(b) for b in AGE_BUCKETS), f"{AGE_BUCKETS[-1]}+"]
    ranked = sorted(status.domains.items(), key=lambda kv: (-kv[1].total, kv[0]))
    shown = ranked[:top]
    rest = ranked[top:]
    rows: list[tuple[str, DomainRow]] = [("TOTAL", _sum(ranked)), *shown]
    if rest:
        rows.append((f"({len(rest)} others)", _sum(rest)))
    width = max(12, *(len(name) for name, _ in rows))
    out = [f"{'':>{width}} " + " ".join(f"{h:>6}" for h in heads) + "   last deferral",
           f"{'':>{width}} {'':>6} {'':>6} {'':>6} minutes since the state last changed"]
    for name, row in rows:
        cells = [row.total, row.deferred, row.in_doubt, *row.buckets]
        reason = row.last_deferral[1] if row.last_deferral is not None else ""
        out.append(f"{name:>{width}} " + " ".join(f"{c:>6}" for c in cells)
                   + (f"   {reason[:60]}" if reason else ""))
    return out


def _open(location: str) -> Journal:
    if sqlite_path(location) is None:  # a job in the PostgreSQL store
        from ..store import open_pg_journal  # (psycopg only when asked for)

        return open_pg_journal(location)
    return open_journal(location)


def snapshot(journal: Journal, top: int, name: str) -> str:
    """One redraw: summed in SQL for a SQLite journal, else from every record."""
    now = time.time()
    if isinstance(journal, SQLiteJournal):
        status = summed(journal, now)
    else:
        status = collect(journal.iter_records(), now)
    return render(status, now, top, name)


def run(args: argparse.Namespace) -> int:
    try:
        existing_sqlite_path(args.journal)  # reading: never creates one
    except JournalError as exc:
        print(f"bulkmail status: {exc}", file=sys.stderr)
        return 2
    clear = args.watch and sys.stdout.isatty()
    shown = 0
    try:
        # opened once: opening checks the whole file (quick_check), a redraw need not
        journal = _open(args.journal)
    except JournalError as exc:  # (a StoreError is one: an unreachable database)
        print(f"bulkmail status: {exc}", file=sys.stderr)
        return 2
    try:
        while True:
            text = snapshot(journal, args.top, args.journal)
            if clear:
                sys.stdout.write("\x1b[H\x1b[2J")
            elif shown:
                print()
            print(text, flush=True)
            shown += 1
            if not args.watch or (args.count is not None and shown >= args.count):
                return 0
            time.sleep(args.interval)
    except JournalError as exc:
        print(f"bulkmail status: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        journal.close()
