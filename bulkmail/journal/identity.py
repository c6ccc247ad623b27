"""Which job a journal belongs to, so a journal is never resumed by another job.

A journal answers "who was already sent *this message*".  Reused for a
different message, sender or list it would silently report everyone as
delivered; so the first run stores the job's identity in the journal's
metadata and every later run compares.  The identity holds whatever changes
the bytes or the envelope each recipient gets: sender, message hash,
recipients source, and the options that rewrite the message (DKIM,
List-Unsubscribe, VERP).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from .base import Journal, JournalError

__all__ = ["IDENTITY_PREFIX", "JobIdentity", "JobMismatch", "bind_identity"]

#: meta keys holding the identity are ``identity.<field>``
IDENTITY_PREFIX = "identity."


class JobMismatch(JournalError):
    """The journal belongs to another job (the CLI exits 2)."""

    def __init__(self, path: str, differences: list[str]) -> None:
        super().__init__(
            f"journal {path} belongs to a different job ({'; '.join(differences)});"
            " to start a new job, pass a new --journal path or delete this one"
        )
        self.differences = differences


@dataclass(frozen=True)
class JobIdentity:
    """The facts that make two runs the same job; ``fields`` maps a label
    (``"sender"``, ``"message"``, ...) to its value."""

    fields: Mapping[str, str]

    def digest(self) -> str:
        """A short stable hash of every field: the default journal's name."""
        h = hashlib.sha256()
        for key in sorted(self.fields):
            h.update(key.encode() + b"\0" + self.fields[key].encode("utf-8", "backslashreplace"))
            h.update(b"\0")
        return h.hexdigest()[:16]


def bind_identity(journal: Journal, identity: JobIdentity, path: str) -> None:
    """Store ``identity`` in a journal that has none; raise :class:`JobMismatch`
    naming every field that differs from the one it holds.

    A journal written before identities were recorded adopts the current one.
    """
    differences = []
    missing = []
    for key, value in identity.fields.items():
        stored = journal.get_meta(IDENTITY_PREFIX + key)
        if stored is None:
            missing.append(key)
        elif stored != value:
            differences.append(f"{key}: journal has {_short(stored)}, this run {_short(value)}")
    if differences:
        raise JobMismatch(path, differences)
    for key in missing:
        journal.set_meta(IDENTITY_PREFIX + key, identity.fields[key])


def _short(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")
