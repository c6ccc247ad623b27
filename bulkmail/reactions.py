"""Reply-driven shaping rules: when a destination's reply says "slow down", act.

Providers tell a sender to back off in their replies (Yahoo's ``421 4.7.0
[TSS04]``, Gmail's ``421 4.7.28``, Microsoft's ``451 4.7.650``).  A rule in the
shaping file matches such a reply -- code, enhanced code, text regex -- for a
destination pattern (or every destination) and names an action::

    [[reactions]]
    destination = "*.yahoodns.net"      # optional: every destination
    code = "421"                        # full match on the three digits
    enhanced = '4\\.7\\.0'              # full match on the enhanced code
    text = '\\[TSS04\\]'                # searched, case-insensitively
    action = "suspend"                  # suspend | suspend-source | limit | bounce-rest
    duration = "1h"

``class = "rate-limited"`` (or a list of classes) matches the reply's bounce
class (:mod:`bulkmail.bounce_class`, with the ``--bounce-rules`` in force)
instead of, or as well as, its parts: one rule for every provider's way of
saying "slow down".  ``limit`` also takes ``connections`` and/or ``rate``.
The first matching rule wins.  Replies are matched by :class:`~bulkmail.reply_match.ReplyPattern`,
the bounce classifier's matcher, so both rule files read the same way.
This module only describes and matches; the engine applies the action to
the destination's health (:mod:`bulkmail.delivery.health`).  Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .bounce_class import CLASSES, classify
from .config import parse_duration
from .destination_match import pattern_matches
from .protocol.replies import Reply
from .reply_match import ReplyPattern

ACTIONS = ("suspend", "suspend-source", "limit", "bounce-rest")

_KEYS = frozenset({"destination", "code", "enhanced", "text", "class", "action", "duration",
                   "connections", "rate", "name"})


@dataclass(frozen=True, slots=True)
class ReactionRule:
    """One reply rule: which replies, from which destinations, cause what."""

    #: the bounce classifier's matcher: the same keys read the same way
    match: ReplyPattern
    action: str
    duration: float
    #: destination pattern (as in ``[domains]``); None for every destination
    destination: str | None = None
    #: ``limit``: the connection cap and/or rate (messages per second) meanwhile
    connections: int | None = None
    rate: float | None = None
    #: shown in the log line (default: the index in the file)
    name: str = ""
    #: bounce classes the reply must have (empty: any)
    classes: frozenset[str] = frozenset()

    def matches(self, code: int, enhanced: str | None, text: str) -> bool:
        if not self.match.matches(code, enhanced, text):
            return False
        return not self.classes or classify(code, enhanced, text) in self.classes

    def applies_to(self, names: Iterable[str]) -> bool:
        return self.destination is None or pattern_matches(self.destination, names)


def parse_reaction(
    table: Mapping[str, Any], index: int, parse_rate: Callable[[Any], float]
) -> ReactionRule:
    """One ``[[reactions]]`` table; ValueError says what is wrong with it.
    ``parse_rate`` is the shaping file's (``"600/min"`` -> 10.0)."""
    unknown = set(table) - _KEYS
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)}")
    action = table.get("action")
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
    if not any(key in table for key in ("code", "enhanced", "text", "class")):
        raise ValueError("a rule needs at least one of code, enhanced, text, class")
    match = ReplyPattern.from_table(table)  # PatternError is a ValueError
    classes = _classes(table.get("class"))
    destination = table.get("destination")
    if destination is not None and (not isinstance(destination, str) or not destination):
        raise ValueError(f"destination must be a pattern string, not {destination!r}")
    duration = 0.0
    if action != "bounce-rest":
        if "duration" not in table:
            raise ValueError(f"action {action!r} needs a duration")
        duration = parse_duration(table["duration"])
        if not duration > 0:
            raise ValueError("duration must be positive")
    elif "duration" in table:
        raise ValueError("bounce-rest lasts for the job: no duration")
    connections = table.get("connections")
    rate = table.get("rate")
    if action == "limit":
        if connections is None and rate is None:
            raise ValueError("action 'limit' needs connections and/or rate")
        if connections is not None and (
            isinstance(connections, bool) or not isinstance(connections, int) or connections < 1
        ):
            raise ValueError(f"connections must be a whole number >= 1, not {connections!r}")
        rate = None if rate is None else parse_rate(rate)
    elif connections is not None or rate is not None:
        raise ValueError("connections and rate go with action 'limit' only")
    name = table.get("name", f"reactions #{index}")
    if not isinstance(name, str):
        raise ValueError(f"name must be a string, not {name!r}")
    return ReactionRule(match, action, duration, destination, connections, rate, name, classes)


def _classes(value: object) -> frozenset[str]:
    """``class = "rate-limited"`` or ``class = ["rate-limited", "spam-block"]``."""
    if value is None:
        return frozenset()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"class must be a bounce class or a list of them, not {value!r}")
    unknown = sorted(set(names) - set(CLASSES))
    if unknown:
        raise ValueError(f"unknown bounce class(es) {', '.join(unknown)}; known: "
                         f"{', '.join(CLASSES)}")
    return frozenset(names)


def rules_for(rules: Iterable[ReactionRule], names: Iterable[str]) -> tuple[ReactionRule, ...]:
    """The rules that can fire for a destination known by ``names`` (its
    domain and MX host names), in order: computed once per pool, so matching
    a reply later looks at no destination pattern."""
    names = list(names)
    return tuple(rule for rule in rules if rule.applies_to(names))


def first_match(rules: tuple[ReactionRule, ...], reply: Reply) -> ReactionRule | None:
    """The first rule matching ``reply`` (only ever asked for failure replies)."""
    code, enhanced, text = reply.code, reply.enhanced, reply.text
    for rule in rules:
        if rule.matches(code, enhanced, text):
            return rule
    return None
