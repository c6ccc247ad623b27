"""Durable sends: a journal records every recipient's state so a killed run resumes.

The ordering rule (DESIGN.md): recipients are recorded *in doubt* -- in a
group commit that has reached the database -- before the end of data of their
message leaves the process.  Everything else (delivered, bounced, deferred) is
recorded asynchronously in group commits: losing those on a kill only means
the recipient is still "in doubt" on resume and is resent once, flagged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from itertools import islice

import trio

from .api import Mailer, MessageLike
from .delivery.job import InDoubtHook, ResultCallback, ResultsCallback
from .errors import synthetic_reply
from .journal import JournalWriter, Outcome, RecipientRecord
from .message import Recipient
from .protocol.replies import Reply
from .results import FINAL, Result, Status, Summary

LOOKUP_CHUNK = 500
IN_DOUBT = Outcome(Status.IN_DOUBT)


def outcome_of(result: Result) -> Outcome:
    reply = result.reply
    return Outcome(
        status=result.status,
        code=reply.code if reply is not None else None,
        enhanced=reply.enhanced if reply is not None else None,
        reply=reply.text if reply is not None else None,
        attempts=result.attempts,
        host=result.host,
        possible_duplicate=result.possible_duplicate,
    )


class OutcomeCache:
    """One :class:`Outcome` object for a run of results that share everything but
    the address (a transaction's recipients), so the writer stores them as one row."""

    __slots__ = ("_last", "_outcome")

    def __init__(self) -> None:
        self._last: Result | None = None
        self._outcome: Outcome | None = None

    def __call__(self, result: Result) -> Outcome:
        last = self._last
        self._last = result
        if (
            last is not None
            and self._outcome is not None
            and last.reply is result.reply
            and last.status is result.status
            and last.attempts == result.attempts
            and last.host == result.host
            and last.possible_duplicate == result.possible_duplicate
        ):
            return self._outcome
        self._outcome = outcome_of(result)
        return self._outcome


def reply_of(record: RecipientRecord) -> Reply | None:
    if record.code is None:
        return None
    text = record.reply or ""
    if record.enhanced:
        return Reply(record.code, (f"{record.enhanced} {text}",), record.enhanced)
    return Reply(record.code, (text,))


async def send_durably(
    mailer: Mailer,
    writer: JournalWriter | None,
    sender: str,
    message: MessageLike,
    recipients: Iterable[Recipient],
    *,
    suppressed: frozenset[str] = frozenset(),
    on_result: ResultCallback | None = None,
    on_results: ResultsCallback | None = None,
    verp: bool = False,
) -> Summary:
    """Like ``Mailer.send``, resuming from and recording to the journal.

    Recipients already delivered, bounced or suppressed in the journal are
    reported from it and not sent; those left in doubt by a killed run are
    resent once with ``possible_duplicate`` set.  Without a writer, only
    suppression applies.
    """
    settled: dict[str, RecipientRecord] = {}

    def decide(recipient: Recipient) -> tuple[Status, Reply | None, int] | None:
        address = recipient.address
        if suppressed and address.lower() in suppressed:
            return Status.SUPPRESSED, synthetic_reply(250, "2.0.0", "suppressed: not sent"), 0
        if not settled:
            return None
        known = settled.pop(address, None)
        if known is not None:
            return known.status, reply_of(known), known.attempts
        return None

    fresh = writer is None or await trio.to_thread.run_sync(writer.journal.is_empty)
    # a new journal knows nobody: no lookups, and recipients go straight in
    # (a fresh run pays only for the writes)
    presettle = decide if suppressed or not fresh else None
    try:
        if writer is None:
            return await mailer.send(
                sender, message, recipients, on_result=on_result, on_results=on_results,
                verp=verp, presettle=presettle,
            )
        stream: Iterable[Recipient] | AsyncIterator[Recipient] = (
            recipients if fresh else _resumed(writer, recipients, settled)
        )

        outcome = OutcomeCache()

        def record(results: Sequence[Result]) -> None:
            # a transaction's recipients usually share one outcome: one group
            run: list[str] = []
            current: Outcome | None = None
            for result in results:
                shared = outcome(result)
                if shared is not current:
                    if current is not None:
                        writer.submit_outcomes(run, current)
                    run, current = [], shared
                run.append(result.recipient)
            if current is not None:
                writer.submit_outcomes(run, current)
            if on_results is not None:
                on_results(results)

        return await mailer.send(
            sender, message, stream, on_result=on_result, on_results=record, verp=verp,
            presettle=presettle, on_in_doubt=_in_doubt_marker(writer),
        )
    finally:
        pass  # per-job settings travel in JobOptions: nothing shared to undo


def _in_doubt_marker(writer: JournalWriter) -> InDoubtHook:
    async def in_doubt(addresses: Sequence[str]) -> None:
        await writer.submit_durable_outcome(addresses, IN_DOUBT)

    return in_doubt


async def _resumed(
    writer: JournalWriter, recipients: Iterable[Recipient], settled: dict[str, RecipientRecord]
) -> AsyncIterator[Recipient]:
    """The recipients, as the journal knows them: final ones noted in ``settled``
    (reported, not sent), in-doubt ones flagged as possible duplicates."""
    journal = writer.journal
    source = iter(recipients)
    while chunk := list(islice(source, LOOKUP_CHUNK)):
        known = await trio.to_thread.run_sync(
            journal.lookup, [r.address.strip() for r in chunk]
        )
        for recipient in chunk:
            address = recipient.address.strip()
            record = known.get(address)
            if record is not None and record.status in FINAL:
                settled[address] = record
            elif record is not None and (
                record.status is Status.IN_DOUBT or record.possible_duplicate
            ):
                recipient = Recipient(recipient.address, recipient.variables, True)
            yield recipient
