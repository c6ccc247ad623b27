"""A record of one SMTP dialogue in the shape of the seed session example.

Entries are ``{"direction": "client"|"server", "data": ..., "note": ...}``
(a bare ``{"note": ...}`` for events such as the TLS handshake).  Secrets are
redacted by the caller before they reach the trace (see ``SASLClient.redacted``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .protocol.pipeline import TraceSink
from .protocol.replies import Reply


def format_reply(reply: Reply) -> str:
    """The reply as it appeared on the wire, lines joined by ``\\n``."""
    last = len(reply.lines) - 1
    return "\n".join(
        f"{reply.code}{' ' if i == last else '-'}{line}".rstrip()
        for i, line in enumerate(reply.lines)
    )


@dataclass(slots=True)
class Trace:
    entries: list[dict[str, Any]] = field(default_factory=list)

    def client(self, data: bytes | str, note: str | None = None) -> None:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        entry: dict[str, Any] = {"direction": "client", "data": text.removesuffix("\r\n")}
        if note:
            entry["note"] = note
        self.entries.append(entry)

    def server(self, reply: Reply, note: str | None = None) -> None:
        entry: dict[str, Any] = {"direction": "server", "data": format_reply(reply)}
        if note:
            entry["note"] = note
        self.entries.append(entry)

    def note(self, text: str) -> None:
        self.entries.append({"note": text})

    def client_lines(self) -> list[str]:
        """Just what the client sent, in order (what tests compare)."""
        return [e["data"] for e in self.entries if e.get("direction") == "client"]


class Tee:
    """Two trace sinks fed the same dialogue (a debug trace and a session record)."""

    __slots__ = ("_a", "_b")

    def __init__(self, a: TraceSink, b: TraceSink) -> None:
        self._a, self._b = a, b

    def client(self, data: bytes | str, note: str | None = None) -> None:
        self._a.client(data, note)
        self._b.client(data, note)

    def server(self, reply: Reply, note: str | None = None) -> None:
        self._a.server(reply, note)
        self._b.server(reply, note)

    def note(self, text: str) -> None:
        self._a.note(text)
        self._b.note(text)
