"""Durable sends: a journal records every recipient's state so a killed run resumes.

The ordering rule (DESIGN.md): recipients are recorded *in doubt* -- in a
group commit that has reached the database -- before the end of data of their
message leaves the process.  Everything else (delivered, bounced, deferred) is
recorded asynchronously in group commits (within ``JournalWriter.max_delay``,
5 ms, or ``max_batch`` addresses): losing those on a kill only means the recipient is
still "in doubt" on resume and is resent once, flagged.  A recipient that got
a temporary failure is recorded ``deferred`` with its retry time as soon as
the retry is scheduled (not only when the run ends), so the journal -- and
``bulkmail status`` -- tells it from one whose end of data is in doubt.

Resent at most once: the in-doubt mark of a recipient that is already a
possible duplicate carries the flag, so a resume that finds a recipient in
doubt *and* flagged knows it was in doubt twice and ends it with the final
status ``in_doubt`` (flagged) instead of sending a third copy.  The flag of a
recipient, once raised, is reported by every later run that settles it from
the journal.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Sequence
from itertools import islice

import trio

from .api import Mailer, MessageLike
from .delivery.job import InDoubtHook, ResultCallback, ResultsCallback
from .errors import SMTPError, synthetic_reply
from .journal import JournalError, JournalWriter, Outcome, RecipientRecord
from .message import Recipient
from .protocol.replies import Reply
from .results import FINAL, Result, Status, Summary

LOOKUP_CHUNK = 500
IN_DOUBT = Outcome(Status.IN_DOUBT)
#: the in-doubt mark of a recipient already resent once after being in doubt
IN_DOUBT_AGAIN = Outcome(Status.IN_DOUBT, possible_duplicate=True)
#: the result of a recipient found in doubt twice: never sent a third time
TWICE_IN_DOUBT = synthetic_reply(
    451, "4.4.2",
    "in doubt twice (end of data sent, no reply): not resent; the server may hold copies",
)


def outcome_of(result: Result, next_attempt: float | None = None) -> Outcome:
    reply = result.reply
    return Outcome(
        status=result.status,
        code=reply.code if reply is not None else None,
        enhanced=reply.enhanced if reply is not None else None,
        reply=reply.text if reply is not None else None,
        attempts=result.attempts,
        host=result.host,
        next_attempt=next_attempt,
        possible_duplicate=result.possible_duplicate,
    )


class OutcomeCache:
    """One :class:`Outcome` object for every result that shares everything but
    the address, so the writer stores a commit's deliveries as one row (it
    merges submits of the same object).  Keyed by value, not by the last
    result: results of ten connections interleave, and each connection parses
    its own (equal) reply objects.  Cleared when it grows past ``limit``:
    replies that carry a queue id are all different, and then only the
    recipients of one transaction share an outcome."""

    __slots__ = ("_known", "_last", "_outcome", "limit")

    def __init__(self, limit: int = 1024) -> None:
        self._last: Result | None = None
        self._outcome: Outcome | None = None
        self._known: dict[tuple[object, ...], Outcome] = {}
        self.limit = limit

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
            return self._outcome  # a transaction's next recipient: no hashing
        key = (result.reply, result.status, result.attempts, result.host,
               result.possible_duplicate)
        known = self._known
        outcome = known.get(key)
        if outcome is None:
            if len(known) >= self.limit:
                known.clear()
            outcome = known[key] = outcome_of(result)
        self._outcome = outcome
        return outcome


def _alike(first: Result, results: Sequence[Result]) -> bool:
    """Every result shares ``first``'s outcome (all but the address)."""
    reply, status, attempts = first.reply, first.status, first.attempts
    host, flagged = first.host, first.possible_duplicate
    for r in results:
        if (r.reply is not reply or r.status is not status or r.attempts != attempts
                or r.host != host or r.possible_duplicate != flagged):
            return False
    return True


def reply_of(record: RecipientRecord) -> Reply | None:
    if record.code is None:
        return None
    text = record.reply or ""
    if record.enhanced:
        return Reply(record.code, (f"{record.enhanced} {text}",), record.enhanced)
    return Reply(record.code, (text,))


