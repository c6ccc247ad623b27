"""Open any journal by its location: a file (``PATH``, ``sqlite:PATH``) or a
job in PostgreSQL (``postgresql://...?job=ID``).

Above both backends on purpose: ``journal/`` must not import ``store/``
(which builds on it), so the one function that knows both lives here, and
the CLI's ``report`` and ``bounces`` open journals through it.
"""

from __future__ import annotations

import os

from .journal import Journal, open_journal
from .store import is_store_url, open_pg_journal

__all__ = ["open_any_journal"]


def open_any_journal(url: str | os.PathLike[str]) -> Journal:
    """The journal at ``url`` (JournalError, StoreError included, when it cannot)."""
    text = os.fspath(url)
    if is_store_url(text):
        return open_pg_journal(text)
    return open_journal(text)
