"""EHLO capability parsing (RFC 5321 §4.1.1.1 and the extension RFCs)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .replies import Reply


@dataclass(frozen=True, slots=True)
class Extensions:
    """What the server offered after EHLO; an empty instance after HELO."""

    keywords: dict[str, str] = field(default_factory=dict)
    auth_mechanisms: tuple[str, ...] = ()
    size: int | None = None

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.keywords

    @property
    def starttls(self) -> bool:
        return "STARTTLS" in self.keywords

    @property
    def eightbitmime(self) -> bool:
        return "8BITMIME" in self.keywords

    @property
    def smtputf8(self) -> bool:
        return "SMTPUTF8" in self.keywords

    @property
    def enhancedstatuscodes(self) -> bool:
        return "ENHANCEDSTATUSCODES" in self.keywords

    @property
    def chunking(self) -> bool:
        return "CHUNKING" in self.keywords

    @property
    def dsn(self) -> bool:
        return "DSN" in self.keywords

    def has(self, keyword: str) -> bool:
        return keyword.upper() in self.keywords

    def as_list(self) -> list[str]:
        """The seed schema's ``extensions`` array: ``["SIZE 52428800", ...]``."""
        return [f"{k} {v}".rstrip() for k, v in self.keywords.items()]


def parse_ehlo(reply: Reply) -> Extensions:
    """Capabilities from a 250 EHLO reply; the first line is the greeting domain.

    Unknown keywords are kept; a malformed ``SIZE`` is treated as "no limit
    announced" rather than an error, since it only narrows what we may send.
    Both ``AUTH PLAIN`` and the legacy ``AUTH=PLAIN`` form are read.
    """
    keywords: dict[str, str] = {}
    mechanisms: list[str] = []
    size: int | None = None
    for line in reply.lines[1:]:
        line = line.strip()
        if not line:
            continue
        if line[:5].upper() == "AUTH=":
            keyword, params = "AUTH", line[5:].replace("=", " ")
        else:
            keyword, _, params = line.partition(" ")
            keyword = keyword.upper()
            params = params.strip()
        if not keyword.replace("-", "").isalnum():
            continue
        if keyword == "AUTH":
            for mech in params.upper().split():
                if mech not in mechanisms:
                    mechanisms.append(mech)
            keywords["AUTH"] = " ".join(mechanisms)
            continue
        if keyword == "SIZE":
            ok = params.isascii() and params.isdigit() and len(params) <= 20
            size = int(params) if ok and int(params) > 0 else None
        keywords[keyword] = params
    return Extensions(keywords, tuple(mechanisms), size)
