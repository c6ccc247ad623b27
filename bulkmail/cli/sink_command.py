"""``bulkmail sink``: run the local SMTP sink until SIGINT / SIGTERM.

On exit it prints its counters as one line of JSON on stdout (keys
``sessions``, ``messages``, ``recipients``, ``bytes`` and more), so a
benchmark or a test can compare what was sent with what arrived.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

import trio
from trio_util import periodic

from ..sink import Sink, SinkConfig, SinkStats


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=2525, help="0 picks a free port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--hostname", default="sink.bulkmail.test", help="name in greeting and EHLO")
    p.add_argument("--latency", type=float, default=0.0, metavar="MS",
                   help="simulated round trip, added once per reply group")
    p.add_argument("--defer-rate", type=float, default=0.0, metavar="P")
    p.add_argument("--reject-rate", type=float, default=0.0, metavar="P")
    p.add_argument("--greylist", action="store_true", help="451 to each recipient's first try")
    p.add_argument("--max-rcpts", type=int, default=None, metavar="K", help="452 past K")
    p.add_argument("--drop-rate", type=float, default=0.0, metavar="P",
                   help="disconnect after the content, before the reply")
    p.add_argument("--no-pipelining", action="store_true")
    p.add_argument("--no-chunking", action="store_true")
    p.add_argument("--tls-cert", metavar="FILE")
    p.add_argument("--tls-key", metavar="FILE")
    p.add_argument("--implicit-tls", action="store_true")
    p.add_argument("--auth", metavar="USER:PASS")
    p.add_argument("--stats-file", metavar="PATH", help="JSON counters, rewritten every second")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--idle-timeout", type=float, default=300.0)


def config_from(args: argparse.Namespace) -> SinkConfig:
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep:
            raise ValueError("--auth takes USER:PASS")
        auth = (user, password)
    if bool(args.tls_cert) != bool(args.tls_key) or (args.implicit_tls and not args.tls_cert):
        raise ValueError("--tls-cert and --tls-key go together (and --implicit-tls needs them)")
    return SinkConfig(
        host=args.host,
        port=args.port,
        hostname=args.hostname,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        implicit_tls=args.implicit_tls,
        auth=auth,
        pipelining=not args.no_pipelining,
        chunking=not args.no_chunking,
        idle_timeout=args.idle_timeout,
        latency=args.latency / 1000.0,
        defer_rate=args.defer_rate,
        reject_rate=args.reject_rate,
        greylist=args.greylist,
        max_rcpts=args.max_rcpts,
        drop_rate=args.drop_rate,
        seed=args.seed,
    )


def write_stats(path: Path, stats: SinkStats) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(stats.to_json() + "\n")
    tmp.replace(path)


async def run_sink(config: SinkConfig, stats_file: Path | None = None) -> SinkStats:
    sink = Sink(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(sink.serve)
            print(f"listening on {config.host}:{port}", file=sys.stderr, flush=True)

            async def stats_writer() -> None:
                assert stats_file is not None
                async for _ in periodic(1.0):
                    write_stats(stats_file, sink.stats)

            if stats_file is not None:
                nursery.start_soon(stats_writer)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    if stats_file is not None:
        write_stats(stats_file, sink.stats)
    return sink.stats


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from(args)
    except ValueError as exc:
        print(f"bulkmail sink: {exc}", file=sys.stderr)
        return 2
    try:
        stats = trio.run(run_sink, config, Path(args.stats_file) if args.stats_file else None)
    except OSError as exc:
        print(f"bulkmail sink: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(stats.as_dict(), sort_keys=True), flush=True)
    return 0
