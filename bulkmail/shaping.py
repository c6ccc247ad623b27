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
    timeouts = { greeting = "60s", data_done = "20m" }

A pattern matches a recipient domain or one of its MX host names (so
``*.google.com`` shapes every domain hosted by Google); ``*.x`` also matches
``x`` itself.  The first matching rule wins; unspecified keys fall back to the
default.  ``timeouts`` changes some of the session's stage deadlines
(:class:`~bulkmail.config.Timeouts`) for the matching destinations only.

Two more sections act on what servers answer and on how new egress
addresses grow: ``[[reactions]]`` (reply-driven shaping, see
:mod:`bulkmail.reactions`) and ``[[warmup]]`` (IP warm-up schedules, see
:mod:`bulkmail.warmup`).

Anything wrong in the file -- TOML syntax, an unknown key, a value of the
wrong type or out of range -- is a :class:`ShapingError` naming the file and
where, never a half-applied limit.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from .config import Timeouts, parse_duration
from .destination_match import pattern_matches
from .reactions import ReactionRule, parse_reaction
from .warmup import WarmupRule, parse_warmup

_T = TypeVar("_T")


class ShapingError(ValueError):
    """A shaping file or mapping that cannot be used; the message says where."""


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
    #: (stage, seconds) pairs overriding the session's :class:`Timeouts` here
    timeouts: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.connections < 1 or self.max_rcpts < 1 or self.messages_per_connection < 1:
            raise ValueError("connections, max_rcpts and messages_per_connection must be >= 1")
        if not self.idle_timeout > 0:
            raise ValueError(f"idle_timeout must be positive, not {self.idle_timeout!r}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate must be positive, not {self.rate!r}")
        if self.timeouts:  # a stage that does not exist, or a bad value, fails here
            Timeouts().updated(dict(self.timeouts))

    def session_timeouts(self, base: Timeouts) -> Timeouts:
        """The stage deadlines for this destination's sessions: ``base`` (the
        run's) with this destination's overrides."""
        return base.updated(dict(self.timeouts)) if self.timeouts else base


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def parse_rate(value: str | float | int) -> float:
    """``"600/min"`` -> 10.0 messages per second; a bare number is per second."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"rate {value!r}: expected N/s, N/min or N/hour")
    if isinstance(value, (int, float)):
        if not 0 < value < math.inf:
            raise ValueError(f"rate {value!r}: must be positive")
        return float(value)
    m = _RATE.match(value)
    if m is None:
        raise ValueError(f"rate {value!r}: expected N/s, N/min or N/hour")
    rate = float(m.group(1)) / _PER[m.group(2)]
    if not rate > 0:
        raise ValueError(f"rate {value!r}: must be positive")
    return rate


@dataclass(frozen=True, slots=True)
class Rule:
    pattern: str
    limits: PoolLimits

    def matches(self, names: Iterable[str]) -> bool:
        return pattern_matches(self.pattern, names)


@dataclass(frozen=True, slots=True)
class Shaping:
    default: PoolLimits = field(default_factory=PoolLimits)
    rules: tuple[Rule, ...] = ()
    #: ``[[reactions]]``: what to do when a destination's reply matches
    reactions: tuple[ReactionRule, ...] = ()
    #: ``[[warmup]]``: caps per egress address and destination, growing by the day
    warmup: tuple[WarmupRule, ...] = ()

    def limits_for(self, domain: str, hosts: Iterable[str] = ()) -> PoolLimits:
        """The limits for ``domain`` hosted on ``hosts``: the first rule matching
        the domain or one of its MX host names, else the default."""
        rule = self.rule_for([domain, *hosts])
        return self.default if rule is None else rule.limits

    def rule_for(self, names: Iterable[str]) -> Rule | None:
        names = list(names)
        for rule in self.rules:
            if rule.matches(names):
                return rule
        return None

    def site_rule(self, hosts: Iterable[str]) -> Rule | None:
        """The rule for a site (a set of MX hosts), chosen by its host names
        alone: a pool shared by many domains never takes one domain's rule."""
        return self.rule_for(hosts)

    def own_rule(self, domain: str, hosts: Iterable[str]) -> Rule | None:
        """The rule that sets ``domain`` apart from its site, if any: the first
        rule matching it (by name or host) when that is not the site's rule.
        Such a domain gets a pool of its own under that rule's limits."""
        hosts = list(hosts)
        rule = self.rule_for([domain, *hosts])
        return None if rule is None or rule is self.site_rule(hosts) else rule

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], base: PoolLimits | None = None) -> Shaping:
        """ShapingError (a ValueError) for anything it cannot use, naming the section."""
        unknown = set(data) - {"default", "domains", "reactions", "warmup"}
        if unknown:
            raise ShapingError(f"unknown section(s) {sorted(unknown)}")
        default = _limits(_table(data.get("default", {}), "[default]"), base or PoolLimits(),
                          "[default]")
        domains = _table(data.get("domains", {}), "[domains]")
        rules = tuple(
            Rule(pattern, _limits(_table(values, f"[domains.{pattern!r}]"), default,
                                  f"[domains.{pattern!r}]"))
            for pattern, values in domains.items()
        )
        reactions = tuple(
            _entry(parse_reaction, table, f"[[reactions]] #{i + 1}", i + 1, parse_rate)
            for i, table in enumerate(_array(data.get("reactions", []), "[[reactions]]"))
        )
        warmup = tuple(
            _entry(parse_warmup, table, f"[[warmup]] #{i + 1}")
            for i, table in enumerate(_array(data.get("warmup", []), "[[warmup]]"))
        )
        return cls(default, rules, reactions, warmup)

    @classmethod
    def load(cls, path: str | Path, base: PoolLimits | None = None) -> Shaping:
        """The shaping file at ``path``; ShapingError names the file (and the
        line, for a TOML syntax error); OSError if it cannot be read."""
        with open(path, "rb") as f:
            try:
                data = tomllib.load(f)
            except tomllib.TOMLDecodeError as exc:  # its message ends "(at line L, column C)"
                raise ShapingError(f"shaping file {path}: {exc}") from None
            except UnicodeDecodeError as exc:
                raise ShapingError(f"shaping file {path}: not UTF-8 text ({exc.reason})") from None
        try:
            return cls.from_mapping(data, base)
        except ShapingError as exc:
            raise ShapingError(f"shaping file {path}: {exc}") from None


