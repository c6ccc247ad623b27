"""A job (one ``Mailer.send``) and the recipients on their way through it.

Everything a job needs to know about itself is fixed when it is made
(:class:`JobOptions`, frozen): the engine serves any number of jobs at once,
so one job's suppressions, in-doubt hook or callbacks must never be set on
anything shared.  A job's results are counted here, in one place, so that
"exactly one result per recipient" is checked where it is produced.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from ..message import Content, Recipient
from ..protocol.data import PreparedMessage
from ..protocol.replies import Reply
from ..results import Result, Status, Summary
from ..session import Envelope
from ..verp import verp_sender

if TYPE_CHECKING:
    from ..observe import RunMetrics

ResultCallback = Callable[[Result], None]
ResultsCallback = Callable[[Sequence[Result]], None]
#: a recipient got a temporary failure and waits for a retry (not yet a result):
#: its state so far (status ``DEFERRED``) and the seconds until that retry
DeferredHook = Callable[[Result, float], None]
#: awaited with the addresses whose end of data is about to leave
InDoubtHook = Callable[[Sequence[str]], Awaitable[None]]
#: a result decided without sending (suppressed, already final in a journal)
Presettle = Callable[[Recipient], "tuple[Status, Reply | None, int] | None"]


@dataclass(frozen=True, slots=True)
class JobOptions:
    """How one job reports and records; fixed for the job's life."""

    #: called with each result as it is final
    on_result: ResultCallback | None = None
    #: called with results in the groups they finished in (a transaction's)
    on_results: ResultsCallback | None = None
    #: awaited before an end of data leaves, with its recipients (the journal's
    #: durable in-doubt mark); raising stops the job (see ``Mailer.send``)
    on_in_doubt: InDoubtHook | None = None
    #: told of each retry scheduled after a reply (the journal records it deferred,
    #: so a status view tells it from one whose end of data is in doubt)
    on_deferred: DeferredHook | None = None
    #: decides a recipient's result without sending it
    presettle: Presettle | None = None
    #: a unique envelope sender per recipient: one recipient per transaction
    verp: bool = False


@dataclass(eq=False, slots=True)
class Item:
    """One recipient on its way through the engine."""

    recipient: Recipient
    job: Job
    attempts: int = 0
    free_retries: int = 0
    first_attempt: float | None = None
    possible_duplicate: bool = False
    last_reply: Reply | None = None
    last_host: str | None = None
    #: times its end of data went out without a reply (a resumed in-doubt one starts at 1)
    doubts: int = 0
    #: when intake took it in (trio clock, to a chunk's precision): delivery latency
    queued_at: float = 0.0
    #: its destination's key once routed: its site in the metrics
    site: str | None = None
    #: its routing domain, set as it enters a pool (per-domain batching groups by it)
    domain: str = ""

    def attempt(self, reply: Reply, host: str | None, now: float) -> None:
        """Count one attempt that got ``reply`` (from ``host``, when known)."""
        self.attempts += 1
        if self.first_attempt is None:
            self.first_attempt = now
        self.last_reply = reply
        if host is not None:
            self.last_host = host


class Job:
    """One send: a sender, a content, a stream of recipients, and its results."""

    def __init__(
        self,
        sender: str,
        content: Content,
        options: JobOptions,
        *,
        release: Callable[[int], None],
        retry_for: float | None = None,
    ) -> None:
        self.sender = sender
        self.content = content
        self.options = options
        self.summary = Summary()
        self.outstanding = 0
        self.input_done = False
        #: no new recipient is taken and nothing of this job is sent any more
        self.closed = False
        #: why it was closed: the reply of recipients that were never attempted
        self.close_reason: Reply | None = None
        #: the exception a callback or the in-doubt hook raised (the job then closes)
        self.failure: BaseException | None = None
        #: set when every recipient has its result
        self.finished = trio.Event()
        #: set when every recipient has its result, or when the job failed
        self.settled = trio.Event()
        self.started = trio.current_time()
        #: deferred recipients are not retried past this (``EngineConfig.retry_for``)
        self.retry_deadline = None if retry_for is None else self.started + retry_for
        self.one_per_transaction = content.personalised or options.verp
        self._on_result = options.on_result
        self._on_results = options.on_results
        self._release = release
        self._seen: set[str] = set()
        #: the engine's metrics, which count every result (None: not measured)
        self.metrics: RunMetrics | None = None

    def __repr__(self) -> str:
        return f"<Job {self.sender!r} [{self.outstanding} outstanding, {self.summary.total} done]>"

    @property
    def done(self) -> bool:
        return self.input_done and self.outstanding == 0

    def envelope(self, recipients: list[str], message: PreparedMessage) -> Envelope:
        sender = self.sender
        if self.options.verp and sender:
            sender = verp_sender(sender, recipients[0])
        return Envelope(sender, recipients, message, validated=True)  # checked on intake

    def first_sighting(self, key: str) -> bool:
        """True once per address (``key``: its domain lower-cased): the same
        address twice is sent once."""
        seen = self._seen
        before = len(seen)
        seen.add(key)  # one hash lookup, not a test and then an add
        return len(seen) != before

    def finish(self, item: Item, status: Status, reply: Reply | None) -> None:
        self.finish_all((item,), status, reply)

    def finish_all(self, items: Sequence[Item], status: Status, reply: Reply | None) -> None:
        """The final results of items of this job that share a status and a reply
        (a transaction's), counted and reported in one pass."""
        results = [
            Result(
                item.recipient.address, status, reply, item.attempts, item.last_host,
                item.possible_duplicate,
            )
            for item in items
        ]
        self.summary.add_all(results, status, reply)
        if self.metrics is not None:  # one call per group, not per recipient
            self.metrics.finished(items[0].site, status, reply, items, trio.current_time())
        if self._on_result is not None or self._on_results is not None:
            self._report(results)
        self.outstanding -= len(results)
        self._release(len(results))
        if self.input_done and self.outstanding == 0:
            self._settle()

    def deferred(self, item: Item, reply: Reply, delay: float) -> None:
        """``item`` got ``reply`` (a temporary failure, not in doubt) and its
        retry is due in ``delay`` seconds: still outstanding, not a result.
        A hook that raises fails the job, like a result callback."""
        hook = self.options.on_deferred
        if hook is None or self.failure is not None:
            return
        try:
            hook(Result(item.recipient.address, Status.DEFERRED, reply, item.attempts,
                        item.last_host, item.possible_duplicate), delay)
        except Exception as exc:
            self.fail(exc)

    def _report(self, results: list[Result]) -> None:
        """The caller's callbacks.  One that raises is not called again: the
        job fails (``Mailer.send`` closes it and raises the error), and the
        exception never unwinds through the engine's tasks."""
        try:
            on_result = self._on_result
            if on_result is not None:
                for result in results:
                    on_result(result)
            if self._on_results is not None:
                self._on_results(results)
        except Exception as exc:
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        """A callback or the in-doubt hook raised: stop reporting, take and send
        nothing more, wake the sender (which cancels the rest of the job)."""
        if self.failure is None:
            self.failure = exc
        self.closed = True
        self._on_result = self._on_results = None
        self.settled.set()

    def end_of_input(self) -> None:
        self.input_done = True
        if self.outstanding == 0:
            self._settle()

    def _settle(self) -> None:
        self.summary.elapsed = trio.current_time() - self.started
        self.finished.set()
        self.settled.set()
