"""A PostgreSQL job store: one job worked by many processes and machines.

``schema`` creates and migrates the tables, ``jobs`` loads recipients with
COPY, ``leases`` hands them out to workers a destination at a time,
``limits`` holds per-destination seats, rates and pauses cluster-wide,
``journal`` shows one job through the :class:`~bulkmail.journal.base.Journal`
protocol, ``store`` puts it behind one object and ``aio`` behind trio;
``writer`` is a worker's group commits.
"""

from __future__ import annotations

from .errors import ConnectionLost, StoreError
from .jobs import JobInfo
from .journal import PgJournal
from .leases import Claim, ClaimedRecipient, new_owner_id
from .limits import Pause, TokenGrant
from .store import PgStore, is_store_url, open_pg_journal, split_store_url

__all__ = [
    "Claim",
    "ClaimedRecipient",
    "ConnectionLost",
    "JobInfo",
    "Pause",
    "PgJournal",
    "PgStore",
    "StoreError",
    "TokenGrant",
    "is_store_url",
    "new_owner_id",
    "open_pg_journal",
    "split_store_url",
]
