"""Where a store worker touches the engine: the in-doubt mark before an end of data.

Kept in one place on purpose: when the engine takes per-job options (the
in-doubt hook per job instead of one per engine), only :func:`install_store_hooks`
changes, and :class:`InFlight` -- which exists only because today's hook
hears addresses without their job -- goes away.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..api import Mailer
from .aio import StoreWriter
from .errors import StoreError

__all__ = ["InFlight", "LeaseLost", "install_store_hooks"]


class LeaseLost(StoreError):
    """Recipients about to get their end of data are no longer this worker's:
    its leases expired (it stalled longer than the lease) and another worker
    took them over.  Raised *before* the end of data leaves, so the transaction
    is abandoned; the worker must stop -- the new owner sends them."""

    def __init__(self, job: int, addresses: Sequence[str]) -> None:
        self.job = job
        self.addresses = sorted(addresses)
        shown = ", ".join(self.addresses[:3]) + (" ..." if len(self.addresses) > 3 else "")
        super().__init__(
            f"job {job}: {len(self.addresses)} recipient(s) were taken over by another worker"
            f" before their end of data ({shown}); not sent by this worker, which stops"
        )


class InFlight:
    """The job of each address this worker has handed to the engine."""

    def __init__(self) -> None:
        self._jobs: dict[str, list[int]] = {}

    def add(self, job: int, addresses: Iterable[str]) -> None:
        for address in addresses:
            self._jobs.setdefault(address, []).append(job)

    def remove(self, job: int, addresses: Iterable[str]) -> None:
        for address in addresses:
            jobs = self._jobs.get(address)
            if jobs is not None and job in jobs:
                jobs.remove(job)
                if not jobs:
                    del self._jobs[address]

    def by_job(self, addresses: Sequence[str]) -> dict[int | None, list[str]]:
        """``addresses`` grouped by job; an address in two jobs at once is in
        both groups (both get the mark); an unknown one is under ``None``."""
        groups: dict[int | None, list[str]] = {}
        for address in addresses:
            jobs: Sequence[int | None] = self._jobs.get(address) or (None,)
            for job in jobs:
                groups.setdefault(job, []).append(address)
        return groups

    def __len__(self) -> int:
        return len(self._jobs)


def install_store_hooks(mailer: Mailer, writer: StoreWriter, in_flight: InFlight) -> None:
    """Make ``mailer`` mark recipients in doubt in the store (a committed
    transaction) before their end of data leaves, as ``durable.send_durably``
    does with the SQLite journal.  If any of them is no longer this worker's,
    raise :class:`LeaseLost` instead: the end of data is not sent to anyone in
    that window (one SMTP transaction may carry several recipients, and a
    recipient cannot be taken back out of it).  Those of the window still
    ours stay marked in doubt: whoever takes them next resends them once,
    flagged -- a needless flag, never a lost recipient."""
    engine = mailer.engine

    async def in_doubt(addresses: Sequence[str]) -> None:
        for job, group in in_flight.by_job(addresses).items():
            if job is None:
                raise LeaseLost(0, group)
            applied = await writer.mark_in_doubt(job, group)
            if len(applied) < len(group):
                raise LeaseLost(job, [a for a in group if a not in applied])

    engine.on_in_doubt = in_doubt
    engine.presettle = None  # suppression is applied when the job is created
