"""The sending half of ``bulkmail send``: one job's run, from the first
recipient read to the last result recorded, and how it stops.

Stops, and what each leaves (README, "Stopping"):

- first SIGINT/SIGTERM: ``Mailer.stop()`` -- no new transaction starts,
  those in flight finish, everything queued ends deferred; recipients not
  read yet are left for the rerun.
- second signal: leave at once; the journal holds every in-doubt mark, and
  the summary printed is what was counted until then.
- a journal or report that cannot be written: stop the same way (the engine
  refuses to send an end of data it could not mark in doubt), one error line.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import IO

import trio

from ..api import Mailer, MailerConfig
from ..delivery.connector import ConnectionFailure
from ..durable import ResumeCounts, outcome_of, send_durably
from ..errors import synthetic_reply
from ..journal import Journal, JournalError, JournalWriter
from ..message import Content
from ..protocol.replies import Reply
from ..results import Result, Status, Summary
from ..verp import verp_fits
from .inputs import InputError, read_recipients
from .progress import Progress
from .send_reputation import BounceSuppressor, class_counts
from .summary import ClassCounts

__all__ = ["RunOutcome", "send_job"]


@dataclass
class RunOutcome:
    """How a run ended, for the exit status and the lines printed."""

    summary: Summary = field(default_factory=Summary)
    #: a first signal asked to stop
    stopped: bool = False
    #: a second signal: left at once, ``summary`` is what was counted by then
    cancelled: bool = False
    #: recipients never read (the run stopped before the end of the list)
    input_left: bool = False
    #: one line saying why the run had to stop (journal or report unwritable)
    failure: str | None = None
    resume: ResumeCounts = field(default_factory=ResumeCounts)
    #: lines refused before sending (not UTF-8): counted, never sent
    refused: int = 0
    #: bounced and deferred results per (status, bounce class), for the summary
    classes: ClassCounts = field(default_factory=Counter)
    #: addresses ``--suppress-store`` newly got from this run's bounces
    suppressions_added: int = 0
    #: the last connection failure of each destination that could not be reached
    unreachable: dict[str, ConnectionFailure] = field(default_factory=dict)


def _stop(mailer: Mailer, reason: Reply) -> None:
    """The one place a run is stopped for a failure (not a signal).

    ``reason`` is what the summary reports as ``aborted``; ``Mailer.stop()``
    defers everything not in flight.  (To become ``mailer.abort(reason)``
    once the engine offers it.)
    """
    mailer.abort(reason)


async def send_job(
    args: argparse.Namespace,
    config: MailerConfig,
    content: Content,
    suppressed: frozenset[str],
    journal: Journal | None,
    total: int | None,
    suppressor: BounceSuppressor | None = None,
    progress: Progress | None = None,
    keep: Callable[[str], bool] | None = None,
) -> RunOutcome:
    """Send the job; the report file is opened (emptied) only now, all checks done.

    ``suppressor`` (``--suppress-store``) hears every batch of results;
    ``progress`` replaces the progress line (a ``--processes`` child's goes to
    its parent); ``keep`` picks the recipients of the list this run sends to
    (a child's shard), the others are neither sent nor reported."""
    if progress is None:
        progress = Progress(enabled=not args.quiet, total=None if args.quiet else total)
    run = RunOutcome(unreachable=progress.unreachable)
    # a down or mistyped relay shows within seconds, not when retries run out
    config = replace(config, on_connection_failure=progress.connection_failed)
    if suppressor is not None and progress.enabled:
        suppressor.warn = progress.message
    report: IO[str] | None = None
    if args.report:
        try:
            report = open(args.report, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise InputError(f"--report {args.report}: {exc.strerror}") from exc
    refused = Summary()
    mailer: Mailer | None = None

    def fail(line: str, reason: Reply) -> None:
        if run.failure is None:
            run.failure = line
            if progress.enabled:
                progress.message(f"stopping: {line}")
            if mailer is not None:
                _stop(mailer, reason)

    verp_noted = False

    def on_results(results: Sequence[Result]) -> None:
        nonlocal report, verp_noted
        progress.add_all(results)
        class_counts(results, run.classes)
        if suppressor is not None:
            suppressor(results)
        if args.verp and not verp_noted:
            plain = next((r.recipient for r in results if not verp_fits(args.sender, r.recipient)),
                         None)
            if plain is not None:
                verp_noted = True
                note = (f"--verp: {plain} (and any like it) was sent from the plain sender: "
                        "its VERP local part would exceed 64 octets (RFC 5321), so its "
                        "bounces map back only by the DSN's Final-Recipient")
                if progress.enabled:
                    progress.message(note)
                else:
                    print(note, file=sys.stderr)
        if report is not None:
            try:
                report.writelines(
                    json.dumps(r.as_dict(), ensure_ascii=False) + "\n" for r in results
                )
            except OSError as exc:
                with contextlib.suppress(OSError):
                    report.close()
                report = None
                kept = "the journal has every result" if journal is not None else "stopped"
                fail(f"report {args.report}: cannot write ({exc.strerror or exc}); {kept}",
                     synthetic_reply(451, "4.3.0", f"report unwritable: {exc}"))

    try:
        async with trio.open_nursery() as nursery, Mailer(config) as mailer:

            async def watch_signals() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        if run.stopped:
                            # second signal: leave now; the journal already
                            # holds every in-doubt mark, so nothing is lost
                            run.cancelled = True
                            nursery.cancel_scope.cancel()
                            return
                        run.stopped = True
                        progress.message("stopping: finishing in-flight transactions")
                        mailer.stop()

            nursery.start_soon(watch_signals)
            nursery.start_soon(progress.run)
            journal_failed = _journal_failure(args, journal, fail)
            async with _running_writer(journal, journal_failed) as writer:

                def on_refused(address: str, reason: str) -> None:
                    result = Result(address, Status.BOUNCED, synthetic_reply(553, "5.1.3", reason))
                    if writer is not None and not writer.failed:
                        writer.submit_outcome(address, outcome_of(result))
                    refused.add(result)
                    on_results([result])

                recipients = read_recipients(
                    args.recipients,
                    on_refused if keep is None else _kept_refusals(keep, on_refused),
                )
                if keep is not None:
                    recipients = (r for r in recipients if keep(r.address))
                summary = await send_durably(
                    mailer, writer, args.sender, content, recipients,
                    suppressed=suppressed, on_results=on_results, verp=args.verp,
                    resume=run.resume,
                )
                # stopped before the end of the list: the rest was never read
                run.input_left = inspect.getgeneratorstate(recipients) != inspect.GEN_CLOSED
                summary.merge(refused)
                run.summary = summary
                run.refused = refused.total
            nursery.cancel_scope.cancel()
    finally:
        progress.close()
        if suppressor is not None:
            run.suppressions_added = suppressor.added
        if report is not None:
            with contextlib.suppress(OSError):
                report.close()
    if run.cancelled:
        run.summary = _counted(progress)
        run.input_left = True
    return run


def _kept_refusals(
    keep: Callable[[str], bool], on_refused: Callable[[str, str], None]
) -> Callable[[str, str], None]:
    def refused(address: str, reason: str) -> None:
        if keep(address):
            on_refused(address, reason)

    return refused


def _journal_failure(
    args: argparse.Namespace, journal: Journal | None, fail: Callable[[str, Reply], None]
) -> Callable[[Exception], None]:
    def failed(exc: Exception) -> None:
        name = args.journal or getattr(journal, "path", "the journal")
        cause = exc.__cause__ or exc
        fail(
            f"journal {name} cannot be written ({cause}); sending stopped, nothing is"
            " lost: fix that and run the same command again to resume",
            synthetic_reply(451, "4.3.0", f"journal unwritable: {cause}"),
        )

    return failed


@asynccontextmanager
async def _running_writer(
    journal: Journal | None, on_failure: Callable[[Exception], None]
) -> AsyncIterator[JournalWriter | None]:
    """A group-commit writer running on ``journal`` (``None``: no journal).

    A failed commit does not escape as a crash: ``on_failure`` hears of it
    (and stops the run), and every later write is refused by the writer.
    """
    if journal is None:
        yield None
        return
    writer = JournalWriter(journal)

    async def run_writer(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await writer.run(task_status=task_status)
        except Exception as exc:
            on_failure(exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_writer)
        try:
            yield writer
        finally:
            with trio.CancelScope(shield=True), contextlib.suppress(JournalError):
                await writer.aclose()


def _counted(progress: Progress) -> Summary:
    """The counts the progress line kept: the summary of a run left at once."""
    c = progress.counts
    return Summary(
        delivered=c[Status.DELIVERED], bounced=c[Status.BOUNCED], deferred=c[Status.DEFERRED],
        suppressed=c[Status.SUPPRESSED], in_doubt=c[Status.IN_DOUBT],
    )
