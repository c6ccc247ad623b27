"""Where a store worker touches the engine: the in-doubt mark before an end of data.

Kept in one place on purpose.  Engines with per-job options take the hook
per ``Mailer.send`` call, and it knows its job; older ones take one hook per
engine (``engine.on_in_doubt``, as ``durable.send_durably`` sets it), which
hears addresses without their job, hence :class:`InFlight`.  Once every
engine takes per-job hooks, the engine-wide branch and ``InFlight`` go.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..api import Mailer
from ..message import Content, Recipient
from ..results import Result, Summary
from .errors import StoreError
from .writer import StoreWriter

__all__ = [
    "PER_JOB_HOOKS", "InFlight", "LeaseLost", "install_store_hooks", "mark_or_refuse",
    "send_claimed",
]

#: whether ``Mailer.send`` takes ``on_in_doubt`` (per-job options)
PER_JOB_HOOKS = "on_in_doubt" in inspect.signature(Mailer.send).parameters


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
    """The job of each address this worker has handed to the engine (for an
    engine-wide hook, which hears addresses only)."""

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


async def mark_or_refuse(writer: StoreWriter, job: int | None, addresses: Sequence[str]) -> None:
    """Commit ``addresses`` in doubt, or raise LeaseLost if any is not ours.

    The end of data then goes to nobody in that window (one SMTP transaction
    may carry several recipients, and one cannot be taken back out of it).
    Those of the window still ours stay marked: whoever takes them next
    resends them once, flagged -- a needless flag, never a lost recipient.
    """
    if job is None:
        raise LeaseLost(0, addresses)
    applied = await writer.mark_in_doubt(job, addresses)
    if len(applied) < len(addresses):
        raise LeaseLost(job, [a for a in addresses if a not in applied])


def install_store_hooks(mailer: Mailer, writer: StoreWriter, in_flight: InFlight) -> None:
    """For an engine with one hook for all jobs: mark in the store, through
    ``in_flight`` (what :func:`send_claimed` registers).  Nothing to do for
    engines with per-job hooks."""
    if PER_JOB_HOOKS:
        return
    engine: Any = mailer.engine

    async def in_doubt(addresses: Sequence[str]) -> None:
        for job, group in in_flight.by_job(addresses).items():
            await mark_or_refuse(writer, job, group)

    engine.on_in_doubt = in_doubt
    engine.presettle = None  # suppression is applied when the job is created


async def send_claimed(
    mailer: Mailer,
    writer: StoreWriter,
    in_flight: InFlight,
    job: int,
    sender: str,
    content: Content,
    recipients: Sequence[Recipient],
    *,
    on_results: Callable[[Sequence[Result]], None],
    verp: bool,
) -> Summary:
    """``mailer.send`` for claimed recipients of ``job``, each committed as in
    doubt in the store before its end of data leaves."""
    if PER_JOB_HOOKS:

        async def in_doubt(addresses: Sequence[str]) -> None:
            await mark_or_refuse(writer, job, addresses)

        per_job: dict[str, Any] = {"on_in_doubt": in_doubt}
        return await mailer.send(sender, content, recipients, on_results=on_results,
                                 verp=verp, **per_job)
    addresses = [r.address for r in recipients]
    in_flight.add(job, addresses)
    try:
        return await mailer.send(sender, content, recipients, on_results=on_results,
                                 verp=verp)
    finally:
        in_flight.remove(job, addresses)