#: keys whose values must be whole numbers >= 1 (TOML's 2.5 or true are refused)
_INTEGER_KEYS = ("connections", "max_rcpts", "messages_per_connection")


def _table(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ShapingError(f"{where} must be a table, not {_kind(value)} {value!r}")
    return value


def _array(value: object, where: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        raise ShapingError(f"{where} must be an array of tables, not {_kind(value)} {value!r}")
    return [_table(item, where) for item in value]


def _entry(parse: Callable[..., _T], table: Mapping[str, Any], where: str, *args: Any) -> _T:
    """``parse(table, *args)``, its ValueError a ShapingError naming ``where``."""
    try:
        return parse(table, *args)
    except ValueError as exc:
        raise ShapingError(f"{where}: {exc}") from None


def _kind(value: object) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "a boolean",
            list: "an array"}.get(type(value), type(value).__name__)


def _limits(values: Mapping[str, Any], base: PoolLimits, where: str) -> PoolLimits:
    known = {f.name for f in fields(PoolLimits)}
    unknown = set(values) - known
    if unknown:
        raise ShapingError(f"{where}: unknown key(s) {sorted(unknown)}")
    changes: dict[str, Any] = dict(values)
    for key in _INTEGER_KEYS:
        if key in changes:
            value = changes[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ShapingError(f"{where}: {key} must be a whole number >= 1, not {value!r}")
    try:
        if "rate" in changes:
            changes["rate"] = parse_rate(changes["rate"])
        if "idle_timeout" in changes:
            changes["idle_timeout"] = parse_duration(changes["idle_timeout"])
            if not changes["idle_timeout"] > 0:
                raise ValueError("idle_timeout must be positive")
        if "source_addresses" in changes:
            addresses = changes["source_addresses"]
            if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
                raise ValueError(f"source_addresses must be an array of strings,"
                                 f" not {addresses!r}")
            changes["source_addresses"] = tuple(addresses)
        if "timeouts" in changes:
            stages = _table(changes["timeouts"], "timeouts")
            merged = dict(base.timeouts)  # the default's stages stay unless changed here
            merged.update(_stage_seconds(stages))
            changes["timeouts"] = tuple(merged.items())
        return replace(base, **changes)
    except ValueError as exc:
        raise ShapingError(f"{where}: {exc}") from None


def _stage_seconds(stages: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(stage, seconds) for a ``timeouts`` table, checked against :class:`Timeouts`."""
    checked = Timeouts().updated(stages)
    names = [name.strip().replace("-", "_") for name in stages]
    return [(name, getattr(checked, name)) for name in names]
