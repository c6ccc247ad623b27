"""SMTP reply parsing (RFC 5321 §4.2, enhanced codes RFC 2034 / RFC 3463).

The parser is fed bytes and hands out complete replies; it never blocks and
never buffers more than one line's cap plus one reply's worth of lines, so a
hostile server cannot make it grow without bound.  Any input either parses or
raises :class:`RemoteProtocolError` -- nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import RemoteProtocolError

#: RFC 5321 §4.5.3.1.5 says 512 octets including CRLF; real servers exceed it
#: (long 5xx explanations), so the default cap is larger but always finite.
DEFAULT_MAX_LINE_LENGTH = 4096
#: EHLO replies are the longest in practice (a few dozen lines).
DEFAULT_MAX_LINES = 256

_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?= |$)")


@dataclass(frozen=True, slots=True)
class Reply:
    """One complete server reply.

    ``lines`` holds the text of each line (code and separator removed);
    ``enhanced`` is the RFC 3463 status code of the first line when offered
    and consistent with ``code``, else ``None``.
    """

    code: int
    lines: tuple[str, ...]
    enhanced: str | None = None

    @property
    def text(self) -> str:
        """All lines joined, enhanced code removed from each."""
        if self.enhanced is None:
            return "\n".join(self.lines)
        prefix = self.enhanced
        n = len(prefix)
        out = []
        for line in self.lines:
            if line.startswith(prefix) and (len(line) == n or line[n] == " "):
                line = line[n:].lstrip(" ")
            out.append(line)
        return "\n".join(out)

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        if self.enhanced:
            return f"{self.code} {self.enhanced} {self.text}".rstrip()
        return f"{self.code} {self.text}".rstrip()


def synthetic_reply(code: int, enhanced: str, text: str) -> Reply:
    """A reply bulkmail made up to describe a local or network condition."""
    return Reply(code, (f"{enhanced} {text}",), enhanced)


def parse_enhanced(code: int, text: str) -> str | None:
    """The enhanced status code at the start of ``text``, if its class matches ``code``.

    A server that says ``250 5.0.0`` is confused; trusting the reply code and
    dropping the enhanced code is what RFC 3463 §2 implies (class must agree).
    """
    m = _ENHANCED.match(text)
    if m is None or int(m.group(1)) != code // 100:
        return None
    return m.group(0)


#: distinct single-line replies remembered per connection
MAX_KNOWN_REPLIES = 64


class ReplyParser:
    """Incremental parser: ``feed(bytes)`` then ``next_reply()`` until ``None``.

    Works from one buffer with an offset (no per-line copies of the buffer),
    compacting only once consumed data dominates.
    """

    __slots__ = (
        "_buf", "_code", "_eof", "_known", "_last_raw", "_last_reply", "_lines", "_pos",
        "max_line_length", "max_lines",
    )

    def __init__(
        self,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_lines: int = DEFAULT_MAX_LINES,
    ) -> None:
        if max_line_length < 512:
            raise ValueError("max_line_length below RFC 5321's 512 octets")
        self.max_line_length = max_line_length
        self.max_lines = max_lines
        self._buf = bytearray()
        self._pos = 0
        self._lines: list[str] = []
        self._code = 0
        self._eof = False
        #: single-line replies seen before, by raw line (line ending included),
        #: parsed once: a server says "250 2.1.0 Ok" thousands of times, and a
        #: shared (immutable) Reply costs nothing
        self._known: dict[bytes, Reply] = {}
        #: the last known reply and its raw line (line ending included)
        self._last_raw = b""
        self._last_reply: Reply | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned reply."""
        return len(self._buf) - self._pos + sum(len(x) for x in self._lines)

    @property
    def in_progress(self) -> bool:
        """True while part of a reply has been seen."""
        return bool(self._lines) or len(self._buf) > self._pos

    def feed(self, data: bytes | bytearray) -> None:
        """Add received bytes; ``b""`` means the peer closed the connection."""
        if not data:
            self._eof = True
            return
        if self._pos and self._pos > len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def take_repeats(self, limit: int) -> int:
        """Consume up to ``limit`` buffered copies of the reply just returned
        (fifty "250 2.1.5 Ok" to fifty RCPTs); how many there were."""
        last = self._last_raw
        if not last or self._lines:
            return 0
        buf, pos, size, n = self._buf, self._pos, len(last), 0
        while n < limit and buf.startswith(last, pos):
            pos += size
            n += 1
        self._pos = pos
        return n

    def next_reply(self) -> Reply | None:
        """The next complete reply, or ``None`` if more data is needed."""
        buf, pos = self._buf, self._pos
        last = self._last_raw
        if last and not self._lines and buf.startswith(last, pos):
            # the same line as the reply before (50 RCPTs: fifty "250 2.1.5 Ok");
            # take_repeats(1), inline: this runs once per reply
            self._pos = pos + len(last)
            return self._last_reply
        while True:
            start = self._pos
            nl = buf.find(b"\n", start)
            if nl < 0:
                pending = len(buf) - start
                if buf.endswith(b"\r"):
                    pending -= 1  # the CR of a CRLF split across reads is not content
                if pending > self.max_line_length:
                    raise RemoteProtocolError(
                        f"reply line longer than {self.max_line_length} octets",
                        bytes(buf[start : start + 256]),
                    )
                if self._eof and (pending or self._lines):
                    raise RemoteProtocolError(
                        "connection closed in the middle of a reply",
                        bytes(buf[start:]),
                    )
                return None
            end = nl
            if end > start and buf[end - 1] == 0x0D:
                end -= 1
            if end - start > self.max_line_length:
                raise RemoteProtocolError(
                    f"reply line longer than {self.max_line_length} octets",
                    bytes(buf[start : start + 256]),
                )
            # one copy, line ending included: the key of a known reply
            raw = bytes(buf[start : nl + 1])
            self._pos = nl + 1
            if not self._lines:
                known = self._known.get(raw)
                if known is not None:
                    self._last_raw, self._last_reply = raw, known
                    return known
            reply = self._take_line(raw[: end - start])
            if reply is not None:
                if len(reply.lines) == 1 and len(self._known) < MAX_KNOWN_REPLIES:
                    self._known[raw] = reply
                    self._last_raw, self._last_reply = raw, reply
                return reply

    def _take_line(self, line: bytes) -> Reply | None:
        n = len(line)
        if (
            n < 3
            or not (0x32 <= line[0] <= 0x35)
            or not (0x30 <= line[1] <= 0x39)
            or not (0x30 <= line[2] <= 0x39)
            or (n > 3 and line[3] not in (0x20, 0x2D))
        ):
            raise RemoteProtocolError("malformed reply line", line)
        code = (line[0] - 48) * 100 + (line[1] - 48) * 10 + (line[2] - 48)
        if self._lines and code != self._code:
            raise RemoteProtocolError(
                f"multi-line reply changed code from {self._code} to {code}", line
            )
        self._code = code
        text = line[4:].decode("utf-8", "replace")
        self._lines.append(text)
        if n > 3 and line[3] == 0x2D:
            if len(self._lines) >= self.max_lines:
                raise RemoteProtocolError(
                    f"reply longer than {self.max_lines} lines", line
                )
            return None
        lines = tuple(self._lines)
        self._lines = []
        return Reply(code, lines, parse_enhanced(code, lines[0]))
