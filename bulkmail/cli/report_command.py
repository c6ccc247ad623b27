"""``bulkmail report JOURNAL``: the end-of-run summary, from a journal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..journal import Journal, JournalError, open_journal, sqlite_path
from ..results import Status, Summary
from .summary import render_summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("journal", help="a journal written by 'bulkmail send'")


def run(args: argparse.Namespace) -> int:
    try:
        path = sqlite_path(args.journal)
        if path is not None and not Path(path).is_file():
            print(f"bulkmail report: no journal at {path}", file=sys.stderr)
            return 2
        journal = open_journal(args.journal)
        try:
            summary, pending_doubt = _summarise(journal)
        finally:
            journal.close()
    except JournalError as exc:
        print(f"bulkmail report: {exc}", file=sys.stderr)
        return 2
    print(render_summary(summary))
    if pending_doubt:
        print(f"in doubt (will be resent once, flagged): {pending_doubt}")
    return 0


def _summarise(journal: Journal) -> tuple[Summary, int]:
    """The journal as a summary, and how many recipients a resume would resend
    as possible duplicates (in doubt once; in doubt twice is final)."""
    counts = journal.counts()
    doubtful = counts.get(Status.IN_DOUBT, 0)
    flagged = journal.flagged()
    twice = flagged.get(Status.IN_DOUBT, 0)
    summary = Summary(
        delivered=counts.get(Status.DELIVERED, 0),
        bounced=counts.get(Status.BOUNCED, 0),
        deferred=counts.get(Status.DEFERRED, 0)
        + doubtful - twice
        + counts.get(Status.IN_FLIGHT, 0)
        + counts.get(Status.PENDING, 0),
        suppressed=counts.get(Status.SUPPRESSED, 0),
        in_doubt=twice,
        possible_duplicates=sum(flagged.values()),
    )
    for domain, n in journal.top_domains(10):
        summary.domains[domain] = n
    for code, n in journal.top_codes(10):
        summary.codes[code] = n
    return summary, doubtful - twice
