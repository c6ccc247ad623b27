"""``bulkmail worker --db URL [--job ID] [--follow]``: send a stored job's
recipients (or every job's) from this machine, alongside any number of
other workers.

Exit status as ``send``'s: 0 once every recipient of the jobs it worked is
delivered, bounced or suppressed; 75 when some are still deferred, or it
was stopped (SIGTERM/SIGINT: transactions in flight finish, the rest goes
back to the database for the other workers); 2 for usage errors.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace

import trio

from ..api import MailerConfig
from ..delivery.health import ShapingAction
from ..observe import RunMetrics
from ..results import Result
from ..store import PgStore, StoreError
from ..store.job_state import check_job
from ..store.worker import EX_TEMPFAIL, Worker, WorkerSettings, run_worker
from ..store.worker_hooks import LeaseLost
from .inputs import InputError
from .metrics_serve import start_metrics
from .progress import Progress
from .send_command import build_config
from .send_options import EGRESS_OPTIONS, add_send_options, send_defaults, send_type

DEFAULTS = WorkerSettings()

EX_USAGE = 2

EXAMPLE = """example:
  bulkmail worker --db postgresql://bulkmail@db.internal/mail --job 7 \\
      --source-address 192.0.2.10
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, metavar="URL",
                        help="postgresql://user@host/db (schema via ?schema=NAME)")
    parser.add_argument("--job", type=int, metavar="ID",
                        help="work this job only (default: every active job)")
    parser.add_argument("--follow", action="store_true",
                        help="keep waiting for new work instead of exiting when done")
    parser.add_argument("--lease", type=send_type("retry_first"), default=DEFAULTS.lease,
                        metavar="DURATION",
                        help="how long claimed recipients stay this worker's without a "
                             "heartbeat: a dead worker's are taken over after it (default 30s)")
    parser.add_argument("--claim-size", type=int, default=DEFAULTS.claim_size, metavar="N",
                        help="most recipients of one destination per claim"
                             f" (default {DEFAULTS.claim_size})")
    parser.add_argument("--max-leased", type=int, default=DEFAULTS.max_leased, metavar="N",
                        help="recipients this worker holds at once, claimed and not final"
                             f" yet (default {DEFAULTS.max_leased})")
    add_send_options(parser, EGRESS_OPTIONS)


def run(args: argparse.Namespace) -> int:
    try:
        if args.lease <= 0 or args.claim_size < 1 or args.max_leased < 1:
            raise InputError("--lease, --claim-size and --max-leased must be positive")
        config = _mailer_config(args)
    except (InputError, StoreError, ValueError, OSError) as exc:
        print(f"bulkmail worker: {exc}", file=sys.stderr)
        return EX_USAGE
    settings = WorkerSettings(job=args.job, follow=args.follow, lease=args.lease,
                              claim_size=args.claim_size, max_leased=args.max_leased)
    try:
        return trio.run(_work, args, config, settings)
    except StoreError as exc:
        return _failed(exc)
    except BaseExceptionGroup as group:
        refused, rest = group.split(InputError)  # --metrics: a port that cannot be bound
        if refused is not None and rest is None:
            print(f"bulkmail worker: {_first(refused)}", file=sys.stderr)
            return EX_USAGE
        matched, rest = group.split(StoreError)
        if matched is None or rest is not None:
            raise
        return _failed(_first(matched))


def _mailer_config(args: argparse.Namespace) -> MailerConfig:
    """``send``'s configuration from this worker's options, with the job's
    recipients per transaction when it works one job (whose options are
    checked now: exit 2 for a job it could not send)."""
    merged = send_defaults()
    for name, value in vars(args).items():
        setattr(merged, name, value)
    with PgStore(args.db) as store:  # an unreachable database is a usage error, now
        if args.job is not None:
            merged.max_rcpts = check_job(store, args.job).max_rcpts
    return build_config(merged)


async def _work(args: argparse.Namespace, config: MailerConfig, settings: WorkerSettings) -> int:
    progress = Progress(enabled=not args.quiet, total=None)
    workers: list[Worker] = []
    status = EX_TEMPFAIL  # unless the worker ends by itself

    def on_results(results: Sequence[Result]) -> None:
        progress.add_all(results)

    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    if workers and not workers[0].stopping:
                        progress.message("stopping: finishing in-flight transactions")
                        workers[0].stop()
                    else:  # a second signal: leave now; in-doubt marks are committed
                        nursery.cancel_scope.cancel()
                        return

        nursery.start_soon(watch_signals)
        nursery.start_soon(progress.run)
        if args.metrics:  # this worker's own counters; the job's totals are in the store
            metrics = RunMetrics(args.metrics_sites)
            config = replace(config, metrics=metrics)
            await start_metrics(nursery, metrics, args.metrics, args.quiet)
        def log(line: str) -> None:  # reply rules' actions: logged even when --quiet
            if progress.enabled:
                progress.message(line)
            else:
                print(line, file=sys.stderr, flush=True)

        def on_action(action: ShapingAction) -> None:
            log(action.describe())

        def on_remote(action: ShapingAction, worker: str) -> None:
            log(f"{action.describe()} [from worker {worker}]")

        config = replace(config, on_shaping_action=on_action)
        try:
            status = await run_worker(args.db, config, settings, on_results=on_results,
                                      on_start=workers.append, on_remote_action=on_remote)
        finally:
            progress.close()
        nursery.cancel_scope.cancel()
    if not args.quiet and workers:
        worker = workers[0]
        notes = [f"{worker.claims:,} claims"]
        if worker.released:
            notes.append(f"{worker.released:,} handed back unsent")
        if worker.writer.lost:
            notes.append(f"{worker.writer.lost:,} results not written: those recipients"
                         " had been taken over by another worker, whose result counts")
        print(f"{progress.line()}; {', '.join(notes)}", file=sys.stderr)
    return status


def _failed(exc: BaseException) -> int:
    if isinstance(exc, LeaseLost):
        print(f"bulkmail worker: {exc}", file=sys.stderr)
    else:
        print(f"bulkmail worker: {exc}; stopped taking work (its leases expire and other"
              " workers take its recipients over)", file=sys.stderr)
    return EX_TEMPFAIL


def _first(group: BaseExceptionGroup[Exception]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
