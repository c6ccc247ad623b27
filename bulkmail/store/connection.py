"""One psycopg connection, shared by threads one call at a time, with its
errors turned into :class:`~bulkmail.store.errors.StoreError`.

psycopg's async API only runs on asyncio, so the store is synchronous and the
event loop reaches it through worker threads (``bulkmail.store.aio``).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from .errors import ConnectionLost, StoreError

__all__ = ["DEFAULT_SCHEMA", "Database", "check_schema_name"]

#: where the tables live unless the URL's user asks for another schema
DEFAULT_SCHEMA = "bulkmail"

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_schema_name(schema: str) -> str:
    """``schema`` if it is a plain lower-case identifier (it is quoted anyway,
    but a name that needs quoting is more likely a mistake than a wish)."""
    if not _SCHEMA_NAME.fullmatch(schema):
        raise StoreError(f"invalid schema name {schema!r}: use lower-case letters, digits, _")
    return schema


def _redact(url: str) -> str:
    """The URL without its password, for error messages."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


class Database:
    """A connection in autocommit mode whose ``search_path`` is the store's schema.

    Every call takes the lock, so threads never interleave inside one
    transaction.  A broken connection is not reopened behind the caller's
    back: it raises :class:`ConnectionLost` now and on every later call, so
    nothing that was in flight can be mistaken for done.
    """

    def __init__(self, url: str, *, schema: str = DEFAULT_SCHEMA, connect_timeout: int = 10):
        self.url = url
        self.schema = check_schema_name(schema)
        self._lock = threading.Lock()
        self._broken: str | None = None
        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=connect_timeout)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to {_redact(url)}: {_first_line(exc)}") from exc
        except Exception as exc:  # a malformed URL raises ProgrammingError or ValueError
            raise StoreError(f"invalid database URL {_redact(url)}: {exc}") from exc
        with self.using() as conn:
            conn.execute(
                sql.SQL("SET search_path TO {}, public").format(sql.Identifier(self.schema))
            )

    @contextlib.contextmanager
    def using(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """The connection, exclusively; psycopg errors become StoreError."""
        with self._lock:
            if self._broken is not None:
                raise ConnectionLost(self._broken)
            try:
                yield self._conn
            except psycopg.OperationalError as exc:
                if self._conn.broken or self._conn.closed:
                    self._broken = (
                        f"lost the database connection to {_redact(self.url)}:"
                        f" {_first_line(exc)}"
                    )
                    raise ConnectionLost(self._broken) from exc
                raise StoreError(f"database error: {_first_line(exc)}") from exc
            except psycopg.Error as exc:
                if self._conn.broken:
                    self._broken = (
                        f"lost the database connection to {_redact(self.url)}:"
                        f" {_first_line(exc)}"
                    )
                    raise ConnectionLost(self._broken) from exc
                raise StoreError(f"database error: {_first_line(exc)}") from exc

    def use_generic_plans(self) -> None:
        """Plan each prepared statement once, not at every execution.

        For a connection that runs the same few statements over arrays (the
        group commits): PostgreSQL kept re-planning them with each call's
        values, as an array's length makes the generic plan look dearer, though
        the plan is the same (rows found by index, whatever the length).
        Measured on the group commit (one connection, 5,000 recipients, a mark
        each and results 5 at a time): 454 -> 250 us of PostgreSQL CPU per
        recipient, planning was ~130 us a statement.
        """
        with self.using() as conn:
            conn.execute("SET plan_cache_mode = force_generic_plan")

    @property
    def backend_pid(self) -> int:
        """The server process serving this connection (to tell sessions apart)."""
        return int(self._conn.info.backend_pid)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        state = "broken" if self._broken else "closed" if self._conn.closed else "open"
        return f"<Database {_redact(self.url)} schema={self.schema} {state}>"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
