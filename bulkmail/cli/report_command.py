"""``bulkmail report JOURNAL``: the end-of-run summary, from a journal.

Bounced and deferred recipients are counted per bounce class, classified from
the replies the journal holds (one classification per distinct reply), with
``--bounce-rules`` the same rules ``send`` was given.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from ..bounce_class import BounceClassifier, RulesError, load_rules
from ..journal import Journal, JournalError, existing_sqlite_path
from ..journals import open_any_journal
from ..results import Status, Summary
from .summary import ClassCounts, render_summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("journal", help="a journal written by 'bulkmail send', or a job in"
                                        " PostgreSQL: postgresql://...?job=ID")
    parser.add_argument("--bounce-rules", metavar="FILE.toml",
                        help="classification rules, tried before the built-in ones"
                             " (the file given to 'send --bounce-rules')")


def run(args: argparse.Namespace) -> int:
    try:
        classifier = BounceClassifier(load_rules(args.bounce_rules) if args.bounce_rules else ())
    except RulesError as exc:
        print(f"bulkmail report: {exc}", file=sys.stderr)
        return 2
    try:
        existing_sqlite_path(args.journal)  # reading: never creates one
        journal = open_any_journal(args.journal)
        try:
            summary, pending_doubt = _summarise(journal)
            classes = _classes(journal, classifier)
        finally:
            journal.close()
    except JournalError as exc:
        print(f"bulkmail report: {exc}", file=sys.stderr)
        return 2
    print(render_summary(summary, classes))
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


def _classes(journal: Journal, classifier: BounceClassifier) -> ClassCounts:
    """Bounced and deferred recipients per (status, class)."""
    counts: ClassCounts = Counter()
    grouped = getattr(journal, "failure_replies", None)
    if grouped is not None:  # SQLite: grouped by distinct reply in SQL
        rows = grouped()
    else:
        rows = [(r.status, r.code, r.enhanced, r.reply, 1) for r in journal.iter_records()
                if r.status in (Status.BOUNCED, Status.DEFERRED) and r.code is not None]
    for status, code, enhanced, reply, n in rows:
        counts[status.value, classifier.classify(code, enhanced, reply or "")] += n
    return counts
