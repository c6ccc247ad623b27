"""A transaction's result -> each of its recipients' outcome.

The session says what the server answered (and to which command, in
``TransactionResult.stages``); this module decides, with :func:`classify`,
what that means for each recipient, and hands the decision to the engine
through the small :class:`Outcomes` protocol.  No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from ..protocol.client import Stage
from ..protocol.replies import Reply
from ..session import TransactionResult
from .job import Item
from .policy import Verdict, classify

#: stages a reply can answer only once the recipient was accepted on RCPT
_PAST_RCPT = frozenset({Stage.DATA, Stage.DATA_END, Stage.BDAT})


class Outcomes(Protocol):
    """What the engine does with each recipient's verdict."""

    def delivered(self, items: Sequence[Item], reply: Reply, host: str) -> None:
        """One reply accepted a whole transaction."""

    def attempted(self, item: Item, reply: Reply, verdict: Verdict, host: str | None) -> None:
        """One attempt with a verdict other than RESUBMIT."""

    def in_doubt(self, item: Item, reply: Reply, host: str | None) -> None:
        """Its end of data was sent and no reply came."""

    def unattempted(self, item: Item, reply: Reply, requeue: Callable[[Item], None]) -> None:
        """Nothing of it reached the server: ``requeue`` it at once, no attempt spent."""


def settle(
    outcomes: Outcomes,
    requeue: Callable[[Item], None],
    group: Sequence[Item],
    result: TransactionResult,
    host: str,
) -> bool:
    """Hand each recipient of ``group`` its outcome; True if the server accepted
    anyone (the destination is healthy).  ``requeue`` puts a recipient at the
    front of its pool's queue: a 452 "too many recipients" goes into the next
    transaction without spending an attempt."""
    replies = result.replies
    if not result.attempted:
        for item in reversed(group):  # back to the queue's front in their order
            outcomes.unattempted(item, replies[0], requeue)
        return False
    first = replies[0]
    in_doubt = result.in_doubt
    if first.code < 300 and not in_doubt and (
        len(replies) == 1 or all(r is first for r in replies)  # (one: no generator)
    ):
        # the common case: one end-of-data reply accepts the whole transaction
        outcomes.delivered(group, first, host)
        return True
    stages: Sequence[Stage | None] = result.stages or (None,) * len(replies)
    accepted_on_rcpt = bool(in_doubt) or any(
        stage in _PAST_RCPT or (stage is None and reply.code < 300)
        for stage, reply in zip(stages, replies, strict=True)
    )
    for index, item in enumerate(group):
        reply = replies[index]
        if index in in_doubt:
            outcomes.in_doubt(item, reply, host)
            continue
        stage = stages[index]
        verdict = classify(stage, reply, others_accepted=accepted_on_rcpt)
        if verdict is Verdict.RESUBMIT:
            requeue(item)
        else:
            outcomes.attempted(item, reply, verdict, host)
    return any(r.code < 300 for r in replies)
