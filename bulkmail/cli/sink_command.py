"""``bulkmail sink``: run the local SMTP sink until SIGINT / SIGTERM.

Prints ``listening on HOST:PORT`` on stderr once bound, and on exit its
counters as one line of JSON on stdout (keys ``sessions``, ``messages``,
``recipients``, ``bytes`` and more), so a benchmark or a test can compare
what was sent with what arrived.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys

import trio

from ..sink import SinkConfig, run_sink
from .options import at_least, listen_port, non_negative, positive_duration, probability

EXAMPLE = """\
example:
  bulkmail sink --port 2525 --latency 20 --defer-rate 0.05 --stats-file sink.json
  (then: bulkmail send ... --relay 127.0.0.1:2525 --tls none)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=listen_port, default=2525,
                   help="0 picks a free port (default 2525)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--hostname", default="sink.bulkmail.test", help="name in greeting and EHLO")
    p.add_argument("--latency", type=non_negative, default=0.0, metavar="MS",
                   help="simulated round trip in milliseconds, paid once per reply batch")
    p.add_argument("--defer-rate", type=probability, default=0.0, metavar="P",
                   help="probability of 450 4.2.1 to a RCPT")
    p.add_argument("--reject-rate", type=probability, default=0.0, metavar="P",
                   help="probability of 550 5.1.1 to a RCPT")
    p.add_argument("--greylist", action="store_true", help="451 to each recipient's first try")
    p.add_argument("--max-rcpts", type=at_least(1), default=None, metavar="K",
                   help="452 4.5.3 past K recipients per transaction")
    p.add_argument("--drop-rate", type=probability, default=0.0, metavar="P",
                   help="probability of disconnecting after a message's content, before its reply")
    p.add_argument("--no-pipelining", action="store_true", help="do not advertise PIPELINING")
    p.add_argument("--no-chunking", action="store_true", help="do not offer CHUNKING (BDAT)")
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain (enables STARTTLS)")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key")
    p.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte")
    p.add_argument("--auth", metavar="USER:PASS", help="offer AUTH PLAIN LOGIN; MAIL needs it")
    p.add_argument("--stats-file", metavar="PATH", help="JSON counters, rewritten every second")
    p.add_argument("--seed", type=int, default=None, help="makes the faults repeatable")
    p.add_argument("--idle-timeout", type=positive_duration, default=300.0, metavar="DURATION",
                   help="421 and close after this long without a command (default 300s)")
    p.add_argument("--max-message-size", type=at_least(1), default=50 * 1024 * 1024,
                   metavar="OCTETS", help="advertised SIZE; 552 beyond it (default 50 MiB)")
    p.add_argument("--max-connections", type=at_least(1), default=None, metavar="N",
                   help="concurrent sessions; a client beyond them gets 421 at once"
                        " (default: as many as the open-file limit leaves room for)")


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
        max_connections=args.max_connections,
    )


class _OneLineFormatter(logging.Formatter):
    """Log records as one line each: an operator running the sink wants to
    know that accept ran out of descriptors, not trio's traceback for it."""

    def formatException(self, ei: object) -> str:
        return ""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({record.exc_info[1]})"
        return text


def _log_one_line_per_event() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter("bulkmail sink: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)


def _announce(host: str, port: int) -> None:
    print(f"listening on {host}:{port}", file=sys.stderr, flush=True)


def _raise_open_file_limit() -> int | None:
    """Thousands of concurrent clients need thousands of descriptors; the
    limit now in force (None where there is none to read)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # an unlimited hard limit some systems refuse
            pass
    return None if soft == resource.RLIM_INFINITY else soft


#: descriptors kept free of sessions: listeners, stdio, trio's wakeup and
#: epoll, the stats file's rewrite, and the one a refused client is accepted on
RESERVED_DESCRIPTORS = 16
#: a plaintext session holds two: its socket and the lean stream's duplicate
DESCRIPTORS_PER_SESSION = 2


def default_max_connections(open_file_limit: int | None) -> int | None:
    """Sessions the limit leaves room for, so a client past them gets a 421
    instead of waiting in the accept queue for a descriptor."""
    if open_file_limit is None:
        return None
    return max(1, (open_file_limit - RESERVED_DESCRIPTORS) // DESCRIPTORS_PER_SESSION)


def run(args: argparse.Namespace) -> int:
    _log_one_line_per_event()
    limit = _raise_open_file_limit()
    if args.max_connections is None:
        args.max_connections = default_max_connections(limit)
    try:
        config = config_from(args)
    except ValueError as exc:
        print(f"bulkmail sink: {exc}", file=sys.stderr)
        return 2
    try:
        stats = trio.run(functools.partial(run_sink, config, on_listening=_announce))
    except OSError as exc:  # port in use, unreadable certificate, ...
        print(f"bulkmail sink: {exc}", file=sys.stderr)
        return 2
    print(stats.to_json(), flush=True)
    return 0
