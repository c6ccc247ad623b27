"""``bulkmail unsubscribe-server``: serve one-click unsubscribes (RFC 8058).

Valid POSTs add their address to the suppression store; the secret comes from
an environment variable (the same the sending side signs with).  Prints the
URL it listens on, serves until interrupted.  Exit status: 0 after Ctrl-C, 2
for usage errors (no secret, unusable store, address in use, no hypercorn).
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys

import trio

from ..suppression import SuppressionError, SuppressionStore
from ..unsubscribe_token import SecretError, key_from_env

EX_OK, EX_USAGE = 0, 2


EXAMPLE = """\
example:
  bulkmail unsubscribe-server --store suppressed.sqlite --secret-env UNSUB_KEY \\
      --listen 127.0.0.1:8080   # UNSUB_KEY holds the signing key
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, metavar="PATH", help="the suppression store")
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="address to serve on (default: %(default)s; port 0 picks one)")
    p.add_argument("--secret-env", required=True, metavar="VAR",
                   help="environment variable holding the token secret")


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("hypercorn") is None:
        print("bulkmail unsubscribe-server: needs hypercorn "
              "(pip install 'bulkmail[unsubscribe]')", file=sys.stderr)
        return EX_USAGE
    host, sep, port = args.listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        print(f"bulkmail unsubscribe-server: --listen wants HOST:PORT, not {args.listen!r}",
              file=sys.stderr)
        return EX_USAGE
    try:
        key = key_from_env(args.secret_env)
        store = SuppressionStore(args.store)
    except (SecretError, SuppressionError) as exc:
        print(f"bulkmail unsubscribe-server: {exc}", file=sys.stderr)
        return EX_USAGE
    from ..unsubscribe import UnsubscribeApp, serve

    async def main() -> None:
        # SIGINT/SIGTERM end the serving cleanly (no KeyboardInterrupt mid-request)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(serve, UnsubscribeApp(store, key), args.listen)
                print(f"bulkmail unsubscribe-server: listening on {' '.join(binds)}", flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    failure: OSError | None = None
    try:
        trio.run(main)
    except* OSError as group:  # the bind failed (in use, not permitted)
        failure = _first(group)
    finally:
        store.close()
    if failure is not None:
        print(f"bulkmail unsubscribe-server: cannot listen on {args.listen}: "
              f"{failure.strerror or failure}", file=sys.stderr)
        return EX_USAGE
    return EX_OK


def _first(group: BaseExceptionGroup[OSError]) -> OSError:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
