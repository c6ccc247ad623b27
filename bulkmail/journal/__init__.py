"""Durable recipient states, so a killed bulk-mail job resumes where it stopped.

``base`` defines the records and the small :class:`Journal` interface,
``opening`` maps a location (``PATH``, ``sqlite:PATH``, ``postgresql://...``)
to its backend, ``sqlite`` is the default backend (one WAL-mode file),
``identity`` and ``lock`` keep a journal to one job and one run at a time,
and ``writer`` is the group commit that keeps durability to a small fraction
of throughput.
"""

from __future__ import annotations

from .base import (
    FINAL,
    Journal,
    JournalError,
    JournalWriteError,
    Outcome,
    RecipientRecord,
    StateChange,
    Status,
)
from .identity import JobIdentity, JobMismatch, bind_identity
from .lock import JobLock, JobLocked
from .opening import existing_sqlite_path, open_journal, sqlite_path
from .sqlite import SQLiteJournal
from .writer import JournalWriter

__all__ = [
    "FINAL",
    "JobIdentity",
    "JobLock",
    "JobLocked",
    "JobMismatch",
    "Journal",
    "JournalError",
    "JournalWriteError",
    "JournalWriter",
    "Outcome",
    "RecipientRecord",
    "SQLiteJournal",
    "StateChange",
    "Status",
    "bind_identity",
    "existing_sqlite_path",
    "open_journal",
    "sqlite_path",
]
