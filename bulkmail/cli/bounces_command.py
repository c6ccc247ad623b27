"""``bulkmail bounces``: read DSNs (RFC 3464) that came back after a run, mark
their recipients bounced in the journal and add them to the suppression list.

Every file is read; one that is not a usable DSN (an autoreply, a truncated
report) is listed with the reason and the others are still recorded.  Each
bounce gets its class (:mod:`bulkmail.bounce_class`); with ``--store``, those of
the hard classes are added to the suppression store.  Exit status: 0 when every
file was understood, 1 when some were skipped or only partly read, 2 for usage
errors (no journal, unusable store).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..bounce_class import DEFAULT_SUPPRESS, RulesError, classify_diagnostic, parse_classes
from ..dsn import BounceReport, read_dsn
from ..journal import JournalError, SQLiteJournal, StateChange, existing_sqlite_path
from ..journals import open_any_journal
from ..results import Status
from ..store import PgJournal
from ..suppression import Suppression, SuppressionError, SuppressionStore

EX_OK, EX_SKIPPED, EX_USAGE = 0, 1, 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dsn", nargs="+", metavar="FILE", help="bounce messages (RFC 5322 files)")
    p.add_argument("--journal", required=True,
                   help="the run's journal (a file, or postgresql://...?job=ID)")
    p.add_argument("--suppress", metavar="FILE",
                   help="append hard-bounced addresses here (each once)")
    p.add_argument("--verp-sender", metavar="ADDR",
                   help="the run's sender, to map VERP bounce addresses back to recipients")
    p.add_argument("--store", metavar="PATH",
                   help="suppression store (SQLite): add bounces of the --suppress-classes")
    p.add_argument("--suppress-classes", metavar="LIST",
                   default=",".join(sorted(DEFAULT_SUPPRESS)),
                   help="bounce classes that suppress (comma-separated; default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    try:
        journal_file = existing_sqlite_path(args.journal)  # None: a job in PostgreSQL
    except JournalError as exc:
        print(f"bulkmail bounces: {exc}", file=sys.stderr)
        return EX_USAGE
    if journal_file is not None:
        args.journal = journal_file
    try:
        classes = parse_classes(args.suppress_classes)
    except RulesError as exc:
        print(f"bulkmail bounces: {exc}", file=sys.stderr)
        return EX_USAGE
    failed: list[BounceReport] = []
    skipped: list[str] = []
    for path in args.dsn:
        try:
            dsn = read_dsn(Path(path).read_bytes(), verp_sender=args.verp_sender)
        except OSError as exc:
            skipped.append(f"{path}: cannot read: {exc.strerror}")
            continue
        except ValueError as exc:  # NotADSN, DSNError
            skipped.append(f"{path}: {exc}")
            continue
        if dsn.truncated:
            read = len(dsn.reports)
            skipped.append(f"{path}: truncated; read {read} complete recipient group(s)")
        skipped.extend(f"{path}: {problem}" for problem in dsn.problems)
        for report in dsn.reports:
            if report.failed:
                failed.append(report)
            else:
                print(f"{report.recipient}: {report.action} {report.status or ''}".rstrip())
    try:
        changes, unknown = _record(args.journal, failed)
    except JournalError as exc:
        print(f"bulkmail bounces: {exc}", file=sys.stderr)
        return EX_USAGE
    if args.suppress and changes:
        _append_suppressions(Path(args.suppress), [c.address for c in changes])
    classes_of = {c.address: _class_of(c) for c in changes}
    if args.store:
        try:
            _store_suppressions(args.store, changes, classes_of, classes)
        except SuppressionError as exc:
            print(f"bulkmail bounces: {exc}", file=sys.stderr)
            return EX_USAGE
    for change in changes:
        line = f"{change.address}: bounced {change.code} {change.enhanced or ''}".rstrip()
        print(f"{line} class={classes_of[change.address]}")
    for address in unknown:
        print(f"{address}: not in this journal, not recorded", file=sys.stderr)
    for line in skipped:
        print(f"bulkmail bounces: skipped {line}", file=sys.stderr)
    return EX_SKIPPED if skipped else EX_OK


def _record(journal_at: str, failed: list[BounceReport]) -> tuple[list[StateChange], list[str]]:
    """Record the bounces of recipients the journal knows (as it stores them)."""
    journal = open_any_journal(journal_at)
    try:
        if not isinstance(journal, SQLiteJournal | PgJournal):
            raise JournalError(f"journal {journal_at!r} cannot match bounces to recipients")
        stored = journal.stored_addresses(sorted({r.recipient for r in failed}))
        changes: dict[str, StateChange] = {}
        for report in failed:
            address = stored.get(report.recipient)
            if address is not None:
                changes[address] = StateChange(
                    address=address,
                    status=Status.BOUNCED,
                    code=report.code,
                    enhanced=report.status,
                    reply=f"asynchronous bounce: {report.diagnostic or report.status}",
                )
        journal.record(list(changes.values()))
    finally:
        journal.close()
    unknown = sorted({r.recipient for r in failed if r.recipient not in stored})
    return list(changes.values()), unknown


def _class_of(change: StateChange) -> str:
    reply = (change.reply or "").removeprefix("asynchronous bounce: ")
    return classify_diagnostic(change.code or 550, change.enhanced, reply)


def _store_suppressions(
    path: str, changes: list[StateChange], classes_of: dict[str, str], classes: frozenset[str]
) -> None:
    """Suppress the bounced addresses whose class is a hard one."""
    with SuppressionStore(path) as store:
        store.add_many(
            Suppression(c.address, "bounce", classes_of[c.address], c.reply)
            for c in changes
            if classes_of[c.address] in classes
        )


def _append_suppressions(path: Path, addresses: list[str]) -> None:
    """Append the addresses not already listed (compared as the send command reads them)."""
    try:
        listed = {
            line.strip().lower()
            for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        }
    except FileNotFoundError:
        listed = set()
    new = []
    for address in addresses:
        if address.lower() not in listed:
            listed.add(address.lower())
            new.append(address)
    if new:
        with open(path, "a", encoding="utf-8") as f:
            f.writelines(f"{a}\n" for a in new)
