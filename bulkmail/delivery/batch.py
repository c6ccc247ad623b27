"""The transactions one session's ``send_batch`` call runs, until each is settled."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import trio

from ..session import Envelope
from ..warmup import Grant
from .job import Item, Job


class Batch:
    """The transactions handed to one ``send_batch`` call, until each is settled.

    ``sent`` holds the envelopes (by id; each leaves with its settlement, so
    an id is never reused while listed) whose end of data may have left: if
    the batch is cut short, exactly those recipients are in doubt.  ``job``
    is the one job of all its transactions, or ``None`` once a refill mixed
    in another job's (then each envelope's job is looked up: rare in
    ``send``, the rule in a store worker, whose claims are jobs of their own).
    """

    __slots__ = ("grant", "job", "pending", "scope", "sent", "source")

    def __init__(
        self,
        envelopes: Sequence[Envelope],
        groups: Sequence[list[Item]],
        source: str | None = None,
        grant: Grant | None = None,
    ) -> None:
        self.pending: deque[tuple[Envelope, list[Item]]] = deque()
        self.sent: set[int] = set()
        self.scope = trio.CancelScope()
        self.job: Job | None = groups[0][0].job
        #: the session's egress address, and its warm-up count (to give back unsent ones)
        self.source = source
        self.grant = grant
        self.extend(envelopes, groups)

    def extend(self, envelopes: Sequence[Envelope], groups: Sequence[list[Item]]) -> None:
        job = self.job
        if job is not None and any(group[0].job is not job for group in groups):
            self.job = None
        self.pending.extend(zip(envelopes, groups, strict=True))

    def pop(self) -> list[Item]:
        envelope, group = self.pending.popleft()
        self.sent.discard(id(envelope))
        return group

    def holds(self, job: Job) -> bool:
        if self.job is not None:
            return self.job is job and bool(self.pending)
        return any(group[0].job is job for _, group in self.pending)

    def marks(self, envelopes: Sequence[Envelope]) -> list[tuple[Job, Sequence[str]]]:
        """The addresses of ``envelopes``, by job, for the jobs with an in-doubt hook."""
        job = self.job
        if job is not None:  # the common case: no lookup, one list
            if job.options.on_in_doubt is None:
                return []
            if len(envelopes) == 1:  # (DATA: one at a time; the hook only reads it)
                return [(job, envelopes[0].recipients)]
            return [(job, [r for envelope in envelopes for r in envelope.recipients])]
        ids = {id(envelope) for envelope in envelopes}
        by_job: dict[Job, list[str]] = {}
        for envelope, group in self.pending:
            owner = group[0].job
            if owner.options.on_in_doubt is not None and id(envelope) in ids:
                by_job.setdefault(owner, []).extend(envelope.recipients)
        return list(by_job.items())
