"""Matching an SMTP reply against a pattern: code, enhanced code, text.

One small matcher shared by everything that acts on what a server said: the
bounce classes (:mod:`bulkmail.bounce_class`) and the reply-driven shaping
rules (:mod:`bulkmail.reactions`) -- so a rule file reads the same way wherever
it is used::

    code = "421"             # full match on the three digits
    enhanced = '4\\.7\\.0'   # full match on the RFC 3463 code ("" when absent)
    text = "\\[TSS04\\]"     # searched in the reply text, case-insensitively

Every field is optional; a pattern with none matches every reply.  Pure
functions, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["PATTERN_FIELDS", "PatternError", "ReplyPattern"]

#: the keys a rule table may use to describe the reply it matches
PATTERN_FIELDS = ("code", "enhanced", "text")


class PatternError(ValueError):
    """A pattern that cannot be compiled (the message says which field and why)."""


@dataclass(frozen=True, slots=True)
class ReplyPattern:
    """Regexes on a reply's parts; ``None`` means "any"."""

    code: re.Pattern[str] | None = None
    enhanced: re.Pattern[str] | None = None
    text: re.Pattern[str] | None = None

    @classmethod
    def compile(
        cls, code: str | None = None, enhanced: str | None = None, text: str | None = None
    ) -> ReplyPattern:
        """Compile the given regexes; text is case-insensitive (replies vary in case)."""
        return cls(
            _compile("code", code, 0),
            _compile("enhanced", enhanced, 0),
            _compile("text", text, re.IGNORECASE),
        )

    @classmethod
    def from_table(cls, table: Mapping[str, object]) -> ReplyPattern:
        """The pattern described by a rule table's ``code``/``enhanced``/``text`` keys."""
        values: dict[str, str | None] = {}
        for key in PATTERN_FIELDS:
            value = table.get(key)
            if value is not None and not isinstance(value, str | int):
                raise PatternError(f"{key!r} must be a string (a regular expression)")
            values[key] = None if value is None else str(value)
        return cls.compile(values["code"], values["enhanced"], values["text"])

    def matches(self, code: int, enhanced: str | None, text: str) -> bool:
        if self.code is not None and self.code.fullmatch(str(code)) is None:
            return False
        if self.enhanced is not None and self.enhanced.fullmatch(enhanced or "") is None:
            return False
        return self.text is None or self.text.search(text) is not None


def _compile(name: str, pattern: str | None, flags: int) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise PatternError(f"{name!r} is not a valid regular expression: {exc}") from exc
