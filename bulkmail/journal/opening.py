"""``open_journal(url)``: the one place that maps a journal location to its backend.

``PATH`` or ``sqlite:PATH`` is the SQLite file backend.  ``postgresql://``
URLs name the PostgreSQL job store, which builds on this package and so
cannot be imported from it: :func:`bulkmail.journals.open_any_journal` routes
them (``report`` and ``bounces`` open journals through it), and this function
refuses them with a pointer there.
"""

from __future__ import annotations

import os
from typing import Literal

from .base import Journal, JournalError
from .sqlite import SQLiteJournal

__all__ = ["existing_sqlite_path", "open_journal", "sqlite_path"]

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


def existing_sqlite_path(url: str | os.PathLike[str]) -> str | None:
    """Like :func:`sqlite_path`, for commands that read a run's journal and
    must not create one: :class:`JournalError` ("no journal at ...") when
    the file is missing."""
    path = sqlite_path(url)
    if path is not None and not os.path.isfile(path):
        raise JournalError(f"no journal at {path}")
    return path


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
            f"journal {os.fspath(url)!r}: a PostgreSQL journal is opened by"
            " bulkmail.journals.open_any_journal (or bulkmail.store.open_pg_journal)"
        )
    return SQLiteJournal(path, synchronous=synchronous, lock=lock)
