"""Message data on the wire (RFC 5321 §4.5.2, RFC 3030).

Every bare CR and bare LF becomes CRLF before anything else, so no
``<LF>.<LF>`` or ``<CR>.<CR>`` can ever reach a server (SMTP smuggling); then
dot-stuffing and exactly one terminator.  Identical content is prepared once
(:class:`PreparedMessage`) and shared by every transaction that sends it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import MessageError

_NEWLINES = re.compile(rb"\r\n|\r|\n")
_LINE_END = re.compile(rb"\r\n")


def normalize_newlines(message: bytes) -> bytes:
    """Every line ending becomes CRLF; a non-empty message ends with CRLF."""
    if not message:
        return b""
    out = _NEWLINES.sub(b"\r\n", message)
    if not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out


def dot_stuff(normalized: bytes) -> bytes:
    """Double the leading dot of every line (RFC 5321 §4.5.2)."""
    out = normalized.replace(b"\r\n.", b"\r\n..")
    if out.startswith(b"."):
        out = b"." + out
    return out


def encode_data(message: bytes) -> bytes:
    """What follows the 354: normalised, stuffed, terminated."""
    return dot_stuff(normalize_newlines(message)) + b".\r\n"


def unstuff(wire: bytes) -> bytes:
    """The inverse of :func:`encode_data` (for tests and the sink)."""
    if not wire.endswith(b".\r\n"):
        raise ValueError("data does not end with the terminator")
    body = wire[:-3]
    if body.startswith(b".."):
        body = body[1:]
    return body.replace(b"\r\n..", b"\r\n.")


def has_8bit(data: bytes) -> bool:
    return not data.isascii()


def longest_line(normalized: bytes) -> int:
    """Longest line in octets, CRLF excluded."""
    longest = 0
    start = 0
    find = normalized.find
    n = len(normalized)
    while start < n:
        end = find(b"\r\n", start)
        if end < 0:
            end = n
        if end - start > longest:
            longest = end - start
        start = end + 2
    return longest


def bdat_chunks(normalized: bytes, chunk_size: int = 1 << 20) -> list[bytes]:
    """BDAT payloads (no stuffing); an empty message is one empty chunk."""
    if not normalized:
        return [b""]
    return [normalized[i : i + chunk_size] for i in range(0, len(normalized), chunk_size)]


@dataclass(frozen=True, slots=True)
class PreparedMessage:
    """A message ready for the wire, computed once and reused."""

    normalized: bytes
    data_payload: bytes
    size: int
    eightbit: bool
    longest_line: int

    @classmethod
    def from_bytes(cls, message: bytes) -> PreparedMessage:
        normalized = normalize_newlines(message)
        return cls(
            normalized=normalized,
            data_payload=dot_stuff(normalized) + b".\r\n",
            size=len(normalized),
            eightbit=has_8bit(normalized),
            longest_line=longest_line(normalized) if len(normalized) > 998 else 0,
        )

    def check_sendable(
        self, *, eightbitmime: bool, max_size: int | None, max_line_length: int = 998
    ) -> None:
        """Refuse, before anything is sent, what this server cannot take as it is."""
        if self.longest_line > max_line_length:
            raise MessageError(
                f"line of {self.longest_line} octets exceeds {max_line_length}"
                " (RFC 5321 §4.5.3.1.6)"
            )
        if self.eightbit and not eightbitmime:
            raise MessageError("8-bit content but server lacks 8BITMIME")
        if max_size is not None and self.size > max_size:
            raise MessageError(f"message of {self.size} octets exceeds server SIZE {max_size}")
