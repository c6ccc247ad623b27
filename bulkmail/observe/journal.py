"""A journal that times its group commits for the metrics.

Wraps any :class:`~bulkmail.journal.Journal` (the writer does not know it is
measured): each ``record``/``record_outcomes`` -- one group commit -- adds its
duration and its number of recipients to the histograms.  Everything else is
passed straight through.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from ..journal import Journal, Outcome, RecipientRecord, StateChange
from ..results import Status
from .metrics import RunMetrics


class TimedJournal:
    """``journal``, with each commit observed by ``metrics``."""

    def __init__(self, journal: Journal, metrics: RunMetrics) -> None:
        self.journal = journal
        self.metrics = metrics
        self.commits_inline = journal.commits_inline

    @property
    def path(self) -> str:
        """The wrapped journal's location, for error messages."""
        return str(getattr(self.journal, "path", "the journal"))

    def record(self, changes: Sequence[StateChange]) -> None:
        started = time.perf_counter()
        self.journal.record(changes)
        self.metrics.commit(time.perf_counter() - started, len(changes))

    def record_outcomes(self, groups: Sequence[tuple[Sequence[str], Outcome]]) -> None:
        started = time.perf_counter()
        self.journal.record_outcomes(groups)
        self.metrics.commit(time.perf_counter() - started, sum(len(a) for a, _ in groups))

    def lookup(self, addresses: Sequence[str]) -> dict[str, RecipientRecord]:
        return self.journal.lookup(addresses)

    def set_meta(self, key: str, value: str) -> None:
        self.journal.set_meta(key, value)

    def get_meta(self, key: str) -> str | None:
        return self.journal.get_meta(key)

    def iter_records(self) -> Iterator[RecipientRecord]:
        return self.journal.iter_records()

    def is_empty(self) -> bool:
        return self.journal.is_empty()

    def counts(self) -> dict[Status, int]:
        return self.journal.counts()

    def flagged(self) -> dict[Status, int]:
        return self.journal.flagged()

    def top_domains(self, n: int = 10) -> list[tuple[str, int]]:
        return self.journal.top_domains(n)

    def top_codes(self, n: int = 10) -> list[tuple[str, int]]:
        return self.journal.top_codes(n)

    def close(self) -> None:
        self.journal.close()
