"""What the PostgreSQL job store raises.

:class:`StoreError` is a :class:`~bulkmail.journal.base.JournalError`, so code
that reports a broken SQLite journal reports a broken database the same way.
"""

from __future__ import annotations

from ..journal.base import JournalError

__all__ = ["ConnectionLost", "StoreError"]


class StoreError(JournalError):
    """The job store cannot do what was asked: bad URL, failed query, unknown job."""


class ConnectionLost(StoreError):
    """The database connection broke.

    Whatever the call was doing did not happen, or is not known to have
    happened: a worker must stop taking work.  Its leases expire and other
    workers take its recipients over, so nothing is lost.
    """
