"""Reading what a newsletter run is given: recipients, suppression list, message.

Recipients stream: a million-line file is never held in memory.  A line that
is not an address is still yielded -- the engine bounces it as ``invalid``
with the reason -- so a bad line is that recipient's problem, never a crash.
A line that is not UTF-8 is handed to ``on_refused`` instead (its bytes
shown as ``\\xNN``), to be bounced ``553 5.1.3`` without reaching the engine.
A file that is not UTF-8 text at all (UTF-16, binary) is refused at start; a
UTF-8 byte-order mark (Excel's "CSV UTF-8") is skipped.
"""

from __future__ import annotations

import codecs
import csv
import io
import sys
from collections.abc import Callable, Generator, Iterator
from itertools import chain
from pathlib import Path
from typing import TextIO

from ..message import Recipient, message_problem

#: told of a recipient line that cannot be used: (the line's text, why)
RefusedLine = Callable[[str, str], None]

_SNIFF = 65536
_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"),
)


class InputError(Exception):
    """Unreadable or unusable input: the CLI exits 2 with this message."""


def open_text(path: str) -> TextIO:
    """``path`` (``-``: stdin) as UTF-8 text, a BOM skipped, bad bytes kept as
    surrogates; refused if it is UTF-16/32 or binary."""
    _check_text(path, head_bytes(path))
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", errors="surrogateescape")
    try:
        return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc


def head_bytes(path: str) -> bytes:
    """The file's first bytes, without consuming stdin."""
    if path == "-":
        buffer = sys.stdin.buffer
        peek = getattr(buffer, "peek", None)
        return peek(_SNIFF)[:_SNIFF] if peek is not None else b""
    try:
        with open(path, "rb") as f:
            return f.read(_SNIFF)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc


def _check_text(path: str, head: bytes) -> None:
    name = "standard input" if path == "-" else path
    for bom, encoding in _WIDE_BOMS:
        if head.startswith(bom):
            raise InputError(f"{name} is {encoding} text; save it as UTF-8 (or ASCII)")
    if b"\0" in head:
        raise InputError(f"{name} is not a text file (it holds NUL bytes); expected UTF-8 text")


def columns_of(path: str) -> list[str] | None:
    """The CSV columns a recipients file offers its template ([] for a plain
    list; ``None`` when stdin has not delivered its first line yet)."""
    head = head_bytes(path)
    _check_text(path, head)
    if path == "-" and b"\n" not in head:
        return None  # a slow producer: the header is not known without consuming stdin
    text = head.decode("utf-8-sig", "surrogateescape")
    first = next((line for line in text.splitlines() if line.strip()), "")
    columns, is_csv = _header(first)
    return [c for c in columns if c] if is_csv else []


def _header(first: str) -> tuple[list[str], bool]:
    """A first line's columns, and whether it makes the file a CSV."""
    header = next(csv.reader([first]), [])
    columns = [h.strip() for h in header]
    lowered = [c.lower() for c in columns]
    return columns, len(columns) > 1 or lowered == ["email"]


def read_recipients(
    path: str, on_refused: RefusedLine | None = None
) -> Generator[Recipient, None, None]:
    """One address per line, or a CSV whose header has an ``email`` column.

    Blank lines and ``#`` comments are skipped; other CSV columns become the
    recipient's template variables (an empty cell is an empty string).  A line
    that is not UTF-8 goes to ``on_refused`` (without one it is yielded with
    its bad bytes escaped, and the engine bounces it as an invalid address).
    """
    f = open_text(path)
    with f:
        first = f.readline()
        lines = 1
        while first and not first.strip():
            first = f.readline()
            lines += 1
        if not first:
            return
        columns, is_csv = _header(first)
        if is_csv:
            lowered = [c.lower() for c in columns]
            if "email" not in lowered:
                raise InputError(f"{path}: CSV header has no 'email' column: {first.strip()!r}")
            yield from _csv_rows(f, columns, lowered.index("email"), on_refused, lines)
            return
        yield from _lines(f, first, lines, on_refused)


def _lines(
    f: TextIO, first: str, first_number: int, on_refused: RefusedLine | None
) -> Iterator[Recipient]:
    # chain() and enumerate(), not a generator of our own and a counter: one
    # Python frame less per line (0.1 s of cProfile time on 300,000 lines)
    for number, line in enumerate(chain((first,), f), first_number):
        address = line.strip()
        if address and not address.startswith("#"):
            if address.isascii() or _is_utf8(address):
                yield Recipient(address)
            else:
                refused = _refuse(address, number, on_refused)
                if refused is not None:
                    yield refused


def _csv_rows(
    f: TextIO,
    columns: list[str],
    email_index: int,
    on_refused: RefusedLine | None,
    header_lines: int,
) -> Iterator[Recipient]:
    reader = csv.reader(f)
    width = len(columns)
    named = [(i, name) for i, name in enumerate(columns) if name]
    all_named = len(named) == width  # then a full row zips straight into its variables
    for row in reader:
        joined = "".join(row)
        if not joined.strip():  # blank, or every cell blank
            continue
        address = row[email_index].strip() if email_index < len(row) else ""
        if not (joined.isascii() or _is_utf8(joined)):
            refused = _refuse(address or joined, header_lines + reader.line_num, on_refused)
            if refused is not None:
                yield refused
            continue
        if all_named and len(row) == width:
            variables = dict(zip(columns, row, strict=True))  # a third of the comprehension's cost
        else:
            variables = {name: row[i] if i < len(row) else "" for i, name in named}
        yield Recipient(address or "<missing email>", variables)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refuse(text: str, line: int, on_refused: RefusedLine | None) -> Recipient | None:
    raw = text.encode("utf-8", "surrogateescape")
    shown = raw.decode("utf-8", "backslashreplace")
    bad = _first_undecodable(raw)
    reason = f"line {line} is not UTF-8 (byte 0x{bad:02x}); save the file as UTF-8"
    if on_refused is None:
        return Recipient(shown)
    on_refused(shown, reason)
    return None


def _first_undecodable(raw: bytes) -> int:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return raw[exc.start]
    return 0  # not reached: only called for text that is not UTF-8


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
