"""Scenario e: one job, several ``bulkmail worker`` processes, through PostgreSQL (issue 17).

    python benchmarks/scenario_e.py [--scale 1.0] [--db URL] [--latency 20]
                                    [--mx-hosts 4] [--connections 1] [--window 8]
                                    [--lease 10]

200,000 recipients (times ``--scale``) over 200 domains, hosted by
``--mx-hosts`` MX hosts (one bulkmail sink each, answering after
``--latency`` ms per reply batch: round-trip bound), a personalised message
(one transaction per recipient).  One ``job create``, then 1, 2 and 3
workers with the per-destination connection cap (the shaping file's, held
cluster-wide through PostgreSQL) raised with them: ``--connections`` per
worker per MX site (default 1: one worker's 4 sessions at 20 ms are
round-trip bound, which is what the scaling goal assumes; at 8 a single
worker already fills a 2-core machine with its 32 sessions, the four sinks
and PostgreSQL, and adding workers adds no CPU), and a window of
``--window`` transactions per session (default 8, for the same reason:
at send's 32 one worker alone sent 3,210/s at --scale 0.5 and three filled
both cores, 1.76x; ``--window 32`` shows that).  Then 3 workers with one
SIGKILLed once half the recipients are final: time to finish (its leases expire after ``--lease``
seconds) and the copies the sinks received beyond one per recipient.
Prints each run and the ratios (goal: >= 1.8x with 2 workers, >= 2.5x with 3),
and the CPU per recipient of the processes it started and of PostgreSQL.

``--workers 1,2`` picks the runs, ``--no-kill`` skips the last one,
``--py-spy DIR`` profiles the first worker of each run, and the environment's
``BULKMAIL_BENCH_WRAPPER=script.py`` runs bulkmail through a script (one that
times store calls, say) instead of ``-m bulkmail``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from loopback_mx import LoopbackMX
from psycopg import sql

MESSAGE = ("From: news@sender.test\nTo: ${email}\nSubject: the newsletter\n\n"
           "Hello ${email}, this is the newsletter.\n")


def bulkmail(*args: str) -> list[str]:
    wrapper = os.environ.get("BULKMAIL_BENCH_WRAPPER")  # a script run as "-m bulkmail"
    return [sys.executable, *([wrapper] if wrapper else ["-m", "bulkmail"]), *args]


def in_schema(db: str, schema: str) -> str:
    return f"{db}{'&' if '?' in db else '?'}schema={schema}"


def query(db: str, schema: str, text: str) -> list[tuple[object, ...]]:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        return list(conn.execute(text.encode()).fetchall())


def profile_wrap(args: argparse.Namespace, n: int) -> list[str]:
    """py-spy in front of the first worker with ``--py-spy DIR`` (raw folded stacks)."""
    if not args.py_spy:
        return []
    out = Path(args.py_spy) / f"worker-{uuid.uuid4().hex[:6]}.txt"
    return ["py-spy", "record", "-f", "raw", "-r", "200", "-o", str(out), "--"]


def postmaster_cpu(db: str) -> float | None:
    """CPU seconds of PostgreSQL's ended backends (the postmaster's reaped
    children), when it runs on this machine; ``None`` otherwise."""
    try:
        with psycopg.connect(db, autocommit=True) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        ppid = Path(f"/proc/{row[0]}/stat").read_text().rsplit(")", 1)[1].split()[1]
        fields = Path(f"/proc/{ppid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    except (OSError, AssertionError, IndexError, ValueError):
        return None


def run_workers(args: argparse.Namespace, work: Path, rcpts: Path, workers: int, *,
                kill_at_half: bool = False) -> dict[str, Any]:
    """A fresh schema and a fresh loopback MX world; ``workers`` workers on one job."""
    schema = f"bench_e_{uuid.uuid4().hex[:12]}"
    url = in_schema(args.db, schema)
    shaping = work / "shaping.toml"
    shaping.write_text(f"[default]\nconnections = {args.connections * workers}\n")
    world = LoopbackMX(args.domains, args.mx_hosts, sink_args=("--latency", str(args.latency)))
    try:
        created = subprocess.run(
            bulkmail("job", "create", "--db", url, "--sender", "news@sender.test",
                     "--recipients", str(rcpts), "--message", str(work / "msg.eml"), "--quiet"),
            capture_output=True, text=True, check=True)
        job = created.stdout.split()[-1]
        total = args.recipients
        pg_before, children_before = postmaster_cpu(args.db), os.times()
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                [*(profile_wrap(args, n) if n == 0 else []),
                 *bulkmail("worker", "--db", url, "--job", job, "--tls", "none", "--quiet",
                           "--shaping", str(shaping), "--lease", f"{args.lease}s",
                           *(["--claim-size", str(args.claim_size)] if args.claim_size else []),
                           "--window", str(args.window),
                           *world.send_options())],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for n in range(workers)
        ]
        killed_at = None
        if kill_at_half:
            while True:
                done = query(args.db, schema, "SELECT count(*) FROM recipients WHERE state"
                             " IN ('delivered', 'bounced')")[0][0]
                assert isinstance(done, int)
                if done >= total // 2:
                    procs[0].kill()
                    killed_at = time.perf_counter() - started
                    break
                time.sleep(0.05)
        # each worker's finish, in order: a long gap between the first and the
        # last is a tail one worker sends alone
        finished: dict[int, float] = {}
        while len(finished) < len(procs):
            for n, proc in enumerate(procs):
                if n not in finished and proc.poll() is not None:
                    finished[n] = time.perf_counter() - started
            time.sleep(0.05)
        statuses = [p.wait() for p in procs]
        wall = time.perf_counter() - started
        children = os.times()
        client_cpu = (children.children_user + children.children_system
                      - children_before.children_user - children_before.children_system)
        errors = [p.stderr.read().decode()[-500:] for p in procs if p.stderr is not None]
        counters = world.counters()
        states = dict(query(args.db, schema, "SELECT state, count(*) FROM recipients GROUP BY 1"))
        flagged = query(args.db, schema,
                        "SELECT count(*) FROM recipients WHERE possible_duplicate")[0][0]
    finally:
        world.stop()
        with psycopg.connect(args.db, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(schema)))
    pg_after = postmaster_cpu(args.db)  # the workers' backends have ended by now
    expected = statuses[1:] if kill_at_half else statuses
    if any(status != 0 for status in expected):
        raise SystemExit(f"a worker failed: {statuses} {errors}")
    received = int(counters.get("recipients", 0))
    return {
        "workers": workers, "killed": kill_at_half, "seconds": wall, "recipients": total,
        "per_second": total / wall, "received": received, "extra_copies": received - total,
        "flagged": flagged, "states": states, "killed_at": killed_at,
        "max_sessions": counters.get("max_active_sessions"),
        "finished": sorted(round(t, 1) for t in finished.values()),
        # CPU of the workers (and job create, sinks, DNS: processes that ended)
        # and of PostgreSQL's backends; on a shared machine the latter
        # includes anyone else's sessions that ended meanwhile
        "workers_cpu": client_cpu,
        "pg_cpu": None if pg_before is None or pg_after is None else pg_after - pg_before,
    }


def show(r: dict[str, Any]) -> None:
    label = f"{r['workers']} worker(s)" + (", one killed at half" if r["killed"] else "")
    line = (f"  {label:<32} {r['recipients']:>8,} rcpts {r['seconds']:7.1f} s"
            f" {r['per_second']:9,.0f}/s  received {r['received']:,}"
            f" (+{r['extra_copies']}), flagged {r['flagged']}")
    if r["killed_at"] is not None:
        line += f", killed at {r['killed_at']:.1f} s"
    cpu = f"client cpu {1e6 * r['workers_cpu'] / r['recipients']:.0f} us/rcpt"
    if r["pg_cpu"] is not None:
        cpu += f", postgres {1e6 * r['pg_cpu'] / r['recipients']:.0f} us/rcpt"
    line += f"\n  {'':<32} {cpu}; workers finished at {r['finished']} s"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--domains", type=int, default=200)
    parser.add_argument("--mx-hosts", type=int, default=4)
    parser.add_argument("--latency", type=int, default=20, help="sink round trip, ms")
    parser.add_argument("--connections", type=int, default=1,
                        help="connections per worker per MX site (the cap is this x workers)")
    parser.add_argument("--window", type=int, default=8,
                        help="the workers' --window (default 8: one worker round-trip bound)")
    parser.add_argument("--lease", type=float, default=10.0)
    parser.add_argument("--claim-size", type=int,
                        help="the workers' --claim-size (default: theirs)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows here")
    parser.add_argument("--workers", default="1,2,3",
                        help="worker counts to run, comma-separated (the first is the baseline)")
    parser.add_argument("--no-kill", action="store_true", help="skip the run with a SIGKILL")
    parser.add_argument("--py-spy", metavar="DIR",
                        help="profile the first worker of each run with py-spy into DIR")
    args = parser.parse_args()
    args.recipients = max(args.domains, int(200_000 * args.scale))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rcpts = work / "rcpts.txt"
        with open(rcpts, "w") as f:
            f.writelines(f"r{i}@d{i % args.domains}.test\n" for i in range(args.recipients))
        (work / "msg.eml").write_text(MESSAGE)
        print(f"scenario e: {args.recipients:,} recipients, {args.domains} domains on"
              f" {args.mx_hosts} MX sites, {args.latency} ms round trip,"
              f" {args.connections} connections per worker per site, window {args.window}",
              flush=True)
        rows: list[dict[str, Any]] = []
        counts = [int(n) for n in args.workers.split(",")]
        for workers in counts:
            rows.append(run_workers(args, work, rcpts, workers))
            show(rows[-1])
        if not args.no_kill:
            rows.append(run_workers(args, work, rcpts, max(counts), kill_at_half=True))
            show(rows[-1])
    one = float(rows[0]["seconds"])
    for r in rows[1:len(counts)]:
        goal = {2: " (goal 1.8x)", 3: " (goal 2.5x)"}.get(int(r["workers"]), "")
        print(f"  {r['workers']} workers: {one / float(r['seconds']):.2f}x"
              f" {rows[0]['workers']} worker(s){goal}")
    if not args.no_kill:
        killed, unkilled = rows[-1], rows[len(counts) - 1]
        print(f"  one of {killed['workers']} killed at half: {float(killed['seconds']):.1f} s"
              f" to finish ({float(killed['seconds']) / float(unkilled['seconds']):.2f}x"
              f" the unkilled run), {killed['extra_copies']} extra copies, all flagged: "
              f"{int(killed['flagged']) >= int(killed['extra_copies'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
