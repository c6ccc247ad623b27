"""``bulkmail report JOURNAL``: the end-of-run summary, from a journal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..journal import JournalError, SQLiteJournal
from ..results import Status, Summary
from .summary import render_summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("journal", help="a journal written by 'bulkmail send'")


def run(args: argparse.Namespace) -> int:
    try:
        return _report(args)
    except JournalError as exc:  # not a journal, damaged, or from a newer bulkmail
        print(f"bulkmail report: {exc}", file=sys.stderr)
        return 2


def _report(args: argparse.Namespace) -> int:
    path = Path(args.journal)
    if not path.is_file():
        print(f"bulkmail report: no journal at {path}", file=sys.stderr)
        return 2
    journal = SQLiteJournal(path)
    try:
        counts = journal.counts()
        summary = Summary(
            delivered=counts.get(Status.DELIVERED, 0),
            bounced=counts.get(Status.BOUNCED, 0),
            deferred=counts.get(Status.DEFERRED, 0)
            + counts.get(Status.IN_DOUBT, 0)
            + counts.get(Status.IN_FLIGHT, 0)
            + counts.get(Status.PENDING, 0),
            suppressed=counts.get(Status.SUPPRESSED, 0),
        )
        for domain, n in journal.top_domains(10):
            summary.domains[domain] = n
        for code, n in journal.top_codes(10):
            summary.codes[code] = n
    finally:
        journal.close()
    print(render_summary(summary))
    in_doubt = counts.get(Status.IN_DOUBT, 0)
    if in_doubt:
        print(f"in doubt (will be resent once, flagged): {in_doubt}")
    return 0
