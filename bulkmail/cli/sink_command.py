"""``bulkmail sink``: run the local SMTP sink until SIGINT / SIGTERM.

Prints ``listening on HOST:PORT`` on stderr once bound, and on exit its
counters as one line of JSON on stdout (keys ``sessions``, ``messages``,
``recipients``, ``bytes`` and more), so a benchmark or a test can compare
what was sent with what arrived.
"""

from __future__ import annotations

import argparse
import functools
import sys

import trio

from ..sink import SinkConfig, run_sink


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=2525, help="0 picks a free port (default 2525)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--hostname", default="sink.bulkmail.test", help="name in greeting and EHLO")
    p.add_argument("--latency", type=float, default=0.0, metavar="MS",
                   help="simulated round trip in milliseconds, paid once per reply batch")
    p.add_argument("--defer-rate", type=float, default=0.0, metavar="P",
                   help="probability of 450 4.2.1 to a RCPT")
    p.add_argument("--reject-rate", type=float, default=0.0, metavar="P",
                   help="probability of 550 5.1.1 to a RCPT")
    p.add_argument("--greylist", action="store_true", help="451 to each recipient's first try")
    p.add_argument("--max-rcpts", type=int, default=None, metavar="K",
                   help="452 4.5.3 past K recipients per transaction")
    p.add_argument("--drop-rate", type=float, default=0.0, metavar="P",
                   help="probability of disconnecting after a message's content, before its reply")
    p.add_argument("--no-pipelining", action="store_true", help="do not advertise PIPELINING")
    p.add_argument("--no-chunking", action="store_true", help="do not offer CHUNKING (BDAT)")
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain (enables STARTTLS)")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key")
    p.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte")
    p.add_argument("--auth", metavar="USER:PASS", help="offer AUTH PLAIN LOGIN; MAIL needs it")
    p.add_argument("--stats-file", metavar="PATH", help="JSON counters, rewritten every second")
    p.add_argument("--seed", type=int, default=None, help="makes the faults repeatable")
    p.add_argument("--idle-timeout", type=float, default=300.0, metavar="SECONDS")
    p.add_argument("--max-message-size", type=int, default=50 * 1024 * 1024, metavar="OCTETS")


def config_from(args: argparse.Namespace) -> SinkConfig:
    """The :class:`SinkConfig` the arguments ask for; ValueError if inconsistent."""
    auth = None
    if args.auth is not None:
        user, sep, password = args.auth.partition(":")
        if not sep or not user:
            raise ValueError("--auth takes USER:PASS")
        auth = (user, password)
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
        max_message_size=args.max_message_size,
        idle_timeout=args.idle_timeout,
        latency=args.latency / 1000.0,
        defer_rate=args.defer_rate,
        reject_rate=args.reject_rate,
        greylist=args.greylist,
        max_rcpts=args.max_rcpts,
        drop_rate=args.drop_rate,
        seed=args.seed,
        stats_file=args.stats_file,
    )


def _announce(host: str, port: int) -> None:
    print(f"listening on {host}:{port}", file=sys.stderr, flush=True)


def _raise_open_file_limit() -> None:
    """Thousands of concurrent clients need thousands of descriptors."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from(args)
    except ValueError as exc:
        print(f"bulkmail sink: {exc}", file=sys.stderr)
        return 2
    _raise_open_file_limit()
    try:
        stats = trio.run(functools.partial(run_sink, config, on_listening=_announce))
    except OSError as exc:  # port in use, unreadable certificate, ...
        print(f"bulkmail sink: {exc}", file=sys.stderr)
        return 2
    print(stats.to_json(), flush=True)
    return 0
