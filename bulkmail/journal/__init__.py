"""Durable recipient states, so a killed bulk-mail job resumes where it stopped.

``base`` defines the records and the small :class:`Journal` interface,
``sqlite`` the default backend (one WAL-mode file), and ``writer`` the group
commit that keeps durability to a small fraction of throughput.
"""

from __future__ import annotations

from .base import FINAL, Journal, JournalError, Outcome, RecipientRecord, StateChange, Status
from .sqlite import SQLiteJournal
from .writer import JournalWriter

__all__ = [
    "FINAL",
    "Journal",
    "JournalError",
    "JournalWriter",
    "Outcome",
    "RecipientRecord",
    "SQLiteJournal",
    "StateChange",
    "Status",
]
