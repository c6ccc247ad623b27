"""A durable MTA-STS policy cache: one small JSON file that survives restarts.

RFC 8461 §5.1 asks senders to keep a policy until its ``max_age`` passes and
to keep using it when a later fetch fails -- that is what stops an attacker
who blocks the policy host from downgrading delivery.  Times are wall-clock
(the cache outlives the process), written atomically (temp file + rename).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .mta_sts import PolicyError, STSPolicy, parse_policy


@dataclass(frozen=True, slots=True)
class CachedPolicy:
    policy_id: str
    policy: STSPolicy
    #: wall-clock seconds when the policy was fetched
    fetched: float

    def fresh(self, now: float) -> bool:
        return now < self.fetched + self.policy.max_age


class PolicyCache:
    """Policies by domain; ``path`` None keeps them in memory only."""

    def __init__(self, path: str | os.PathLike[str] | None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path) if path is not None else None
        self.clock = clock
        self._entries: dict[str, CachedPolicy] = {}
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            return  # an unreadable cache is an empty one: policies are fetched again
        if not isinstance(data, dict):
            return
        for domain, entry in data.items():
            try:
                policy = parse_policy(entry["policy"])
                self._entries[domain] = CachedPolicy(
                    str(entry["id"]), policy, float(entry["fetched"])
                )
            except (KeyError, TypeError, ValueError, PolicyError):
                continue

    def get(self, domain: str) -> CachedPolicy | None:
        """The unexpired policy of ``domain``, or None."""
        entry = self._entries.get(domain)
        if entry is None or not entry.fresh(self.clock()):
            return None
        return entry

    def put(self, domain: str, policy_id: str, policy: STSPolicy) -> CachedPolicy:
        entry = self._entries[domain] = CachedPolicy(policy_id, policy, self.clock())
        self._save()
        return entry

    def _save(self) -> None:
        if self.path is None:
            return
        now = self.clock()
        data = {
            domain: {"id": e.policy_id, "policy": e.policy.text, "fetched": e.fetched}
            for domain, e in self._entries.items() if e.fresh(now)
        }
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(data, indent=1, sort_keys=True), "utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:  # the policy still holds for this process
            warnings.warn(f"MTA-STS policy cache {self.path} not written: {exc}", stacklevel=3)
