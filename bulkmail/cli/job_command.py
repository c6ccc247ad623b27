"""``bulkmail job create|status|report|cancel --db URL``: a job in PostgreSQL,
worked by any number of ``bulkmail worker`` processes on any machines.

``create`` stores everything a worker needs (the message, its signing key,
the retry schedule) with the job, so a worker needs only the database URL;
it prints the job id as the last line of its output.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from ..durable import reply_of
from ..journal.base import Outcome
from ..message import Recipient
from ..protocol.commands import validate_address
from ..protocol.errors import InvalidAddress
from ..results import Result, Status
from ..store import PgStore, StoreError
from ..store.job_spec import JobSpec
from ..store.job_state import LOADED, mark_loaded
from ..store.shaping import describe_record, recent_actions
from .inputs import InputError, read_message, read_recipients, read_suppressions
from .send_command import decorations
from .send_options import JOB_OPTIONS, add_send_options

EX_OK, EX_USAGE = 0, 2

EXAMPLE = """example:
  bulkmail job create --db postgresql://bulkmail@db.internal/mail \\
      --sender news@example.org --recipients list.csv --message news.eml
"""

#: what ``send`` reports for a suppressed recipient
SUPPRESSED = Outcome(Status.SUPPRESSED, 250, "2.0.0", "suppressed: not sent")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION",
                                    help="create | status | report | cancel")
    create = actions.add_parser("create", help="store a job and its recipients; prints its id",
                                description="store a job and its recipients; prints its id")
    _db(create)
    add_send_options(create, JOB_OPTIONS)
    for name, text in (("status", "counts of the job's recipients by state"),
                       ("report", "JSON Lines on stdout, one object per recipient"),
                       ("cancel", "stop handing out the job's recipients")):
        sub = actions.add_parser(name, help=text, description=text)
        _db(sub)
        sub.add_argument("job", type=int, metavar="ID", help="the id 'job create' printed")


def _db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, metavar="URL",
                        help="postgresql://user@host/db (schema via ?schema=NAME)")


def run(args: argparse.Namespace) -> int:
    action = {"create": _create, "status": _status, "report": _report, "cancel": _cancel}
    try:
        return action[args.action](args)
    except (InputError, StoreError, ValueError, OSError, UnicodeDecodeError) as exc:
        print(f"bulkmail job {args.action}: {exc}", file=sys.stderr)
        return EX_USAGE


def job_spec(args: argparse.Namespace) -> JobSpec:
    """The job ``send`` would run with these options, checked now (sender,
    message, DKIM key test-signed, unsubscribe URL)."""
    try:
        validate_address(args.sender, smtputf8=True)
    except InvalidAddress as exc:
        raise InputError(f"--sender {args.sender!r}: {exc.reason}") from exc
    if args.max_rcpts < 1:
        raise InputError("--max-rcpts must be at least 1")
    decorated = decorations(args)
    spec = JobSpec(
        sender=args.sender,
        message=read_message(args.message),
        verp=args.verp,
        max_rcpts=args.max_rcpts,
        retry_first=args.retry_first,
        retry_for=args.retry_for,
        unsubscribe_url=decorated.unsubscribe_url,
        unsubscribe_mailto=decorated.unsubscribe_mailto,
        dkim=decorated.dkim,
    )
    spec.content()
    return spec


def _create(args: argparse.Namespace) -> int:
    print(create_job(args))
    return EX_OK


def job_identity(spec: JobSpec, recipients: str) -> dict[str, str]:
    """What makes a job itself: ``send --journal postgresql://`` resumes the job
    with the same identity instead of creating a second one."""
    return {
        "sender": spec.sender,
        "message_sha256": hashlib.sha256(spec.message).hexdigest(),
        "recipients": recipients,
    }


def create_job(args: argparse.Namespace) -> int:
    """Store the job ``args`` describe and load its recipients; its id."""
    spec = job_spec(args)
    suppressed = read_suppressions(args.suppress) if args.suppress else frozenset()
    if args.recipients != "-" and not Path(args.recipients).is_file():
        raise InputError(f"cannot read {args.recipients}: no such file")
    identity = job_identity(spec, args.recipients)
    intake = _Intake(suppressed)
    with PgStore(args.db) as store:
        # not "loaded" until every recipient is in: a worker must not finish
        # the job for being empty while it is still being loaded
        job = store.create_job(identity=identity, options={**spec.to_options(), LOADED: False})
        try:
            loaded = store.load_recipients(job, intake.filter(read_recipients(args.recipients)))
            if intake.held_back:
                store.journal(job).record_outcomes([(intake.held_back, SUPPRESSED)])
            mark_loaded(store, job)
        except BaseException:
            with contextlib.suppress(StoreError):  # the load's own error is the one to show
                store.cancel_job(job)
            raise
    if not args.quiet:
        print(f"job {job}: {loaded:,} recipients to send, {len(intake.held_back):,} suppressed,"
              f" {intake.repeats:,} repeats dropped")
    return job


class _Intake:
    """Which recipients to load: each mailbox once (compared as the engine
    does, the domain case-insensitively); suppressed ones are set aside."""

    def __init__(self, suppressed: frozenset[str]) -> None:
        self.suppressed = suppressed
        self.held_back: list[str] = []
        self.repeats = 0

    def filter(self, recipients: Iterator[Recipient]) -> Iterator[Recipient]:
        seen: set[str] = set()
        for recipient in recipients:
            local, at, domain = recipient.address.rpartition("@")
            key = f"{local}@{domain.lower()}" if at else recipient.address
            if key in seen:
                self.repeats += 1
                continue
            seen.add(key)
            if self.suppressed and recipient.address.lower() in self.suppressed:
                self.held_back.append(recipient.address)
                continue
            yield recipient


def _status(args: argparse.Namespace) -> int:
    with PgStore(args.db) as store:
        info = store.get_job(args.job)
        counts = store.counts(args.job)
        actions = recent_actions(store.db, info.created)
        leased, duplicates = store.leased_and_flagged(args.job)
    print(f"job {info.id}: {info.state}")
    for status in Status:
        print(f"{status.value:<12}{counts.get(status, 0):>12,}")
    print(f"{'total':<12}{sum(counts.values()):>12,}")
    print(f"{'leased':<12}{leased:>12,}")
    print(f"{'possible duplicates':<20}{duplicates:>4,}")
    if actions:  # reply rules that acted on its destinations (shared by every job)
        print(f"shaping actions since the job was created (last {len(actions)}):")
        for action in actions:
            print("  " + describe_record(action))
    return EX_OK


def write_report(store: PgStore, job: int, out: TextIO) -> None:
    """The job's recipients as JSON Lines, the columns of ``send --report``."""
    for record in store.journal(job).iter_records():
        result = Result(record.address, record.status, reply_of(record),
                        record.attempts, record.host, record.possible_duplicate)
        out.write(json.dumps(result.as_dict(), ensure_ascii=False) + "\n")
    out.flush()


def _report(args: argparse.Namespace) -> int:
    with PgStore(args.db) as store:
        try:
            write_report(store, args.job, sys.stdout)
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            # (Python's advice: no second error when stdout is flushed at exit)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EX_OK


def _cancel(args: argparse.Namespace) -> int:
    with PgStore(args.db) as store:
        if store.cancel_job(args.job):
            print(f"job {args.job}: cancelled (workers stop taking its recipients;"
                  " transactions in flight finish)")
        else:
            print(f"job {args.job}: already {store.get_job(args.job).state}")
    return EX_OK
