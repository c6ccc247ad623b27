"""Per-recipient Message-IDs a job can map back to their recipient.

A complaint (ARF) often names nobody but the original's ``Message-ID``.  With a
job key, a personalised message's Message-ID is derived from the key and the
recipient's address alone -- ``sha256(key || address)``, nothing else -- so the
job's journal, which holds the key and every address, recomputes it for its
recipients: no per-message storage, nothing to write while sending.

The key is random per job (stored in the journal by its first run, so a resend
carries the same Message-ID as the first attempt); outsiders cannot compute an
address's Message-ID.  Identical content keeps one Message-ID for the whole
job (one rendering shared by every recipient): it names the job, not a person.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Iterator
from typing import Protocol

__all__ = ["KEY_META", "message_id_seed", "new_key", "recipients_for_message_ids"]

#: journal meta key holding the job's Message-ID key (hex)
KEY_META = "message-id-key"


class _Record(Protocol):
    @property
    def address(self) -> str: ...


class _Journal(Protocol):
    def get_meta(self, key: str) -> str | None: ...
    def iter_records(self) -> Iterator[_Record]: ...


def new_key() -> bytes:
    return secrets.token_bytes(16)


def message_id_seed(key: bytes, address: str) -> bytes:
    """What :func:`bulkmail.headers.message_id` hashes for ``address`` in a keyed job."""
    return key + b"\0" + address.encode("utf-8", "surrogateescape")


def _local_part(message_id: str) -> str:
    return message_id.strip().strip("<>").rpartition("@")[0].lower()


def _derived_local_part(key: bytes, address: str) -> str:
    # must stay what headers.message_id(domain, seed) writes before the "@"
    return hashlib.sha256(message_id_seed(key, address)).hexdigest()[:32]


def recipients_for_message_ids(journal: _Journal, wanted: Iterable[str]) -> dict[str, str]:
    """Each of ``wanted`` (Message-IDs, ``<...>`` or bare) that one of the
    journal's recipients was sent, mapped to that recipient.

    One pass over the journal, one hash per recipient, memory for ``wanted``
    only; a journal without a key (no journal at send time, or written before
    keys existed) maps nothing.
    """
    stored = journal.get_meta(KEY_META)
    by_local: dict[str, list[str]] = {}
    for message_id in wanted:
        by_local.setdefault(_local_part(message_id), []).append(message_id)
    if stored is None or not by_local:
        return {}
    key = bytes.fromhex(stored)
    found: dict[str, str] = {}
    for record in journal.iter_records():
        for message_id in by_local.get(_derived_local_part(key, record.address), ()):
            found[message_id] = record.address
    return found
