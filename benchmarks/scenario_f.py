"""Scenario f: the long tail of domains, delivered direct to MX (issue 22).

    python benchmarks/throughput.py --scenarios f        # f and the sweep
    python benchmarks/scenario_f.py --recipients 100000 --domains 10000 \\
        --mx-hosts 20 [--profile out.txt] [--batch-by site]   # one run, optionally profiled

f: 1,000,000 recipients over 100,000 domains hosted by 20 MX hosts, with
``--batch-by domain`` and ``--batch-by site`` (and by domain with ``send
--processes 2``); the sweep: 100,000 recipients over 1,000 / 10,000 /
100,000 domains (20 MX hosts), showing how cost grows
with the number of domains.  A loopback DNS server (bulkmail.testing.dns_server)
and one bulkmail sink per MX host (127.0.0.1 .. 127.0.0.20) run in their own
processes; bulkmail runs through its CLI with the journal on.

``--profile FILE`` samples the client with py-spy (collapsed stacks in FILE)
and prints the functions with the most samples, inclusive and self.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loopback_mx import LoopbackMX

HERE = Path(__file__).resolve().parent
RSS_WRAPPER = (
    "import resource, subprocess, sys, time, json\n"
    "t = time.perf_counter()\n"
    "p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)\n"
    "print(json.dumps({'rc': p.returncode, 'wall': time.perf_counter() - t,"
    " 'rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
    " 'cpu': (lambda u: u.ru_utime + u.ru_stime)(resource.getrusage(resource.RUSAGE_CHILDREN)),"
    " 'stdout': p.stdout.decode()[-2000:], 'stderr': p.stderr.decode()[-2000:]}))\n"
)


#: the domain machinery alone: MTA-STS (the CLI's default) adds a TXT lookup
#: and a TLS plan per domain; ``scenario_f.py --tls-policy mta-sts`` measures it
TLS_POLICY = "opportunistic"


def cli_has_batch_by() -> bool:
    out = subprocess.run(["bulkmail", "send", "--help"], capture_output=True, text=True)
    return "--batch-by" in out.stdout


def write_recipients(path: Path, recipients: int, domains: int) -> None:
    """Recipients round robin over the domains: each domain's recipients are
    spread over the whole file, as in a list sorted by sign-up date."""
    with open(path, "w") as f:
        f.writelines(f"r{i}@d{i % domains}.test\n" for i in range(recipients))


def run_once(
    work: Path, recipients: int, domains: int, mx_hosts: int, *, connections: int,
    batch_by: str | None, profile: Path | None = None, report: bool = False,
    tls_policy: str | None = None, processes: int = 1,
) -> dict[str, object]:
    """One ``bulkmail send`` against a fresh loopback MX world; wall, RSS, counts."""
    rcpts = work / f"rcpts-{recipients}-{domains}.txt"
    if not rcpts.exists():
        write_recipients(rcpts, recipients, domains)
    msg = work / "msg.eml"
    msg.write_text("From: news@sender.test\nTo: readers@example.test\n"
                   "Subject: the newsletter\n\nHello reader, this is the newsletter.\n")
    journal = work / "journal.sqlite"
    # the journal, its WAL and lock, and a `--processes` run's parts: a
    # leftover part makes the next run refuse to start (as it should)
    for leftover in work.glob(f"{journal.name}*"):
        leftover.unlink()
    world = LoopbackMX(domains, mx_hosts)
    try:
        cmd = ["bulkmail", "send", "--sender", "news@sender.test", "--recipients", str(rcpts),
               "--message", str(msg), "--tls", "none", "--connections", str(connections),
               "--max-rcpts", "50", "--quiet", "--journal", str(journal),
               *world.send_options()]
        if report:
            cmd += ["--report", str(work / "report.jsonl")]
        if batch_by is not None:
            cmd += ["--batch-by", batch_by]
        if tls_policy is not None:
            cmd += ["--tls-policy", tls_policy]
        if processes > 1:
            cmd += ["--processes", str(processes)]
        if profile is not None:
            cmd = ["py-spy", "record", "--format", "raw", "-r", "200", "-o", str(profile),
                   "--", *cmd]
        out = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *cmd], cwd=work,
                             capture_output=True, text=True, check=True)
        result: dict[str, object] = json.loads(out.stdout)
        result["counters"] = world.counters()
        result["world_cpu"] = world.cpu_seconds()
    finally:
        world.stop()
    return result


def top_functions(collapsed: Path, n: int = 25) -> str:
    """py-spy's collapsed stacks as two tables: inclusive and self sample shares."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        total += count
        frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")")
                  for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    lines = [f"{total} samples; inclusive:"]
    lines += [f"  {c / total:6.1%}  {f}" for f, c in inclusive.most_common(n)]
    lines.append("self:")
    lines += [f"  {c / total:6.1%}  {f}" for f, c in own.most_common(n)]
    return "\n".join(lines)


