"""The PostgreSQL job store alone: COPY load time and claim throughput.

    python benchmarks/pg_store.py [--db URL] [--recipients 1000000] [--domains 200]
                                  [--claimers 1,3] [--batch 100] [--seconds 10]

Loads the recipients into a fresh schema (dropped afterwards), then for each
claimer count runs that many threads, each on its own connection, that claim
``--batch`` recipients, mark them in doubt and complete them as delivered --
the three round trips a worker pays per transaction -- for ``--seconds``.
No SMTP: this is the database's share of a worker's cost.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid

import psycopg
from psycopg import sql

from bulkmail.journal import Outcome, Status
from bulkmail.store import PgStore

DELIVERED = Outcome(Status.DELIVERED, 250, "2.0.0", "ok", 1, "mx.example")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--domains", type=int, default=200)
    parser.add_argument("--claimers", default="1,3")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    url = f"{args.db}{'&' if '?' in args.db else '?'}schema={schema}"
    try:
        with PgStore(url) as store:
            job = store.create_job()
            started = time.perf_counter()
            n = store.load_recipients(
                job, (f"user{i}@d{i % args.domains}.example" for i in range(args.recipients))
            )
            print(f"COPY load: {n:,} recipients in {time.perf_counter() - started:.2f} s")
        for claimers in (int(c) for c in args.claimers.split(",")):
            done = run_claimers(url, job, claimers, args.batch, args.seconds)
            print(f"{claimers} claimer(s), batch {args.batch}: {done / args.seconds:,.0f}"
                  f" recipients/s ({done / args.batch / args.seconds:,.0f} claims/s,"
                  " each claim + in-doubt mark + completion)")
    finally:
        with psycopg.connect(args.db, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(schema)))


def run_claimers(url: str, job: int, claimers: int, batch: int, seconds: float) -> int:
    counts = [0] * claimers
    deadline = time.perf_counter() + seconds

    def work(index: int) -> None:
        owner = f"bench-{index}"
        with PgStore(url) as store:
            while time.perf_counter() < deadline:
                claim = store.claim(owner, batch, 30, job=job)
                if claim is None:
                    return
                addresses = [r.address for r in claim.recipients]
                store.mark_in_doubt(owner, job, addresses)
                store.complete(owner, job, [(addresses, DELIVERED)])
                counts[index] += len(addresses)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


if __name__ == "__main__":
    main()
