"""Store calls that PostgreSQL rolled back to break a deadlock are run again.

A worker's heartbeat (every row it leases) and its group commit (some of
those rows) run on different connections and lock the same rows in
different orders; now and then PostgreSQL aborts one of them with
``deadlock detected`` (SQLSTATE class 40: transaction rollback).  Every
:class:`PgStore` call is one transaction, rolled back whole, so running it
again is safe -- while treating it as fatal stopped a healthy worker (seen
in the takeover tests, with heartbeats every 0.7 s).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import psycopg
import trio

from .aio import AsyncStore
from .errors import ConnectionLost, StoreError
from .store import PgStore

__all__ = ["RetryingStore", "rolled_back"]

T = TypeVar("T")

#: tries of a call PostgreSQL keeps rolling back before its error stands
TRIES = 6


def rolled_back(exc: BaseException) -> bool:
    """Whether ``exc`` is a transaction PostgreSQL aborted to resolve a conflict
    (deadlock, serialization failure): nothing of it happened, it may be retried."""
    if not isinstance(exc, StoreError) or isinstance(exc, ConnectionLost):
        return False
    cause = exc.__cause__
    return isinstance(cause, psycopg.Error) and (cause.sqlstate or "").startswith("40")


class RetryingStore(AsyncStore):
    """An :class:`AsyncStore` whose calls survive a deadlock with another call."""

    async def call(self, fn: Callable[[PgStore], T]) -> T:
        for attempt in range(1, TRIES + 1):
            try:
                return await super().call(fn)
            except StoreError as exc:
                if attempt == TRIES or not rolled_back(exc):
                    raise
            await trio.sleep(0.005 * attempt)  # let the other transaction finish first
        raise AssertionError("unreachable")
