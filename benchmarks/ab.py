"""Before/after: bulkmail from two checkouts, alternating, against the same sinks.

    python benchmarks/ab.py --before ../old-checkout --after . [--scenarios a,b,c,d]
                            [--rounds 3] [--scale 1.0] [--connections 10]
                            [--after-args "--max-in-doubt 0"]

A change that claims "no slower" shows this: each checkout runs its own CLI
(``<checkout>/.venv/bin/bulkmail``), in alternating order every round so drift
in the machine's state (page cache, thermal, a neighbour) falls on both sides
alike.  The sinks are fixed for both sides: Postfix's smtp-sink for a and b
when installed (else the project's sink), and the project's sink of the
interpreter running this script for c (20 ms round trip) and d -- the same
for both sides, so the measuring stick does not move with the change under
test (run it with the newer checkout's Python: an older sink may lack
options this harness passes).  ``--after-args`` gives the newer side options
the older lacks, to compare like with like (``--max-in-doubt 0``: BDAT
windows bounded by ``--window`` alone, as before the in-doubt budget).
Prints every run and the mean ratio after/before per scenario (below 1.00
is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import SMTP_SINK, SinkProcess, write_inputs

#: scenario -> (messages, recipients per message, domains, personalised, latency ms, chunking)
SPECS: dict[str, tuple[int, int, int, bool, float, bool]] = {
    "a": (100_000, 1, 1, True, 0.0, True),
    "b": (4_000, 50, 200, False, 0.0, True),
    "c": (5_000, 1, 1, True, 20.0, False),
    "d": (20_000, 50, 200, False, 0.0, True),
}


def compile_checkout(checkout: Path) -> None:
    """Compile the checkout's modules once, as installing a wheel does.  Under
    PYTHONDONTWRITEBYTECODE an editable install compiles every module at each
    CLI start, and the side with more code pays more: importing the
    redesigned CLI took 330 ms of CPU from source and 226 ms from bytecode,
    2fe5c48's 227 and 184 (min of 7, busy machine) -- from source the gap
    grows by ~60 ms a run, about 4% of scenario b's 1.6 s."""
    subprocess.run([str(checkout / ".venv" / "bin" / "python"), "-m", "compileall", "-q",
                    str(checkout / "bulkmail")], check=False, stdout=subprocess.DEVNULL)


def run_side(checkout: Path, work: Path, port: int, args: argparse.Namespace,
             per_msg: int, personalised: bool, extra: list[str]) -> tuple[float, float]:
    """One ``bulkmail send`` from ``checkout``: (wall seconds, peak RSS MB)."""
    journal = work / "journal.sqlite"
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{journal}{suffix}").unlink(missing_ok=True)
    cmd = [str(checkout / ".venv" / "bin" / "bulkmail"), "send",
           "--sender", "news@sender.test",
           "--recipients", str(work / ("rcpts.csv" if personalised else "rcpts.txt")),
           "--message", str(work / "msg.eml"), "--relay", f"127.0.0.1:{port}",
           "--tls", "none", "--connections", str(args.connections),
           "--max-rcpts", str(per_msg if per_msg > 1 else 50), "--quiet",
           "--journal", str(journal), *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        assert proc.stderr is not None
        raise RuntimeError(f"{checkout}: {proc.stderr.read().decode()[-500:]}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, required=True)
    p.add_argument("--after", type=Path, required=True)
    p.add_argument("--scenarios", default="a,b,c,d")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--connections", type=int, default=10)
    p.add_argument("--after-args", default="", help="more `bulkmail send` options, after only")
    args = p.parse_args()
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    postfix = os.path.exists(SMTP_SINK)
    for checkout in sides.values():
        compile_checkout(checkout)
    for name in args.scenarios.split(","):
        messages, per_msg, domains, personalised, latency, chunking = SPECS[name]
        messages = max(args.connections, int(messages * args.scale))
        walls: dict[str, list[float]] = {"before": [], "after": []}
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            write_inputs(work, messages, per_msg, domains, personalised)
            for rnd in range(args.rounds):
                order = ["before", "after"] if rnd % 2 == 0 else ["after", "before"]
                for side in order:
                    kind = "postfix" if postfix and name in ("a", "b") else "bulkmail"
                    sink = SinkProcess(kind, latency_ms=latency, chunking=chunking)
                    try:
                        wall, rss = run_side(sides[side], work, sink.port, args,
                                             per_msg, personalised,
                                             args.after_args.split() if side == "after" else [])
                    finally:
                        sink.stop()
                    walls[side].append(wall)
                    print(f"{name} round {rnd + 1} {side:<6} {wall:7.2f} s "
                          f"{messages * per_msg / wall:>10,.0f} rcpt/s  {rss:5.0f} MB",
                          flush=True)
        before, after = statistics.mean(walls["before"]), statistics.mean(walls["after"])
        print(f"{name}: before {before:.2f} s, after {after:.2f} s, "
              f"after/before = {after / before:.3f}", flush=True)


if __name__ == "__main__":
    main()
