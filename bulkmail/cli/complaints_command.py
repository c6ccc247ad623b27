"""``bulkmail complaints``: read feedback-loop reports (ARF, RFC 5965) and
suppress the recipients who complained.

Each argument is a report file or a directory of them (read recursively).
Every file is read; one that is no usable complaint (a ``not-spam`` report, a
redacted report without a VERP sender) is listed with the reason and the others
are still recorded.  With ``--journal``, the run's journal confirms recipients
named only by the original's ``To`` header, gives addresses as it stores
them, and maps the original's ``Message-ID`` back to its recipient when the run
was personalised (:mod:`bulkmail.message_ids`).  Exit status: 0 when every
file was understood, 1 when some were skipped, 2 for usage errors (unusable
store or journal).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from ..arf import Complaint, NotAComplaint, original_message_id, read_complaint
from ..journal import JournalError, SQLiteJournal, existing_sqlite_path
from ..message_ids import recipients_for_message_ids
from ..suppression import SuppressionError, SuppressionStore, normalise

EX_OK, EX_SKIPPED, EX_USAGE = 0, 1, 2


EXAMPLE = """\
example:
  bulkmail complaints --store suppressed.sqlite --journal run.sqlite fbl/
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("reports", nargs="+", metavar="FILE|DIR", help="ARF reports")
    p.add_argument("--store", required=True, metavar="PATH", help="the suppression store")
    p.add_argument("--journal", help="the run's journal, to confirm recipients")
    p.add_argument("--verp-sender", metavar="ADDR",
                   help="the run's sender, to map VERP addresses back to recipients")


def run(args: argparse.Namespace) -> int:
    journal = None
    if args.journal:
        try:
            path = existing_sqlite_path(args.journal)
            if path is None:  # (complaints read a SQLite journal only)
                raise JournalError(f"no journal at {args.journal}")
            journal = SQLiteJournal(path)
        except JournalError as exc:
            print(f"bulkmail complaints: {exc}", file=sys.stderr)
            return EX_USAGE
    try:
        with SuppressionStore(args.store) as store:
            return _run(args, store, journal)
    except (SuppressionError, JournalError) as exc:
        print(f"bulkmail complaints: {exc}", file=sys.stderr)
        return EX_USAGE
    finally:
        if journal is not None:
            journal.close()


def _run(args: argparse.Namespace, store: SuppressionStore, journal: SQLiteJournal | None) -> int:
    known = _known(journal) if journal is not None else None
    skipped: list[str] = []
    paths = list(_files(args.reports, skipped))
    by_message_id = _message_id_lookup(journal, paths) if journal is not None else None
    for path in paths:
        try:
            complaint = read_complaint(path.read_bytes(), verp_sender=args.verp_sender,
                                       by_message_id=by_message_id, known=known)
        except OSError as exc:
            skipped.append(f"{path}: cannot read: {exc.strerror}")
            continue
        except NotAComplaint as exc:
            skipped.append(f"{path}: {exc}")
            continue
        _record(store, complaint, path, journal, skipped)
    for line in skipped:
        print(f"bulkmail complaints: skipped {line}", file=sys.stderr)
    return EX_SKIPPED if skipped else EX_OK


def _record(store: SuppressionStore, complaint: Complaint, path: Path,
            journal: SQLiteJournal | None, skipped: list[str]) -> None:
    stored = journal.stored_addresses(complaint.recipients) if journal is not None else {}
    source = f"{complaint.feedback_type} report {path.name}"
    if complaint.message_id:
        source += f" about {complaint.message_id}"
    for recipient in complaint.recipients:
        try:
            address = normalise(stored.get(recipient, recipient))
            new = store.add(address, "complaint", source=source)
        except SuppressionError as exc:
            skipped.append(f"{path}: {exc}")
            continue
        state = "suppressed" if new else "already suppressed"
        print(f"{address}: {state} (complaint, found by {complaint.found_by})")


def _message_id_lookup(
    journal: SQLiteJournal, paths: list[Path]
) -> Callable[[str], str | None]:
    """The reports' Message-IDs mapped to recipients in one pass over the journal
    (a personalised job's IDs derive from its key and the address)."""
    wanted = set()
    for path in paths:
        try:
            message_id = original_message_id(path.read_bytes())
        except OSError:
            continue  # said when the report itself is read
        if message_id:
            wanted.add(message_id)
    return recipients_for_message_ids(journal, wanted).get


def _known(journal: SQLiteJournal) -> Callable[[str], bool]:
    return lambda address: bool(journal.stored_addresses([address]))


def _files(arguments: list[str], skipped: list[str]) -> Iterator[Path]:
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        elif path.exists():
            yield path
        else:
            skipped.append(f"{argument}: no such file or directory")