class ResumeCounts:
    """What a resumed run found in its journal: ``already_final`` recipients
    were reported from it instead of being sent."""

    __slots__ = ("already_final",)

    def __init__(self) -> None:
        self.already_final = 0


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
    resume: ResumeCounts | None = None,
) -> Summary:
    """Like ``Mailer.send``, resuming from and recording to the journal.

    Recipients already delivered, bounced or suppressed in the journal are
    reported from it and not sent (flagged if they ever were possible
    duplicates); those left in doubt by a killed run are resent once with
    ``possible_duplicate`` set, and those left in doubt by a run that was
    itself resending them end ``in_doubt``.  Without a writer, only
    suppression applies.
    """
    settled: dict[str, RecipientRecord] = {}
    resent: set[str] = set()  # flagged by the journal: their in-doubt marks say so

    def decide(recipient: Recipient) -> tuple[Status, Reply | None, int] | None:
        address = recipient.address
        if suppressed and address.lower() in suppressed:
            return Status.SUPPRESSED, synthetic_reply(250, "2.0.0", "suppressed: not sent"), 0
        if not settled:
            return None
        known = settled.pop(address, None)
        if known is not None:
            if resume is not None:
                resume.already_final += 1
            if known.status is Status.IN_DOUBT:
                return Status.IN_DOUBT, TWICE_IN_DOUBT, known.attempts
            return known.status, reply_of(known), known.attempts
        return None

    fresh = writer is None or await trio.to_thread.run_sync(writer.journal.is_empty)
    # a new journal knows nobody: no lookups, and recipients go straight in
    # (a fresh run pays only for the writes)
    presettle = decide if suppressed or not fresh else None
    if writer is None:
        return await mailer.send(
            sender, message, recipients, on_result=on_result, on_results=on_results,
            verp=verp, presettle=presettle,
        )
    stream: Iterable[Recipient] | AsyncIterator[Recipient] = (
        recipients if fresh else _resumed(writer, recipients, settled, resent)
    )

    outcome = OutcomeCache()

    def record(results: Sequence[Result]) -> None:
        # a transaction's recipients usually share one outcome: one group
        run: list[str] = []
        current: Outcome | None = None
        if writer.failed:
            # the run is being stopped (see JournalWriter.failed); what is
            # not recorded stays in doubt and is resent once, flagged
            if on_results is not None:
                on_results(results)
            return
        first = results[0] if results else None
        if first is not None and (len(results) == 1 or _alike(first, results)):
            # one transaction's recipients, one outcome: no lookup each
            # (a million calls were 4.5% of a 50-recipient newsletter's run)
            writer.submit_outcomes([r.recipient for r in results], outcome(first))
        else:
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

    def deferred(result: Result, delay: float) -> None:
        # waiting for its retry, with the reply that deferred it: no longer
        # "in doubt" in the journal (a resume resends it unflagged, as it
        # would after the run); the retry's own in-doubt mark comes later
        if not writer.failed:
            writer.submit_outcome(result.recipient, outcome_of(result, time.time() + delay))

    return await mailer.send(
        sender, message, stream, on_result=on_result, on_results=record, verp=verp,
        presettle=presettle, on_in_doubt=_in_doubt_marker(writer, resent),
        on_deferred=deferred,
    )


class JournalUnwritable(SMTPError):
    """The in-doubt mark could not be recorded, so the end of data must not
    leave: raised from the in-doubt hook, it ends the session like a lost
    connection would (nothing of the transaction reached the server's end of
    data), and the transactions' recipients are retried or deferred."""


def _in_doubt_marker(writer: JournalWriter, resent: set[str]) -> InDoubtHook:
    async def in_doubt(addresses: Sequence[str]) -> None:
        # one coroutine, not two: it runs (and is resumed) for every transaction
        try:
            if resent and not resent.isdisjoint(addresses):
                again = [a for a in addresses if a in resent]
                first = [a for a in addresses if a not in resent]
                if first:
                    writer.submit_outcomes(first, IN_DOUBT)
                await writer.submit_durable_outcome(again, IN_DOUBT_AGAIN)
            else:
                await writer.submit_durable_outcome(addresses, IN_DOUBT)
        except JournalError as exc:
            raise JournalUnwritable(
                synthetic_reply(451, "4.3.0", f"not sent: the journal cannot be written ({exc})")
            ) from exc

    return in_doubt


async def _resumed(
    writer: JournalWriter,
    recipients: Iterable[Recipient],
    settled: dict[str, RecipientRecord],
    resent: set[str],
) -> AsyncIterator[Recipient]:
    """The recipients, as the journal knows them: final ones noted in ``settled``
    (reported, not sent, their flag kept), in-doubt ones flagged as possible
    duplicates and noted in ``resent``; in doubt *and* flagged is in doubt
    twice: settled too."""
    journal = writer.journal
    source = iter(recipients)
    while chunk := list(islice(source, LOOKUP_CHUNK)):
        known = await trio.to_thread.run_sync(
            journal.lookup, [r.address.strip() for r in chunk]
        )
        for recipient in chunk:
            address = recipient.address.strip()
            record = known.get(address)
            if record is None:
                yield recipient
                continue
            if record.status in FINAL or (
                record.status is Status.IN_DOUBT and record.possible_duplicate
            ):
                settled[address] = record
            elif record.status is Status.IN_DOUBT or record.possible_duplicate:
                resent.add(address)
            if record.possible_duplicate or address in resent:
                recipient = Recipient(recipient.address, recipient.variables, True)
            yield recipient
