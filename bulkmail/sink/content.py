"""Message content, streamed: DATA up to ``CRLF.CRLF`` and BDAT chunks.

Content is consumed as it arrives and only counted -- kept only when
messages are recorded -- so a client sending a 10 MB line, or a message far
over SIZE, costs the sink one read buffer, not the message.  Each read is
scanned once (``find`` / ``count`` in C), never the whole message again.
"""

from __future__ import annotations

_TERMINATOR = b"\r\n.\r\n"


class Content:
    """One message's content: its size after un-stuffing and, if recording, its bytes."""

    __slots__ = ("_parts", "limit", "size")

    def __init__(self, limit: int, record: bool) -> None:
        self.size = 0
        self.limit = limit
        self._parts: list[bytes] | None = [] if record else None

    @property
    def too_big(self) -> bool:
        return self.size > self.limit

    def add(self, buf: bytes, start: int, stop: int, size: int) -> None:
        """Count ``size`` octets; keep ``buf[start:stop]`` while recording and
        within the limit (slicing only then: counting copies nothing)."""
        self.size += size
        if self._parts is not None:
            if self.size > self.limit:
                self._parts = None
            else:
                self._parts.append(buf[start:stop])

    def joined(self) -> bytes:
        return b"".join(self._parts or ())


class DotReader(Content):
    """DATA content (RFC 5321 §4.5.2): ends at a line holding only ``.``;
    the leading dot of any other line starting with one is removed."""

    __slots__ = ("done", "line_start")

    def __init__(self, limit: int, record: bool) -> None:
        super().__init__(limit, record)
        self.line_start = True
        self.done = False

    def feed(self, buf: bytes, pos: int) -> int:
        """Consume what it can of ``buf[pos:]``; the new position.

        Leaves unconsumed only what might begin the terminator; sets
        :attr:`done` once the terminator is consumed.
        """
        if self.line_start:
            if len(buf) - pos < 3:
                return pos
            if buf.startswith(b".\r\n", pos):
                self.done = True
                return pos + 3
        end = buf.find(_TERMINATOR, pos)
        if end >= 0:
            self._take(buf, pos, end + 2)
            self.done = True
            return end + 5
        last = buf.rfind(b"\r\n", pos)
        if last >= 0:
            stop, line_start = last + 2, True
        else:
            stop, line_start = len(buf), False
            if buf.endswith(b"\r"):
                stop -= 1  # may be the start of the next CRLF
        if stop > pos:
            self._take(buf, pos, stop)
            self.line_start = line_start
        return stop

    def _take(self, buf: bytes, start: int, stop: int) -> None:
        # "\r\n." wholly inside [start, stop): a stuffed dot; a CRLF at the
        # very end leaves its dot to the next call, which sees line_start.
        dots = buf.count(b"\r\n.", start, stop)
        if self.line_start and buf[start] == 0x2E:
            dots += 1
        self.add(buf, start, stop, stop - start - dots)

    def message(self) -> bytes:
        """The recorded content, un-stuffed."""
        stuffed = self.joined()
        if stuffed.startswith(b"."):
            stuffed = stuffed[1:]
        return stuffed.replace(b"\r\n.", b"\r\n")


class ChunkReader(Content):
    """BDAT content (RFC 3030): exact octet counts, no stuffing."""

    __slots__ = ("remaining",)

    def __init__(self, limit: int, record: bool) -> None:
        super().__init__(limit, record)
        self.remaining = 0

    def feed(self, buf: bytes, pos: int) -> int:
        take = min(self.remaining, len(buf) - pos)
        if take:
            self.add(buf, pos, pos + take, take)
            self.remaining -= take
        return pos + take

    def message(self) -> bytes:
        return self.joined()
