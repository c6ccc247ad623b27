"""``open_journal(url)``: the one place that maps a journal location to its backend.

``PATH`` or ``sqlite:PATH`` is the SQLite file backend; ``postgresql://...``
is reserved for the PostgreSQL backend (a separate piece of work) and refused
clearly until it exists.  Add a backend here and nowhere else: the CLI's
``send``, ``report`` and ``bounces`` all open journals through this function.
"""

from __future__ import annotations

import os
from typing import Literal

from .base import Journal, JournalError
from .sqlite import SQLiteJournal

__all__ = ["open_journal", "sqlite_path"]

_FUTURE = ("postgresql://", "postgres://")


def sqlite_path(url: str | os.PathLike[str]) -> str | None:
    """The file behind a SQLite journal location, ``None`` for another backend."""
    text = os.fspath(url)
    if text.startswith(_FUTURE):
        return None
    if text.startswith("sqlite:"):
        text = text.removeprefix("sqlite:")
        if text.startswith("//"):  # sqlite:///abs/path, as SQLAlchemy writes it
            text = text[2:]
    if not text:
        raise JournalError(f"journal location {os.fspath(url)!r} names no file")
    return text


def open_journal(
    url: str | os.PathLike[str],
    *,
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    lock: bool = False,
) -> Journal:
    """Open (creating if needed) the journal at ``url``.

    ``lock=True`` also takes the job lock, so a second run of the same job
    is refused with :class:`~bulkmail.journal.lock.JobLocked` while this one
    holds it; ``close()`` releases it.
    """
    path = sqlite_path(url)
    if path is None:
        raise JournalError(
            f"journal {os.fspath(url)!r}: PostgreSQL journals are not available yet;"
            " use a file path (or sqlite:PATH)"
        )
    return SQLiteJournal(path, synchronous=synchronous, lock=lock)
