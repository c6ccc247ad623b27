"""PostgreSQL for the store's tests: the server from ``BULKMAIL_TEST_DATABASE_URL``
(default: the machine's own, trust auth), a fresh schema per test.

No server: the tests skip with one line saying so -- except under ``CI=true``,
where that is a failure (CI machines run PostgreSQL; a skip would hide it).
Import the fixtures into a test module: ``from tests.pgutil import pg_url, store_url``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def database_url() -> str:
    return os.environ.get("BULKMAIL_TEST_DATABASE_URL") or DEFAULT_URL


def _unreachable(url: str) -> str | None:
    """Why ``url`` cannot be used, or None."""
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return None


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The server's URL, once it answered."""
    url = database_url()
    problem = _unreachable(url)
    if problem is not None:
        message = f"PostgreSQL not reachable at {url} ({problem}); set BULKMAIL_TEST_DATABASE_URL"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} -- CI=true requires it", pytrace=False)
        pytest.skip(message)
    return url


@pytest.fixture
def store_url(pg_url: str) -> Iterator[str]:
    """A store URL with a schema of this test's own, dropped afterwards."""
    schema = f"test_{uuid.uuid4().hex[:16]}"
    separator = "&" if "?" in pg_url else "?"
    yield f"{pg_url}{separator}schema={schema}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def _in_schema(store_url: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    from bulkmail.store.store import split_store_url

    conninfo, schema, _ = split_store_url(store_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        yield conn


def travel(store_url: str, statement: str, params: tuple[object, ...] = ()) -> int:
    """Run ``statement`` in the test's schema -- how tests let time pass for
    leases, seats and pauses without sleeping; returns the rows it touched."""
    with _in_schema(store_url) as conn:
        return conn.execute(statement.encode(), params).rowcount


def column(store_url: str, query: str) -> list[Any]:
    """The first column of ``query``'s rows, in the test's schema."""
    with _in_schema(store_url) as conn:
        return [row[0] for row in conn.execute(query.encode()).fetchall()]
