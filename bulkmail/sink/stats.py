"""The sink's counters: what it received, for tests and benchmarks to compare."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class SinkStats:
    sessions: int = 0
    active_sessions: int = 0
    max_active_sessions: int = 0
    #: messages accepted (250 after end of data) and their recipients
    messages: int = 0
    recipients: int = 0
    #: octets of accepted content, after un-stuffing
    bytes: int = 0
    transactions: int = 0
    rejected: int = 0
    deferred: int = 0
    dropped: int = 0
    peers: Counter[str] = field(default_factory=Counter)

    def session_started(self, peer: str) -> None:
        self.sessions += 1
        self.active_sessions += 1
        self.max_active_sessions = max(self.max_active_sessions, self.active_sessions)
        self.peers[peer] += 1

    def session_ended(self) -> None:
        self.active_sessions -= 1

    def as_dict(self) -> dict[str, object]:
        return {
            "sessions": self.sessions,
            "messages": self.messages,
            "recipients": self.recipients,
            "bytes": self.bytes,
            "transactions": self.transactions,
            "rejected": self.rejected,
            "deferred": self.deferred,
            "dropped": self.dropped,
            "max_active_sessions": self.max_active_sessions,
            "active_sessions": self.active_sessions,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)
