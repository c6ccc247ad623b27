"""Destination patterns, as the shaping file writes them.

A pattern matches a recipient domain or one of its MX host names (so
``*.google.com`` covers every domain Google hosts); ``*.x`` also matches
``x`` itself.  Shared by the per-destination limits, the reply rules and the
warm-up schedules, so a pattern means the same thing in every section.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable


def pattern_matches(pattern: str, names: Iterable[str]) -> bool:
    """True if ``pattern`` matches any of ``names`` (case-insensitively)."""
    pattern = pattern.lower()
    for name in names:
        name = name.lower().rstrip(".")
        if fnmatch.fnmatchcase(name, pattern):
            return True
        if pattern.startswith("*.") and name == pattern[2:]:
            return True
    return False
