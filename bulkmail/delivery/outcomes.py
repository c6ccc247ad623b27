"""What becomes of each recipient once its attempt is judged: the engine's
side of :class:`~bulkmail.delivery.settle.Outcomes`.

:class:`RecipientOutcomes` is a base class of
:class:`~bulkmail.delivery.engine.Engine` (a mixin, so settling a recipient
costs no extra call): delivered and bounced recipients end, deferred ones are
scheduled by the retry policy, in-doubt ones are resent at most
``RetryPolicy.in_doubt_resends`` times.  The attributes declared below are the
engine's.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import trio

from ..errors import synthetic_reply
from ..observe import RunMetrics
from ..protocol.replies import Reply
from ..results import Status
from .engine_config import EngineConfig
from .job import Item
from .policy import Verdict, classify
from .retry import RetryQueue

#: a dead pooled session may be replaced this many times per recipient for free
MAX_FREE_RETRIES = 3

STOPPED = synthetic_reply(451, "4.3.2", "run stopped before this recipient was attempted")
# hot-path enum members as module globals (see protocol/connection.py)
_DELIVERED, _BOUNCED = Status.DELIVERED, Status.BOUNCED
_VERDICT_DELIVERED, _VERDICT_BOUNCED = Verdict.DELIVERED, Verdict.BOUNCED


class RecipientOutcomes:
    """The engine's outcomes: each recipient's verdict applied."""

    config: EngineConfig
    rng: random.Random
    metrics: RunMetrics | None
    _retries: RetryQueue

    def invalid(self, item: Item, reason: str) -> None:
        """Bounce a recipient we refuse to send to (bad address, bad template value)."""
        item.job.finish(item, Status.BOUNCED, synthetic_reply(553, "5.1.3", reason))

    def abandon(self, item: Item) -> None:
        """Not sent in this run: it ends deferred (resumable), with its last
        reply, or else the reason its job was closed."""
        reply = item.last_reply or item.job.close_reason or STOPPED
        item.job.finish(item, Status.DEFERRED, reply)

    def unattempted(self, item: Item, reply: Reply, requeue: Callable[[Item], None]) -> None:
        """Nothing reached the server for this item (dead pooled session): retry now."""
        item.free_retries += 1
        if item.free_retries > MAX_FREE_RETRIES:
            self.attempted(item, reply, classify(None, reply), None)
            return
        requeue(item)

    def delivered(self, items: Sequence[Item], reply: Reply, host: str) -> None:
        """A transaction whose one reply accepted everyone."""
        now = trio.current_time()
        for item in items:
            item.attempt(reply, host, now)
        items[0].job.finish_all(items, _DELIVERED, reply)

    def attempted(self, item: Item, reply: Reply, verdict: Verdict, host: str | None) -> None:
        """One attempt, judged by the reply policy."""
        now = trio.current_time()
        item.attempt(reply, host, now)
        if verdict is _VERDICT_DELIVERED:
            item.job.finish(item, _DELIVERED, reply)
        elif verdict is _VERDICT_BOUNCED:
            item.job.finish(item, _BOUNCED, reply)
        else:
            self._defer(item, reply, now)

    def in_doubt(self, item: Item, reply: Reply, host: str | None) -> None:
        """Its end of data left and no reply came (RFC 1047): it may have been
        delivered.  Resent ``RetryPolicy.in_doubt_resends`` times at most; in
        doubt once more, it ends :attr:`Status.IN_DOUBT` and is not sent again."""
        now = trio.current_time()
        item.attempt(reply, host, now)
        item.possible_duplicate = True
        item.doubts += 1
        if item.doubts > self.config.retry.in_doubt_resends:
            reply = synthetic_reply(
                451, "4.4.2",
                f"end of data sent {item.doubts} times without a reply; not sent again"
                f" ({reply.text})",
            )
            item.last_reply = reply
            item.job.finish(item, Status.IN_DOUBT, reply)
            return
        reply = synthetic_reply(
            451, "4.4.2", f"connection lost after end of data; delivery in doubt ({reply.text})"
        )
        item.last_reply = reply
        self._defer(item, reply, now, in_doubt=True)

    def _defer(self, item: Item, reply: Reply, now: float, in_doubt: bool = False) -> None:
        job = item.job
        policy = self.config.retry
        first = item.first_attempt if item.first_attempt is not None else now
        due = policy.next_attempt(max(1, item.attempts), first, now, self.rng)
        if due is None:
            expired = synthetic_reply(
                550,
                "5.4.7",
                f"delivery time expired after {item.attempts} attempts; last reply: {reply}",
            )
            job.finish(item, Status.BOUNCED, expired)
            return
        if job.closed or (job.retry_deadline is not None and due > job.retry_deadline):
            job.finish(item, Status.DEFERRED, reply)
            return
        if self.metrics is not None:
            self.metrics.deferral(item.site)
        self._retries.schedule(item, due)
        if not in_doubt:  # (an in-doubt one keeps its journal mark until it ends)
            job.deferred(item, reply, due - now)
