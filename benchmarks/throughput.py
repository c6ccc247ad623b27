"""Throughput of bulkmail and its peers against the same sink, in one run.

    python benchmarks/throughput.py [--scenarios a,b,c,d,e,f] [--sinks bulkmail,postfix]
                                    [--connections 10] [--scale 1.0] [--peer-share 0.1]
                                    [--json results.json]
    python benchmarks/throughput.py --metrics-ab ROUNDS [--scrape-every SECONDS] [--callgrind]

Scenarios (sizes times --scale):
  a  100,000 personalised messages, one recipient each, loopback
  b  200,000-recipient identical newsletter across 200 domains, 50 per transaction
  c  5,000 personalised messages at 20 ms round trip (the sink's --latency), with and
     without CHUNKING (bulkmail sink only: Postfix's smtp-sink has no latency option);
     500 round trips per connection, so the fixed ~0.25 s of process start and
     session setup is 2% of the run rather than the pipelining being measured
  d  1,000,000 recipients streamed from a file through the CLI: time and peak RSS
  e  one PostgreSQL job worked by 1, 2 and 3 `bulkmail worker` processes
     (scenario_e.py, its defaults and --scale): 200,000 recipients over 200
     domains at 20 ms round trip, then 3 workers with one SIGKILLed at half.
     Needs PostgreSQL (scenario_e.py --db).  Not in the default list: --scenarios e
  f  direct MX delivery to the long tail (scenario_f.py): 1,000,000 recipients over
     100,000 domains hosted by 20 MX hosts (a loopback DNS server, one sink per
     127.0.0.x), --batch-by domain and site; and the sweep 1k / 10k / 100k domains
     at 100,000 recipients.  Not in the default list (minutes long): --scenarios f

bulkmail always runs through its CLI (``bulkmail send``) with the journal on.
Peers: aiosmtplib (asyncio), smtplib in a thread pool, Postfix's smtp-source
when /usr/sbin/smtp-source exists, and the floor (peers/floor_peer.py: a bare
pipelining loop with no results or journal -- the limit a sink allows; it
sends DATA, so on the project's sink, which offers CHUNKING, bulkmail's BDAT
is compared with it); all use the same connection count.  Slow peers run a
share of the work (--peer-share); rates are what is compared.
Every run's count is checked against the sink's own counters.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import scenario_f

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
#: peers fast enough to run the whole of a scenario
FULL_SHARE = ("smtp-source", "floor")
RSS_WRAPPER = (
    "import resource, subprocess, sys, time, json\n"
    "t = time.perf_counter()\n"
    "p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)\n"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(json.dumps({'rc': p.returncode, 'wall': time.perf_counter() - t,"
    " 'rss_kb': u.ru_maxrss, 'cpu': u.ru_utime + u.ru_stime,"
    " 'stdout': p.stdout.decode()[-2000:], 'stderr': p.stderr.decode()[-2000:]}))\n"
)


@dataclass
class Row:
    scenario: str
    sink: str
    peer: str
    messages: int
    recipients: int
    seconds: float
    rss_mb: float
    verified: bool

    @property
    def msg_rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def rcpt_rate(self) -> float:
        return self.recipients / self.seconds if self.seconds else 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SinkProcess:
    """The sink in its own process, so it does not share the client's interpreter."""

    def __init__(self, kind: str, *, latency_ms: float = 0, chunking: bool = True) -> None:
        self.kind = kind
        self.port = free_port()
        self.stats_file = Path(tempfile.mkstemp(suffix=".json")[1])
        if kind == "bulkmail":
            cmd = [sys.executable, "-m", "bulkmail", "sink", "--port", str(self.port),
                   "--stats-file", str(self.stats_file), "--latency", str(latency_ms)]
            if not chunking:
                cmd.append("--no-chunking")
        else:
            # -c counters; backlog 1024
            cmd = [SMTP_SINK, "-u", "nobody", f"127.0.0.1:{self.port}", "1024"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{kind} sink did not start")

    def counters(self) -> dict[str, int] | None:
        if self.kind != "bulkmail":
            return None
        time.sleep(1.2)  # the stats file is rewritten every second
        return json.loads(self.stats_file.read_text())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.stats_file.unlink(missing_ok=True)


def measured(cmd: list[str], cwd: Path) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *cmd], cwd=cwd,
                         capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    if result["rc"] not in (0,):
        raise RuntimeError(f"{cmd[:4]} failed: {result['stderr']}")
    return result


