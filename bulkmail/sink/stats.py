"""The sink's counters: what it accepted, for tests and benchmarks to compare
with what a client believes it delivered."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple


class ReceivedMessage(NamedTuple):
    """One accepted message, kept when ``record_messages`` is on."""

    peer: str
    mail_from: str
    rcpts: list[str]
    #: the content after un-stuffing (DATA) or the concatenated chunks (BDAT)
    content: bytes


@dataclass(slots=True)
class SinkStats:
    """Counters of one sink.

    ``messages``, ``recipients`` and ``bytes`` grow only when the 250 after a
    message's content has been handed to the kernel, so a dropped connection
    or a rejected message never counts.
    """

    sessions: int = 0
    active_sessions: int = 0
    max_active_sessions: int = 0
    messages: int = 0
    recipients: int = 0
    #: octets of accepted content, after un-stuffing
    bytes: int = 0
    #: MAIL commands accepted
    transactions: int = 0
    #: RCPTs answered 5xx / 4xx
    rejected: int = 0
    deferred: int = 0
    #: transactions ended by the ``drop_rate`` fault
    dropped: int = 0
    #: writes of replies: one per client round trip (a pipelined group gets one)
    reply_batches: int = 0
    #: connections per client IP (which source addresses a client used)
    peers: Counter[str] = field(default_factory=Counter)
    #: connections answered 421 because ``max_connections`` sessions were running
    refused_connections: int = 0
    #: the most sessions open at once, per local address the clients connected
    #: to (a sink listening on 0.0.0.0 stands in for several MX hosts: this
    #: shows the connection cap a client kept towards each)
    max_sessions_by_address: dict[str, int] = field(default_factory=dict)
    _active_by_address: Counter[str] = field(default_factory=Counter, repr=False)

    def session_started(self, peer: str, local: str) -> None:
        self.sessions += 1
        self.active_sessions += 1
        if self.active_sessions > self.max_active_sessions:
            self.max_active_sessions = self.active_sessions
        self.peers[peer] += 1
        active = self._active_by_address
        active[local] += 1
        if active[local] > self.max_sessions_by_address.get(local, 0):
            self.max_sessions_by_address[local] = active[local]

    def session_ended(self, local: str) -> None:
        self.active_sessions -= 1
        self._active_by_address[local] -= 1

    def as_dict(self) -> dict[str, object]:
        return {
            "sessions": self.sessions,
            "active_sessions": self.active_sessions,
            "max_active_sessions": self.max_active_sessions,
            "messages": self.messages,
            "recipients": self.recipients,
            "bytes": self.bytes,
            "transactions": self.transactions,
            "rejected": self.rejected,
            "deferred": self.deferred,
            "dropped": self.dropped,
            "reply_batches": self.reply_batches,
            "peers": dict(self.peers),
            "refused_connections": self.refused_connections,
            "max_sessions_by_address": dict(self.max_sessions_by_address),
        }

    def to_json(self) -> str:
        """One line of JSON."""
        return json.dumps(self.as_dict(), sort_keys=True)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Replace ``path`` atomically, so a reader never sees half a file.

        OSError when it cannot (no descriptor left, disk full): the caller
        decides whether that matters.
        """
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(self.to_json() + "\n")
        tmp.replace(target)
