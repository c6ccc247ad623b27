"""``bulkmail bounces``: read DSNs (RFC 3464) that came back after a run, mark
their recipients bounced in the journal and add them to the suppression list."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..dsn import parse_dsn
from ..journal import SQLiteJournal, StateChange
from ..results import Status


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dsn", nargs="+", metavar="FILE", help="bounce messages (RFC 5322 files)")
    p.add_argument("--journal", required=True, help="the run's journal")
    p.add_argument("--suppress", metavar="FILE", help="append hard-bounced addresses here")
    p.add_argument("--verp-sender", metavar="ADDR",
                   help="the run's sender, to map VERP bounce addresses back to recipients")


def run(args: argparse.Namespace) -> int:
    changes: list[StateChange] = []
    for path in args.dsn:
        try:
            reports = parse_dsn(Path(path).read_bytes(), verp_sender=args.verp_sender)
        except (OSError, ValueError) as exc:
            print(f"bulkmail bounces: {path}: {exc}", file=sys.stderr)
            return 2
        for report in reports:
            if not report.failed:
                continue
            changes.append(
                StateChange(
                    address=report.recipient,
                    status=Status.BOUNCED,
                    code=report.code,
                    enhanced=report.status,
                    reply=f"asynchronous bounce: {report.diagnostic or report.status}",
                )
            )
    journal = SQLiteJournal(args.journal)
    try:
        journal.record(changes)
    finally:
        journal.close()
    if args.suppress and changes:
        with open(args.suppress, "a", encoding="utf-8") as f:
            f.writelines(f"{c.address}\n" for c in changes)
    for change in changes:
        print(f"{change.address}: bounced {change.code} {change.enhanced or ''}".rstrip())
    return 0