def row(label: str, recipients: int, result: dict[str, object]) -> dict[str, object]:
    counters = result["counters"]
    assert isinstance(counters, dict)
    wall = float(result["wall"])  # type: ignore[arg-type]
    return {
        "scenario": label, "recipients": recipients, "seconds": wall,
        "rcpt_rate": recipients / wall, "rss_mb": int(result["rss_kb"]) / 1024,  # type: ignore[call-overload]
        # the client's own CPU (user + system): what a busy machine leaves comparable
        "cpu_s": float(result["cpu"]),  # type: ignore[arg-type]
        # the DNS server's and the sinks': with the client's, the machine's whole load
        "dns_cpu_s": result["world_cpu"]["dns"],  # type: ignore[index]
        "sinks_cpu_s": result["world_cpu"]["sinks"],  # type: ignore[index]
        "messages": counters.get("messages", 0),
        "verified": counters.get("recipients") == recipients and result["rc"] == 0,
        # why a run failed, shown beside its row rather than lost
        "stderr": "" if result["rc"] == 0 else str(result["stderr"]).strip()[-500:],
    }


def show(r: dict[str, object]) -> None:
    print(f"  {r['scenario']:<28} {r['recipients']:>9,} rcpts {r['seconds']:7.1f} s"
          f" {r['rcpt_rate']:>9,.0f} rcpt/s  {r['rss_mb']:5.0f} MB  {r['messages']:>7,} txns"
          f"  cpu {r['cpu_s']:5.1f} s"
          f" (dns {r['dns_cpu_s']:4.1f} s, sinks {r['sinks_cpu_s']:4.1f} s)"
          f"  {'ok' if r['verified'] else 'COUNT MISMATCH'}", flush=True)
    if r.get("stderr"):
        print(f"    bulkmail failed: {r['stderr']}", flush=True)


def scenario_f(args: argparse.Namespace, work: Path) -> list[dict[str, object]]:
    """f itself (both batching modes, and by domain with two processes) and the domain sweep."""
    rows: list[dict[str, object]] = []
    n = int(1_000_000 * args.scale)
    domains = max(1, int(100_000 * args.scale))
    has_flag = cli_has_batch_by()
    for mode in ("domain", "site"):
        if not has_flag:
            print(f"  f --batch-by {mode}: skipped, this bulkmail has no --batch-by"
                  " (running once without it)", flush=True)
            if mode == "site":
                continue
        result = run_once(work, n, domains, 20, connections=args.connections,
                          batch_by=mode if has_flag else None, tls_policy=TLS_POLICY)
        label = f"f batch-by {mode}" if has_flag else "f (no --batch-by)"
        rows.append(row(label, n, result))
        show(rows[-1])
    if has_flag:
        # per domain, a long tail is a transaction per recipient and the one
        # client process is the bottleneck: what `send --processes` buys
        result = run_once(work, n, domains, 20, connections=args.connections,
                          batch_by="domain", tls_policy=TLS_POLICY, processes=2)
        rows.append(row("f batch-by domain, 2 procs", n, result))
        show(rows[-1])
    sweep_n = int(100_000 * args.scale)
    for mode in ("site", "domain") if has_flag else (None,):
        for count in (1_000, 10_000, 100_000):
            count = max(1, int(count * args.scale))
            result = run_once(work, sweep_n, count, 20, connections=args.connections,
                              batch_by=mode, tls_policy=TLS_POLICY)
            rows.append(row(f"f sweep {count:,} domains{f' by {mode}' if mode else ''}",
                            sweep_n, result))
            show(rows[-1])
    return rows


