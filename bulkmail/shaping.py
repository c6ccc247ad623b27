"""Traffic shaping: per-destination limits, as bulk senders configure them.

A TOML file maps destination patterns to limits::

    [default]
    connections = 20
    max_rcpts = 50

    [domains."gmail.com"]
    connections = 5
    rate = "600/min"

    [domains."*.outlook.com"]
    rate = "20/s"
    source_addresses = ["192.0.2.10"]

A pattern matches a recipient domain or one of its MX host names (so
``*.google.com`` shapes every domain hosted by Google); ``*.x`` also matches
``x`` itself.  The first matching rule wins; unspecified keys fall back to the
default.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """Limits of one destination's pool."""

    connections: int = 20
    max_rcpts: int = 50
    messages_per_connection: int = 1000
    idle_timeout: float = 5.0
    #: messages per second; None for as fast as the server takes them
    rate: float | None = None
    source_addresses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.connections < 1 or self.max_rcpts < 1 or self.messages_per_connection < 1:
            raise ValueError("connections, max_rcpts and messages_per_connection must be >= 1")


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def parse_rate(value: str | float | int) -> float:
    """``"600/min"`` -> 10.0 messages per second; a bare number is per second."""
    if isinstance(value, (int, float)):
        return float(value)
    m = _RATE.match(value)
    if m is None:
        raise ValueError(f"rate {value!r}: expected N/s, N/min or N/hour")
    return float(m.group(1)) / _PER[m.group(2)]


@dataclass(frozen=True, slots=True)
class Rule:
    pattern: str
    limits: PoolLimits

    def matches(self, names: Iterable[str]) -> bool:
        pattern = self.pattern.lower()
        for name in names:
            name = name.lower().rstrip(".")
            if fnmatch.fnmatchcase(name, pattern):
                return True
            if pattern.startswith("*.") and name == pattern[2:]:
                return True
        return False


@dataclass(frozen=True, slots=True)
class Shaping:
    default: PoolLimits = field(default_factory=PoolLimits)
    rules: tuple[Rule, ...] = ()

    def limits_for(self, domain: str, hosts: Iterable[str] = ()) -> PoolLimits:
        names = [domain, *hosts]
        for rule in self.rules:
            if rule.matches(names):
                return rule.limits
        return self.default

    def with_default(self, **changes: Any) -> Shaping:
        """A copy whose default (and every rule not overriding them) takes ``changes``."""
        default = replace(self.default, **changes)
        return Shaping(default, self.rules)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], base: PoolLimits | None = None) -> Shaping:
        default = _limits(data.get("default", {}), base or PoolLimits(), "default")
        rules = tuple(
            Rule(pattern, _limits(values, default, pattern))
            for pattern, values in data.get("domains", {}).items()
        )
        unknown = set(data) - {"default", "domains"}
        if unknown:
            raise ValueError(f"shaping: unknown section(s) {sorted(unknown)}")
        return cls(default, rules)

    @classmethod
    def load(cls, path: str | Path, base: PoolLimits | None = None) -> Shaping:
        with open(path, "rb") as f:
            return cls.from_mapping(tomllib.load(f), base)


def _limits(values: Mapping[str, Any], base: PoolLimits, where: str) -> PoolLimits:
    known = {f.name for f in fields(PoolLimits)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"shaping [{where}]: unknown key(s) {sorted(unknown)}")
    changes: dict[str, Any] = dict(values)
    if "rate" in changes:
        changes["rate"] = parse_rate(changes["rate"])
    if "source_addresses" in changes:
        changes["source_addresses"] = tuple(changes["source_addresses"])
    return replace(base, **changes)
