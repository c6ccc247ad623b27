"""The group commit's statements through libpq directly: prepared once per
connection, then one ``PQexecPrepared`` with parameters already in binary.

A psycopg ``execute`` spends ~115 us of Python per group commit in scenario e
(a cursor, the query's conversion, the prepared-statement cache, the result's
rows) around one round trip; the commit is one statement with the same
shape every time, so that machinery buys it nothing: a loop of 1,000 commits
of 4 marks and 4 results took 112-143 us of client CPU per recipient through
psycopg, 63-81 us here (three alternations).  ``exec_prepared``
releases the GIL while it waits, like psycopg's own waiting, and its errors
become psycopg's exceptions (what ``Database.using`` turns into StoreError
or ConnectionLost).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors, pq
from psycopg.pq.abc import PGresult

__all__ = ["Statement"]

_BINARY = pq.Format.BINARY
_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)


class Statement:
    """One statement, its ``%(name)b`` / ``%(name)s`` parameters numbered in
    ``names`` order, all sent in binary; results come back in binary too."""

    _count = 0

    def __init__(self, sql: str, names: Sequence[str]) -> None:
        self.names = tuple(names)
        number = {name: i + 1 for i, name in enumerate(self.names)}

        def positional(match: re.Match[str]) -> str:
            return f"${number[match.group(1)]}"

        text = re.sub(r"%\((\w+)\)[bs]", positional, sql)
        Statement._count += 1
        self.name = f"bulkmail_{Statement._count}".encode()
        self.sql = text.encode()
        self.formats = [_BINARY] * len(self.names)
        #: connections it is prepared on
        self._on: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()

    def run(self, conn: psycopg.Connection[Any], params: Sequence[bytes]) -> PGresult:
        """Execute on ``conn`` (preparing it there first); the result, in binary."""
        pgconn = conn.pgconn
        if conn not in self._on:
            self._check(conn, pgconn.prepare(self.name, self.sql))
            self._on.add(conn)
        return self._check(conn, pgconn.exec_prepared(
            self.name, params, self.formats, _BINARY))

    @staticmethod
    def _check(conn: psycopg.Connection[Any], result: PGresult) -> PGresult:
        if result.status not in _OK:
            raise errors.error_from_result(result, encoding=conn.info.encoding)
        return result