def write_inputs(work: Path, messages: int, rcpts: int, domains: int, personalised: bool) -> None:
    if personalised:
        with open(work / "rcpts.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["email", "n"])
            for n in range(messages):
                w.writerow([f"reader{n}@d{n % domains}.test", str(n)])
        (work / "msg.eml").write_text(
            "From: news@sender.test\nTo: reader${n}@example.test\nSubject: issue ${n}\n\n"
            "Hello reader ${n}, this is your personalised newsletter.\n"
        )
    else:
        with open(work / "rcpts.txt", "w") as f:
            for i in range(messages * rcpts):
                f.write(f"r{i}@d{i % domains}.test\n")
        (work / "msg.eml").write_text(
            "From: news@sender.test\nTo: readers@example.test\nSubject: the newsletter\n\n"
            "Hello reader, this is the newsletter.\n"
        )


def run_bulkmail(work: Path, sink: SinkProcess, connections: int, rcpts: int,
                 personalised: bool, journal: bool = True,
                 processes: int = 1, extra: list[str] | None = None,
                 wrap: list[str] | None = None) -> dict[str, object]:
    journal_path = work / "journal.sqlite"
    for old in work.glob("journal.sqlite*"):  # with --processes: its .partK-of-N shards too
        old.unlink()
    cmd = ["bulkmail", "send", "--sender", "news@sender.test",
           "--recipients", str(work / ("rcpts.csv" if personalised else "rcpts.txt")),
           "--message", str(work / "msg.eml"), "--relay", f"127.0.0.1:{sink.port}",
           "--tls", "none", "--connections", str(connections), "--max-rcpts", str(rcpts),
           "--quiet", "--processes", str(processes)]
    cmd += ["--journal", str(journal_path)] if journal else ["--no-journal"]
    return measured((wrap or []) + cmd + (extra or []), work)


def run_peer(peer: str, sink: SinkProcess, messages: int, rcpts: int, connections: int,
             domains: int) -> dict[str, object]:
    if peer == "smtp-source":
        cmd = [SMTP_SOURCE, "-d", "-s", str(connections), "-m", str(messages),
               "-r", str(rcpts), "-N", "-f", "news@sender.test", "-t", "r@d.test",
               f"127.0.0.1:{sink.port}"]
    else:
        script = PEERS / f"{peer}_peer.py"
        cmd = [sys.executable, str(script), "--port", str(sink.port), "--messages",
               str(messages), "--rcpts", str(rcpts), "--connections", str(connections),
               "--domains", str(domains)]
    return measured(cmd, PEERS)


def scenario_rows(name: str, sink_kind: str, args: argparse.Namespace, work: Path) -> list[Row]:
    scale = args.scale
    rows: list[Row] = []
    conn = args.connections
    if name == "a":
        spec = [("a", int(100_000 * scale), 1, 1, True, 0.0, True)]
    elif name == "b":
        spec = [("b", int(200_000 * scale) // 50, 50, 200, False, 0.0, True)]
    elif name == "c":
        if sink_kind != "bulkmail":
            return []
        spec = [("c chunking", int(5000 * scale), 1, 1, True, 20.0, True),
                ("c no chunking", int(5000 * scale), 1, 1, True, 20.0, False)]
    else:
        return []
    for label, messages, per_msg, domains, personalised, latency, chunking in spec:
        write_inputs(work, messages, per_msg, domains, personalised)
        peers = [*(f"bulkmail -p{n}" if n > 1 else "bulkmail" for n in args.processes),
                 "aiosmtplib", "smtplib"]
        if os.path.exists(SMTP_SOURCE) and latency == 0:
            peers.append("smtp-source")
        if not (latency and chunking):  # the floor pipelines DATA, never BDAT
            peers.append("floor")
        if args.peers is not None:
            wanted = set(args.peers.split(","))
            peers = [p for p in peers if p.startswith("bulkmail") or p in wanted]
        for peer in peers:
            sink = SinkProcess(sink_kind, latency_ms=latency, chunking=chunking)
            try:
                if latency and peer == "bulkmail" and not chunking:
                    args.rtt = probe_rtt(sink.port)  # before the run, on an idle sink
                if peer.startswith("bulkmail"):
                    count = messages
                    processes = int(peer.partition("-p")[2] or 1)
                    result = run_bulkmail(work, sink, conn, per_msg, personalised,
                                          processes=processes)
                else:
                    share = 1.0 if peer in FULL_SHARE else args.peer_share
                    count = max(conn, int(messages * share))
                    if latency and peer not in FULL_SHARE:
                        count = max(conn, int(messages * min(1.0, args.peer_share * 2)))
                    result = run_peer(peer, sink, count, per_msg, conn, domains)
                counters = sink.counters()
            finally:
                sink.stop()
            verified = counters is None or (
                counters["messages"] == count and counters["recipients"] == count * per_msg
            )
            wall = float(result["wall"])  # type: ignore[arg-type]
            rows.append(Row(label, sink_kind, peer, count, count * per_msg, wall,
                            int(result["rss_kb"]) / 1024, verified))  # type: ignore[call-overload]
            print(f"  {label:<14} {sink_kind:<9} {peer:<12} {rows[-1].msg_rate:>10,.0f} msg/s"
                  f" {rows[-1].rcpt_rate:>11,.0f} rcpt/s  {'ok' if verified else 'COUNT MISMATCH'}",
                  flush=True)
    return rows


def scenario_d(args: argparse.Namespace, work: Path) -> list[Row]:
    n = int(1_000_000 * args.scale)
    write_inputs(work, n, 1, 200, personalised=False)
    rows = []
    for journal in (True, False):
        sink = SinkProcess("bulkmail")
        try:
            result = run_bulkmail(work, sink, args.connections, 50, False, journal=journal)
            counters = sink.counters()
        finally:
            sink.stop()
        verified = counters is not None and counters["recipients"] == n
        label = "d journal" if journal else "d no journal"
        rows.append(Row(label, "bulkmail", "bulkmail", -(-n // 50), n,
                        float(result["wall"]),  # type: ignore[arg-type]
                        int(result["rss_kb"]) / 1024, verified))  # type: ignore[call-overload]
        print(f"  {label:<14} {n:,} recipients in {rows[-1].seconds:.1f}s,"
              f" peak RSS {rows[-1].rss_mb:.0f} MB {'ok' if verified else 'COUNT MISMATCH'}",
              flush=True)
    return rows


class Scraper:
    """GETs ``/metrics`` every ``interval`` seconds from a thread while a run goes
    (what a Prometheus server does, faster): counts the scrapes that answered."""

    def __init__(self, port: int, interval: float) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval = interval
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    response.read()
                self.answered += 1
            except OSError:
                pass  # not listening yet, or the run has ended

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.answered


def metrics_ab(args: argparse.Namespace, work: Path) -> None:
    """Scenario b without and with ``--metrics``, alternating (the order flips
    every round, so drift in a busy machine falls on both sides), each checked
    against the sink's counts when it is the project's sink; prints each run,
    the medians and the median of the per-round ratios, of wall time and of
    the process's CPU time (user + sys: on a busy machine the steadier one).
    With ``--callgrind`` each run is counted in instructions under valgrind
    instead (about 100 times slower, and nearly blind to the machine's load)."""
    n = int(200_000 * args.scale) // 50
    write_inputs(work, n, 50, 200, personalised=False)
    kind = "postfix" if os.path.exists(SMTP_SINK) and "postfix" in args.sinks else "bulkmail"
    walls: dict[str, list[float]] = {"plain": [], "metrics": []}
    cpus: dict[str, list[float]] = {"plain": [], "metrics": []}
    wrap = (["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
            if args.callgrind else None)
    for rnd in range(args.metrics_ab):
        for side in (("plain", "metrics") if rnd % 2 == 0 else ("metrics", "plain")):
            sink = SinkProcess(kind)
            scraper = None
            extra: list[str] = []
            if side == "metrics":
                port = free_port()
                extra = ["--metrics", f"127.0.0.1:{port}"]
                if args.scrape_every:
                    scraper = Scraper(port, args.scrape_every)
            try:
                result = run_bulkmail(work, sink, args.connections, 50, False, extra=extra,
                                      wrap=wrap)
                counters = sink.counters()
            finally:
                scrapes = scraper.stop() if scraper is not None else 0
                sink.stop()
            if counters is not None and counters["recipients"] != n * 50:
                raise RuntimeError(f"{side}: the sink counted {counters}, not {n * 50}")
            wall = float(result["wall"])  # type: ignore[arg-type]
            walls[side].append(wall)
            cpus[side].append(float(result["cpu"]))  # type: ignore[arg-type]
            if wrap is not None:  # "==pid== Collected : 123456789"
                found = re.search(r"Collected : (\d+)", str(result["stderr"]))
                assert found is not None, result["stderr"]
                cpus[side][-1] = int(found.group(1)) / 1e9
            note = f"  {scrapes} scrapes" if scraper is not None else ""
            unit = "G instructions" if wrap is not None else "s cpu"
            print(f"  b round {rnd + 1:<2} {side:<7} {wall:6.3f} s wall"
                  f" {cpus[side][-1]:6.3f} {unit} {n * 50 / wall:>10,.0f} rcpt/s{note}",
                  flush=True)
    print(f"b on {kind}'s sink, {args.metrics_ab} rounds:")
    cost = ("instructions", "G") if wrap is not None else ("cpu (user+sys)", "s")
    for (what, unit), values in ((("wall", "s"), walls), (cost, cpus)):
        plain, metric = statistics.median(values["plain"]), statistics.median(values["metrics"])
        ratios = [m / p for p, m in zip(values["plain"], values["metrics"], strict=True)]
        print(f"  {what}: median {plain:.3f} {unit} without --metrics, {metric:.3f} {unit} with"
              f" ({metric / plain - 1:+.1%}); median of the rounds' ratios"
              f" {statistics.median(ratios) - 1:+.1%}")


def compile_bytecode() -> None:
    """Compile bulkmail's modules once, as installing a wheel does: an editable
    install under PYTHONDONTWRITEBYTECODE would compile them at every CLI start."""
    spec = importlib.util.find_spec("bulkmail")  # the venv the CLI runs from
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            # best effort: a read-only install was compiled when it was installed
            subprocess.run([sys.executable, "-m", "compileall", "-q", location], check=False)


def probe_rtt(port: int, n: int = 50) -> float:
    """The sink's real round trip (median of ``n`` lock-step NOOPs): a simulated
    latency is slept by the sink's event loop, which overshoots a little."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        f = sock.makefile("rb")
        f.readline()  # greeting
        times = []
        for _ in range(n):
            start = time.perf_counter()
            sock.sendall(b"NOOP\r\n")
            f.readline()
            times.append(time.perf_counter() - start)
        sock.sendall(b"QUIT\r\n")
    return sorted(times)[n // 2]


def find(rows: list[Row], scenario: str, sink: str, peer: str) -> Row | None:
    return next((r for r in rows if (r.scenario, r.sink, r.peer) == (scenario, sink, peer)), None)


def targets(rows: list[Row], rtt: float | None, connections: int, latency: float) -> list[str]:
    """Issue 7's targets, each a ratio from this run."""
    out = []
    for r in rows:  # issue 17.5: --processes N beside --processes 1, same sink
        one = find(rows, r.scenario, r.sink, "bulkmail")
        if r.peer.startswith("bulkmail -p") and one is not None:
            out.append(f"{r.scenario} on {r.sink}'s sink: {r.peer} {r.msg_rate:,.0f} msg/s ="
                       f" {r.msg_rate / one.msg_rate:.2f}x of --processes 1"
                       f" ({one.msg_rate:,.0f} msg/s)")
    for scenario, unit in (("a", "msg_rate"), ("b", "rcpt_rate")):
        ours = find(rows, scenario, "postfix", "bulkmail")
        theirs = find(rows, scenario, "postfix", "smtp-source")
        aio = find(rows, scenario, "postfix", "aiosmtplib")
        if ours and theirs:
            mine, other = getattr(ours, unit), getattr(theirs, unit)
            extra = f", {mine / getattr(aio, unit):.1f}x aiosmtplib" if aio else ""
            out.append(f"{scenario}: bulkmail {mine:,.0f} vs smtp-source {other:,.0f}"
                       f" {unit.split('_')[0]}/s on smtp-sink = {mine / other:.2f}x{extra}")
        floor = find(rows, scenario, "postfix", "floor")
        if ours and floor:
            out.append(f"{scenario}: bulkmail is {getattr(ours, unit) / getattr(floor, unit):.0%}"
                       f" of the bare pipelining loop ({getattr(floor, unit):,.0f}"
                       f" {unit.split('_')[0]}/s)")
    plain = find(rows, "c no chunking", "bulkmail", "bulkmail")
    if plain:
        nominal = connections / latency
        line = (f"c: no CHUNKING {plain.msg_rate:,.0f} msg/s = {plain.msg_rate / nominal:.0%} of"
                f" {nominal:,.0f} (one {latency * 1000:g} ms round trip per message)")
        if rtt:
            line += (f"; {plain.msg_rate * rtt / connections:.0%} of the {connections / rtt:,.0f}"
                     f" the sink's idle {rtt * 1000:.1f} ms round trip allows")
        floor = find(rows, "c no chunking", "bulkmail", "floor")
        if floor:
            line += (f"; {plain.msg_rate / floor.msg_rate:.0%} of the bare pipelining loop's"
                     f" {floor.msg_rate:,.0f} on the same sink")
        out.append(line)
    chunked = find(rows, "c chunking", "bulkmail", "bulkmail")
    aio = find(rows, "c chunking", "bulkmail", "aiosmtplib")
    if chunked and aio:
        ratio = chunked.msg_rate / aio.msg_rate
        out.append(f"c: CHUNKING {chunked.msg_rate:,.0f} msg/s = {ratio:.0f}x"
                   f" aiosmtplib ({aio.msg_rate:,.0f})")
    with_j = find(rows, "d journal", "bulkmail", "bulkmail")
    without = find(rows, "d no journal", "bulkmail", "bulkmail")
    if with_j and without:
        out.append(f"d: {with_j.recipients:,} recipients in {with_j.seconds:.1f} s with the"
                   f" journal ({with_j.rss_mb:.0f} MB peak RSS), {without.seconds:.1f} s without:"
                   f" the journal costs {with_j.seconds / without.seconds - 1:.0%}")
    return out


def table(rows: list[Row]) -> str:
    out = ["| scenario | sink | client | messages/s | recipients/s | peak RSS MB | vs bulkmail |",
           "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    base = {(r.scenario, r.sink): r for r in rows if r.peer == "bulkmail"}
    for r in rows:
        ref = base.get((r.scenario, r.sink))
        by_rcpt = r.scenario.startswith(("b", "d"))
        key = r.rcpt_rate if by_rcpt else r.msg_rate
        ref_key = 0.0
        if ref is not None:
            ref_key = ref.rcpt_rate if by_rcpt else ref.msg_rate
        ratio = f"{key / ref_key:.2f}x" if ref_key else "-"
        mark = "" if r.verified else " (count mismatch!)"
        out.append(f"| {r.scenario} | {r.sink} | {r.peer}{mark} | {r.msg_rate:,.0f} |"
                   f" {r.rcpt_rate:,.0f} | {r.rss_mb:.0f} | {ratio} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenarios", "--scenario", default="a,b,c,d",
                   help="comma-separated, e.g. f alone: --scenario f")
    p.add_argument("--sinks", default="bulkmail,postfix",
                   help="bulkmail (the project's sink) and/or postfix (smtp-sink, if installed)")
    p.add_argument("--connections", type=int, default=10)
    p.add_argument("--scale", type=float, default=1.0, help="multiply every scenario's size")
    p.add_argument("--peer-share", type=float, default=0.1,
                   help="share of the work the slower Python peers run")
    p.add_argument("--processes", default="1",
                   help="bulkmail's --processes, comma-separated: 1,2 runs both"
                        " (rows 'bulkmail' and 'bulkmail -p2'; the connections are shared)")
    p.add_argument("--peers", default=None,
                   help="comma-separated peers to run besides bulkmail (default: all)")
    p.add_argument("--json", default="bench-results.json")
    p.add_argument("--metrics-ab", type=int, default=0, metavar="ROUNDS",
                   help="only this: scenario b without and with --metrics, alternating,"
                        " ROUNDS pairs; medians (on Postfix's sink when --sinks has it)")
    p.add_argument("--scrape-every", type=float, default=0.0, metavar="SECONDS",
                   help="with --metrics-ab: scrape the endpoint this often during a run")
    p.add_argument("--callgrind", action="store_true",
                   help="with --metrics-ab: count each run's instructions under valgrind")
    args = p.parse_args()
    args.processes = [int(n) for n in args.processes.split(",")]
    if shutil.which("bulkmail") is None:
        sys.exit("bulkmail is not installed in this environment (pip install -e .)")
    compile_bytecode()
    if args.metrics_ab:
        with tempfile.TemporaryDirectory() as tmp:
            metrics_ab(args, Path(tmp))
        return
    sinks = [s for s in args.sinks.split(",") if s != "postfix" or os.path.exists(SMTP_SINK)]
    rows: list[Row] = []
    tail: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for scenario in args.scenarios.split(","):
            if scenario == "d":
                rows += scenario_d(args, work)
                continue
            if scenario == "e":
                # its own script (workers, a database, a kill): run as it is,
                # its table printed as it goes
                done = subprocess.run([sys.executable,
                                       str(Path(__file__).with_name("scenario_e.py")),
                                       "--scale", str(args.scale)])
                if done.returncode:
                    print(f"  scenario e failed (exit {done.returncode}): see above;"
                          " it needs PostgreSQL (scenario_e.py --db URL)", flush=True)
                continue
            if scenario == "f":
                tail += scenario_f.scenario_f(args, work)
                continue
            for sink in sinks:
                rows += scenario_rows(scenario, sink, args, work)
    print()
    print(f"{platform.node()} · {os.cpu_count()} cores · Python {platform.python_version()} · "
          f"{time.strftime('%Y-%m-%d')} · connections {args.connections} · scale {args.scale}")
    if rows:
        print(table(rows))
        print()
    if tail:
        print(scenario_f.table(tail))
    for line in targets(rows, getattr(args, "rtt", None), args.connections, 0.020):
        print(f"* {line}")
    for line in scenario_f.targets(tail):
        print(f"* {line}")
    Path(args.json).write_text(json.dumps(
        [asdict(r) | {"msg_rate": r.msg_rate, "rcpt_rate": r.rcpt_rate} for r in rows] + tail,
        indent=2))


if __name__ == "__main__":
    main()
