"""A pool's queue when each transaction holds one domain's recipients
(``batch_by="domain"``).

One deque per domain with work plus a FIFO of those domains: recipients come
out domain by domain, at most ``run`` of one domain before the next domain's
turn, so a big domain cannot starve the small ones sharing its site, and
consecutive items of one domain form its transactions.  A domain whose deque
empties is dropped at once: the queue is sized by what is waiting, not by
how many domains ever passed through it.  It offers the few ``deque``
operations the pool uses, so the pool runs either queue unchanged.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from .job import Item, Job


class DomainQueue:
    """Queued items of one site, grouped by domain, domains taken in turn."""

    __slots__ = ("_by_domain", "_len", "_order", "_run", "_taken")

    def __init__(self, run: int) -> None:
        self._by_domain: dict[str, deque[Item]] = {}
        self._order: deque[str] = deque()  # domains with work, whose turn is next
        self._len = 0
        self._run = max(1, run)  # a domain's turn: at most one transaction's worth
        self._taken = 0  # items taken in the head domain's current turn

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[Item]:
        for domain in self._order:
            yield from self._by_domain[domain]

    def __getitem__(self, index: int) -> Item:
        if index != 0 or not self._len:
            raise IndexError("DomainQueue only shows its head")
        return self._by_domain[self._order[0]][0]

    @property
    def domains(self) -> int:
        """Domains with queued work (what the queue's size grows with)."""
        return len(self._by_domain)

    def append(self, item: Item) -> None:
        items = self._by_domain.get(item.domain)
        if items is None:
            items = self._by_domain[item.domain] = deque()
            self._order.append(item.domain)
        items.append(item)
        self._len += 1

    def appendleft(self, item: Item) -> None:
        """Back to the very front (a requeued recipient goes into the next transaction)."""
        domain = item.domain
        items = self._by_domain.get(domain)
        if items is None:
            items = self._by_domain[domain] = deque()
            self._order.appendleft(domain)
            self._taken = 0
        elif self._order[0] != domain:
            self._order.remove(domain)
            self._order.appendleft(domain)
            self._taken = 0
        items.appendleft(item)
        self._len += 1

    def popleft(self) -> Item:
        if not self._len:
            raise IndexError("pop from an empty DomainQueue")
        domain = self._order[0]
        items = self._by_domain[domain]
        item = items.popleft()
        self._len -= 1
        self._taken += 1
        if not items:
            del self._by_domain[domain]
            self._order.popleft()
            self._taken = 0
        elif self._taken >= self._run:
            self._order.rotate(-1)  # its turn is over: the next domain's
            self._taken = 0
        return item

    def clear(self) -> None:
        self._by_domain.clear()
        self._order.clear()
        self._len = self._taken = 0

    def take(self, job: Job | None = None) -> list[Item]:
        """Remove and return the queued items (all, or ``job``'s)."""
        taken = [item for item in self if job is None or item.job is job]
        if job is None:
            self.clear()
            return taken
        kept = [item for item in self if item.job is not job]
        self.clear()
        for item in kept:
            self.append(item)
        return taken


def transactions(items: list[Item], step: int, *, by_domain: bool) -> list[list[Item]]:
    """``items`` cut into transactions of at most ``step``; ``by_domain``, a new
    transaction also starts where the domain changes (a :class:`DomainQueue`
    hands out each domain's items together)."""
    if not by_domain or step == 1:
        return [items[start : start + step] for start in range(0, len(items), step)]
    groups: list[list[Item]] = []
    group: list[Item] = []
    domain = None
    for item in items:
        if len(group) >= step or item.domain != domain:
            group = [item]
            groups.append(group)
            domain = item.domain
        else:
            group.append(item)
    return groups


def take_transactions(
    q: DomainQueue, job: Job, per_txn: int, budget: int, limit: int
) -> list[Item]:
    """Up to ``budget`` transactions (and ``limit`` items) of ``job`` from a
    queue by domain: a transaction ends where the domain changes, so the
    window and ``messages_per_connection`` count transactions, not items."""
    taken: list[Item] = []
    transactions = size = 0
    domain = None
    while q and len(taken) < limit and q[0].job is job:
        head = q[0]
        if head.domain != domain or size >= per_txn:
            if transactions >= budget:
                break
            transactions += 1
            size = 0
            domain = head.domain
        taken.append(q.popleft())
        size += 1
    return taken
