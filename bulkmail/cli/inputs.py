"""Reading what a newsletter run is given: recipients, suppression list, message.

Recipients stream: a million-line file is never held in memory.  A line that
is not an address is still yielded -- the engine bounces it as ``invalid``
with the reason -- so a bad line is that recipient's problem, never a crash.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from ..message import Recipient, message_problem


class InputError(Exception):
    """Unreadable or unusable input: the CLI exits 2 with this message."""


def open_text(path: str) -> TextIO:
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape")
    try:
        return open(path, encoding="utf-8", errors="surrogateescape", newline="")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc


def read_recipients(path: str) -> Iterator[Recipient]:
    """One address per line, or a CSV whose header has an ``email`` column.

    Blank lines and ``#`` comments are skipped; other CSV columns become the
    recipient's template variables.
    """
    f = open_text(path)
    with f:
        first = f.readline()
        while first and not first.strip():
            first = f.readline()
        if not first:
            return
        header = next(csv.reader([first]))
        columns = [h.strip() for h in header]
        lowered = [c.lower() for c in columns]
        if len(columns) > 1 or lowered == ["email"]:
            if "email" not in lowered:
                raise InputError(f"{path}: CSV header has no 'email' column: {first.strip()!r}")
            yield from _csv_rows(f, columns, lowered.index("email"))
            return
        yield from _lines([first], f)


def _lines(*sources: Iterator[str] | list[str]) -> Iterator[Recipient]:
    for source in sources:
        for line in source:
            address = line.strip()
            if address and not address.startswith("#"):
                yield Recipient(address)


def _csv_rows(f: TextIO, columns: list[str], email_index: int) -> Iterator[Recipient]:
    for row in csv.reader(f):
        if not row or not any(cell.strip() for cell in row):
            continue
        address = row[email_index].strip() if email_index < len(row) else ""
        variables = {
            name: row[i] if i < len(row) else "" for i, name in enumerate(columns) if name
        }
        yield Recipient(address or "<missing email>", variables)


def read_suppressions(path: str) -> frozenset[str]:
    """Addresses never to send to (compared case-insensitively)."""
    with open_text(path) as f:
        return frozenset(
            line.strip().lower() for line in f if line.strip() and not line.startswith("#")
        )


def read_message(path: str) -> bytes:
    """The message file's bytes, refused (exit 2) when they cannot be mail as they are."""
    try:
        message = Path(path).read_bytes() if path != "-" else sys.stdin.buffer.read()
    except OSError as exc:
        raise InputError(f"cannot read message {path}: {exc.strerror}") from exc
    problem = message_problem(message)
    if problem is not None:
        raise InputError(f"message {path} {problem}")
    return message
