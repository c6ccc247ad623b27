"""The suppression store: addresses never to mail again, with why and since when.

Hard bounces, complaints (``bulkmail complaints``), one-click unsubscribes
(``bulkmail.unsubscribe``) and an operator's own list end up in one place, so
every later job can consult it at intake.  This module is the SQLite store;
the methods of :class:`Suppressions` are the whole interface, which a store in
the PostgreSQL job database implements the same way for a cluster of workers.

Addresses compare case-insensitively in the domain (RFC 5321 §2.4: the local
part belongs to the receiving system).  The plain-file form -- one address per
line, ``#`` comments -- is the one ``bulkmail send --suppress FILE`` reads, so
an export can be used as it is.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .bounce_class import DEFAULT_SUPPRESS
from .protocol.commands import validate_address
from .protocol.errors import InvalidAddress
from .results import Result, Status

__all__ = [
    "REASONS", "Suppression", "SuppressionError", "SuppressionStore", "Suppressions",
    "normalise", "suppress_from_result",
]

#: why an address is suppressed
REASONS = ("bounce", "complaint", "unsubscribe", "manual", "import")

#: addresses per ``IN (...)`` query, well under SQLite's bound-variable limit
_CHUNK = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS suppressions (
    address TEXT PRIMARY KEY,   -- domain lowercased: the comparison key
    reason TEXT NOT NULL,
    class TEXT,                 -- the bounce class, for reason 'bounce'
    source TEXT,                -- the reply, the report file, the request ...
    added_at REAL NOT NULL      -- unix time
) WITHOUT ROWID;
"""


class SuppressionError(Exception):
    """The store cannot be used, or an entry is not an address (the CLI exits 2)."""


@dataclass(frozen=True, slots=True)
class Suppression:
    address: str
    reason: str
    bounce_class: str | None = None
    source: str | None = None
    added_at: float = 0.0


class Suppressions(Protocol):
    """What the engine, the CLI and the unsubscribe server need from a store."""

    def add(
        self, address: str, reason: str, *, bounce_class: str | None = None,
        source: str | None = None, at: float | None = None,
    ) -> bool: ...
    def remove(self, address: str) -> bool: ...
    def __contains__(self, address: object) -> bool: ...
    def suppressed_among(self, addresses: Sequence[str]) -> set[str]: ...