def table(rows: list[dict[str, object]]) -> str:
    out = ["| scenario | recipients | seconds | recipients/s | peak RSS MB | transactions"
           " | client CPU s |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        mark = "" if r["verified"] else " (count mismatch!)"
        out.append(f"| {r['scenario']}{mark} | {r['recipients']:,} | {r['seconds']:.1f} |"
                   f" {r['rcpt_rate']:,.0f} | {r['rss_mb']:.0f} | {r['messages']:,} |"
                   f" {r['cpu_s']:.1f} |")
    return "\n".join(out)


def targets(rows: list[dict[str, object]]) -> list[str]:
    """Issue 22's goals, each from this run."""
    out = []
    by = {r["scenario"]: r for r in rows}
    for mode, limit in (("site", 60), ("domain", 120)):
        r = by.get(f"f batch-by {mode}")
        if r and not r["verified"]:
            out.append(f"f --batch-by {mode}: the run failed")
        elif r:
            out.append(f"f --batch-by {mode}: {r['seconds']:.1f} s (goal < {limit} s),"
                       f" {r['rss_mb']:.0f} MB peak RSS")
    for mode in ("site", "domain", None):
        sweep = [r for r in rows if str(r["scenario"]).startswith("f sweep")
                 and str(r["scenario"]).endswith(f" by {mode}" if mode else "domains")]
        if len(sweep) > 1:
            first, last = sweep[0], sweep[-1]
            if not (first["verified"] and last["verified"]):
                out.append(f"sweep by {mode}: a run failed, no ratio")
                continue
            ratio = float(last["seconds"]) / float(first["seconds"])  # type: ignore[arg-type]
            out.append(f"sweep: {str(last['scenario'])[8:]} take {ratio:.1f}x the time of"
                       f" {str(first['scenario'])[8:]} (goal <= 3x)")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipients", type=int, default=100_000)
    p.add_argument("--domains", type=int, default=1_000)
    p.add_argument("--mx-hosts", type=int, default=20)
    p.add_argument("--connections", type=int, default=10)
    p.add_argument("--batch-by", choices=("domain", "site"), default=None)
    p.add_argument("--tls-policy", choices=("opportunistic", "mta-sts"), default=None,
                   help="the CLI's --tls-policy (its default: mta-sts, one TXT lookup per domain)")
    p.add_argument("--profile", type=Path, default=None, help="py-spy collapsed stacks here")
    p.add_argument("--processes", type=int, default=1,
                   help="the CLI's --processes (worker processes sharing the run)")
    p.add_argument("--attempts", action="store_true",
                   help="write a report and count attempts per recipient (costs time)")
    args = p.parse_args()
    if shutil.which("bulkmail") is None:
        sys.exit("bulkmail is not installed in this environment (pip install -e .)")
    if args.profile and shutil.which("py-spy") is None:
        sys.exit("--profile needs py-spy (pip install py-spy)")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = run_once(Path(tmp), args.recipients, args.domains, args.mx_hosts,
                          connections=args.connections, batch_by=args.batch_by,
                          profile=args.profile, report=args.attempts,
                          tls_policy=args.tls_policy, processes=args.processes)
        r = row(f"{args.domains:,} domains / {args.mx_hosts} MX", args.recipients, result)
        show(r)
        report = Path(tmp) / "report.jsonl"
        if report.exists():
            statuses: collections.Counter[str] = collections.Counter()
            attempts: collections.Counter[int] = collections.Counter()
            for line in report.read_text().splitlines():
                entry = json.loads(line)
                statuses[entry.get("status", "?")] += 1
                attempts[entry.get("attempts", 0)] += 1
            print(f"  statuses {dict(statuses)}, attempts {dict(sorted(attempts.items()))}")
        if result["rc"] != 0:
            print(result["stderr"])
        print(f"  (harness {time.perf_counter() - start:.1f} s)")
    if args.profile:
        print(top_functions(args.profile))


if __name__ == "__main__":
    main()
