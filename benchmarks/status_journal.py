"""``bulkmail status`` on a big journal: one redraw summed in SQL against one
that reads every record, best of three each.

    python benchmarks/status_journal.py [--recipients 1000000] [--domains 1000]

The journal is written as a run writes it (group commits of 500 addresses,
one in twenty groups deferred with a retry time) and folded once before
timing, so both sides read the same ``recipients`` table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bulkmail.cli.status_command import collect, summed
from bulkmail.journal import Outcome, SQLiteJournal, Status


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipients", type=int, default=1_000_000)
    p.add_argument("--domains", type=int, default=1000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        journal = SQLiteJournal(Path(tmp) / "status.sqlite")
        addresses = [f"u{i}@d{i % args.domains}.test" for i in range(args.recipients)]
        delivered = Outcome(Status.DELIVERED, 250, "2.0.0", "ok", 1)
        deferred = Outcome(Status.DEFERRED, 451, "4.7.1", "try later", 1,
                           next_attempt=time.time() + 600)
        journal.record_outcomes([
            (addresses[k : k + 500], deferred if (k // 500) % 20 == 0 else delivered)
            for k in range(0, args.recipients, 500)
        ])
        journal.counts()  # folds the events into the recipients table
        for name, redraw in (
            ("every record (collect)", lambda: collect(journal.iter_records(), time.time())),
            ("summed in SQL (summed)", lambda: summed(journal, time.time())),
        ):
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                redraw()
                best = min(best, time.perf_counter() - started)
            print(f"{args.recipients:,} recipients, {name}: {best:.3f} s per redraw")
        journal.close()


if __name__ == "__main__":
    main()