def normalise(address: str) -> str:
    """The comparison key: the address as written, its domain lowercased.

    Raises :class:`SuppressionError` for something that is not an address."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    try:
        validate_address(address, smtputf8=True)
    except InvalidAddress as exc:
        raise SuppressionError(f"not an address: {address!r} ({exc})") from exc
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


class SuppressionStore:
    """A SQLite file of suppressions; safe to share between processes (WAL)."""

    def __init__(self, path: str | Path, *, timeout: float = 10.0) -> None:
        self.path = Path(path)
        try:
            # check_same_thread off: the unsubscribe server calls it from worker
            # threads, one at a time (it serialises with a lock)
            self._db = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise SuppressionError(f"cannot use suppression store {self.path}: {exc}") from exc

    # -- changes -------------------------------------------------------------------

    def add(
        self, address: str, reason: str, *, bounce_class: str | None = None,
        source: str | None = None, at: float | None = None,
    ) -> bool:
        """Suppress ``address``; ``False`` when it already was (its first entry is kept:
        the date an address was first suppressed is the one that matters)."""
        return self.add_many([Suppression(address, reason, bounce_class, source,
                                          time.time() if at is None else at)]) == 1

    def add_many(self, entries: Iterable[Suppression]) -> int:
        """Add entries in one transaction; how many were new."""
        rows = []
        for entry in entries:
            if entry.reason not in REASONS:
                raise SuppressionError(f"unknown reason {entry.reason!r} (one of {REASONS})")
            rows.append((normalise(entry.address), entry.reason, entry.bounce_class,
                         entry.source, entry.added_at or time.time()))
        with self._write() as db:
            before = db.total_changes
            db.executemany(
                "INSERT INTO suppressions (address, reason, class, source, added_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (address) DO NOTHING",
                rows,
            )
            return db.total_changes - before

    def remove(self, address: str) -> bool:
        """Lift a suppression (the person resubscribed); ``False`` if there was none."""
        key = normalise(address)
        with self._write() as db:
            return db.execute("DELETE FROM suppressions WHERE address = ?", (key,)).rowcount > 0

    # -- questions -----------------------------------------------------------------

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str):
            return False
        try:
            key = normalise(address)
        except SuppressionError:
            return False
        row = self._read("SELECT 1 FROM suppressions WHERE address = ?", (key,))
        return bool(row)

    def suppressed_among(self, addresses: Sequence[str]) -> set[str]:
        """The given addresses (as given) that are suppressed: one query per 500."""
        keys: dict[str, list[str]] = {}
        for address in addresses:
            with contextlib.suppress(SuppressionError):
                keys.setdefault(normalise(address), []).append(address)
        found: set[str] = set()
        key_list = list(keys)
        for i in range(0, len(key_list), _CHUNK):
            chunk = key_list[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._read(f"SELECT address FROM suppressions WHERE address IN ({marks})",
                              chunk)
            for (key,) in rows:
                found.update(keys[key])
        return found

    def get(self, address: str) -> Suppression | None:
        rows = self._read(
            "SELECT address, reason, class, source, added_at FROM suppressions"
            " WHERE address = ?", (normalise(address),))
        return Suppression(*rows[0]) if rows else None

    def entries(self, reason: str | None = None) -> Iterator[Suppression]:
        """Every entry, oldest first (optionally of one reason)."""
        query = "SELECT address, reason, class, source, added_at FROM suppressions"
        params: tuple[str, ...] = ()
        if reason is not None:
            query, params = query + " WHERE reason = ?", (reason,)
        try:
            cursor = self._db.execute(query + " ORDER BY added_at, address", params)
            while rows := cursor.fetchmany(1000):
                for row in rows:
                    yield Suppression(*row)
        except sqlite3.Error as exc:
            raise SuppressionError(f"suppression store {self.path}: {exc}") from exc

    def __len__(self) -> int:
        count: int = self._read("SELECT count(*) FROM suppressions", ())[0][0]
        return count

    def lowercased(self) -> frozenset[str]:
        """Every address lowercased: what ``send``'s intake compares today
        (``--suppress FILE`` semantics)."""
        return frozenset(e.address.lower() for e in self.entries())

    # -- files ---------------------------------------------------------------------

    def import_file(self, path: str | Path, *, reason: str = "import") -> tuple[int, list[str]]:
        """Add every address of a plain file; (how many were new, lines refused)."""
        entries, refused = [], []
        now = time.time()
        try:
            text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            raise SuppressionError(f"cannot read {path}: {exc.strerror}") from exc
        for n, line in enumerate(text.splitlines(), 1):
            address = line.strip()
            if not address or address.startswith("#"):
                continue
            try:
                normalise(address)
            except SuppressionError as exc:
                refused.append(f"{path}:{n}: {exc}")
                continue
            entries.append(Suppression(address, reason, None, f"import {Path(path).name}", now))
        return self.add_many(entries), refused

    def export_file(self, path: str | Path) -> int:
        """Write one address per line (what ``send --suppress`` reads); how many."""
        count = 0
        try:
            with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write("# bulkmail suppression list\n")
                for entry in self.entries():
                    f.write(entry.address + "\n")
                    count += 1
        except OSError as exc:
            raise SuppressionError(f"cannot write {path}: {exc.strerror}") from exc
        return count

    # -- plumbing ------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        try:
            with self._db:
                yield self._db
        except sqlite3.Error as exc:
            raise SuppressionError(f"suppression store {self.path}: {exc}") from exc

    def _read(self, query: str, params: Sequence[object]) -> list[Any]:
        try:
            rows: list[Any] = self._db.execute(query, params).fetchall()
            return rows
        except sqlite3.Error as exc:
            raise SuppressionError(f"suppression store {self.path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SuppressionStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SuppressionStore {self.path}>"


def suppress_from_result(
    store: Suppressions, result: Result, classes: frozenset[str] = DEFAULT_SUPPRESS
) -> bool:
    """Suppress a bounced recipient whose class is in ``classes``; called once per
    final result.  ``True`` when the address was newly added."""
    if result.status is not Status.BOUNCED or result.reply is None:
        return False
    bounce_class = result.bounce_class
    if bounce_class not in classes:
        return False
    try:
        normalise(result.recipient)
    except SuppressionError:  # an address the engine already bounced as malformed
        return False
    # a store that cannot be written raises: a failed write is not "already there"
    return store.add(result.recipient, "bounce", bounce_class=bounce_class,
                     source=str(result.reply))
