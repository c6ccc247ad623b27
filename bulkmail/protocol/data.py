"""Message data on the wire (RFC 5321 §4.5.2, RFC 3030).

Every bare CR and bare LF becomes CRLF before anything else, so no
``<LF>.<LF>`` or ``<CR>.<CR>`` can ever reach a server (SMTP smuggling); then
dot-stuffing and exactly one terminator.  Identical content is prepared once
(:class:`PreparedMessage`) and shared by every transaction that sends it.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .errors import MessageError

#: CRLF first, so that it is kept as one line end rather than read as CR + LF.
_NEWLINES = re.compile(rb"\r\n|\r|\n")
_TERMINATOR = b".\r\n"
MAX_LINE_LENGTH = 998  # RFC 5321 §4.5.3.1.6, CRLF excluded


def normalize_newlines(message: bytes) -> bytes:
    """Every line ending becomes CRLF; a non-empty message ends with CRLF."""
    if not message:
        return b""
    lf = message.count(b"\n")
    if lf != message.count(b"\r") or lf != message.count(b"\r\n"):
        message = _NEWLINES.sub(b"\r\n", message)
    # else already CRLF-only: three C-speed counts beat rebuilding the bytes
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message


def dot_stuff(normalized: bytes) -> bytes:
    """Double the leading dot of every line (RFC 5321 §4.5.2); needs CRLF-only input."""
    out = normalized.replace(b"\r\n.", b"\r\n..")
    if out.startswith(b"."):
        out = b"." + out
    return out


def encode_data(message: bytes) -> bytes:
    """What follows the 354: normalised, stuffed, ending in ``CRLF . CRLF``."""
    return dot_stuff(normalize_newlines(message)) + _TERMINATOR


def unstuff(wire: bytes) -> bytes:
    """The inverse of :func:`encode_data`: drop the terminator, undo stuffing.

    As a receiver must (RFC 5321 §4.5.2), the first dot of *every* line that
    starts with one is removed, not only of lines starting with two.
    """
    if wire == _TERMINATOR:
        return b""
    if not wire.endswith(b"\r\n" + _TERMINATOR):
        raise ValueError("data does not end with CRLF . CRLF")
    body = wire[: -len(_TERMINATOR)]
    if body.startswith(b"."):
        body = body[1:]
    return body.replace(b"\r\n.", b"\r\n")


def has_8bit(data: bytes) -> bool:
    """Any octet above 127 (needs 8BITMIME)."""
    return not data.isascii()


def longest_line(normalized: bytes) -> int:
    """Longest line in octets, CRLF excluded."""
    if not normalized:
        return 0
    return max(map(len, normalized.split(b"\r\n")))


def bdat_chunks(normalized: bytes, chunk_size: int = 1 << 20) -> list[bytes]:
    """BDAT payloads (no stuffing in CHUNKING); an empty message is one empty chunk."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    if not normalized:
        return [b""]
    return [normalized[i : i + chunk_size] for i in range(0, len(normalized), chunk_size)]


class PreparedMessage(NamedTuple):
    """A message ready for the wire, computed once and reused by every transaction.

    A named tuple: a personalised run makes one per message."""

    normalized: bytes
    data_payload: bytes
    size: int
    eightbit: bool
    longest_line: int

    @classmethod
    def from_bytes(cls, message: bytes) -> PreparedMessage:
        normalized = normalize_newlines(message)
        # positional (a personalised run makes one per message): normalized,
        # data_payload, size, eightbit (has_8bit, inline), longest_line
        return cls(
            normalized, dot_stuff(normalized) + _TERMINATOR, len(normalized),
            not normalized.isascii(), longest_line(normalized),
        )

    def check_sendable(
        self, *, eightbitmime: bool, max_size: int | None, max_line_length: int = MAX_LINE_LENGTH
    ) -> None:
        """Refuse, before anything is sent, what this server cannot take as it is.

        ``max_size`` is the server's SIZE (``None`` or 0: no limit announced).
        """
        if self.longest_line > max_line_length:
            raise MessageError(f"line of {self.longest_line} octets exceeds {max_line_length}")
        if self.eightbit and not eightbitmime:
            raise MessageError("8-bit content but server lacks 8BITMIME")
        if max_size and self.size > max_size:
            raise MessageError(
                f"message of {self.size} octets exceeds server SIZE {max_size}",
                code=552, enhanced="5.3.4",
            )
