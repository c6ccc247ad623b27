"""What the caller learns: one result per recipient, and a summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from operator import attrgetter
from typing import NamedTuple

from .protocol.replies import Reply


class Status(StrEnum):
    """A recipient's state.

    Results carry delivered, bounced, deferred, suppressed -- or ``in_doubt``
    for a recipient in doubt twice (its end of data sent twice without a
    reply): final, flagged ``possible_duplicate``, never sent a third time.
    """

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    IN_DOUBT = "in_doubt"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    DEFERRED = "deferred"
    SUPPRESSED = "suppressed"


#: states a resumed job never sends again
FINAL = frozenset({Status.DELIVERED, Status.BOUNCED, Status.SUPPRESSED})
# hot-path enum members as module globals (see protocol/connection.py)
_DELIVERED, _BOUNCED, _DEFERRED, _IN_DOUBT = (
    Status.DELIVERED, Status.BOUNCED, Status.DEFERRED, Status.IN_DOUBT
)


class TLSStatus(NamedTuple):
    """How one session was secured: the TLS policy that applied and its outcome."""

    #: "opportunistic", "mta-sts", "mta-sts-testing" or "dane"
    policy: str
    encrypted: bool
    #: the server's certificate was checked (PKIX + name, or a DANE TLSA match)
    verified: bool

    def __str__(self) -> str:
        state = "verified" if self.verified else "unverified" if self.encrypted else "plaintext"
        return f"{self.policy} {state}"


class PeerName(str):
    """A server's host name that also carries its session's :class:`TLSStatus`.

    Made once per batch of transactions and passed where the host name
    goes, so results learn how their session was secured at no cost per
    recipient; everywhere else it is just the name (journals store the str)."""

    tls: TLSStatus | None

    def __new__(cls, name: str, tls: TLSStatus | None = None) -> PeerName:
        self = super().__new__(cls, name)
        self.tls = tls
        return self


class Result(NamedTuple):
    """The final word on one recipient for this run.

    Immutable; a named tuple rather than a frozen dataclass because one is
    made per recipient and that costs a third as much."""

    recipient: str
    status: Status
    reply: Reply | None = None
    attempts: int = 0
    host: str | None = None
    #: the end of data was sent at least once without its reply arriving, so
    #: the server may hold an extra copy (RFC 1047)
    possible_duplicate: bool = False

    @property
    def code(self) -> int | None:
        return self.reply.code if self.reply is not None else None

    @property
    def tls(self) -> TLSStatus | None:
        """How the session that decided this result was secured (None: not known)."""
        return getattr(self.host, "tls", None)

    @property
    def enhanced(self) -> str | None:
        return self.reply.enhanced if self.reply is not None else None

    @property
    def text(self) -> str | None:
        return self.reply.text if self.reply is not None else None

    @property
    def bounce_class(self) -> str | None:
        """What a failure reply means (:mod:`bulkmail.bounce_class`); computed only
        when asked, so sending pays nothing for it.  ``None`` without a failure reply."""
        from .bounce_class import classify_reply  # its rule tables load on first use

        return classify_reply(self.reply)

    def as_dict(self) -> dict[str, object]:
        """The report's JSON Lines object."""
        return {
            "recipient": self.recipient,
            "status": self.status.value,
            "code": self.code,
            "enhanced": self.enhanced,
            "reply": self.text,
            "class": self.bounce_class,
            "attempts": self.attempts,
            "host": self.host,
            "possible_duplicate": self.possible_duplicate,
            "tls_policy": tls.policy if (tls := self.tls) is not None else None,
            "tls_verified": tls.verified if tls is not None else None,
        }

    def __str__(self) -> str:
        reply = f" {self.reply}" if self.reply is not None else ""
        return f"{self.recipient}: {self.status.value}{reply}"


_flagged = attrgetter("possible_duplicate")


@dataclass(slots=True)
class Summary:
    """Counts by final state, plus the commonest domains and reply codes."""

    delivered: int = 0
    bounced: int = 0
    deferred: int = 0
    suppressed: int = 0
    #: in doubt twice: final, not resent (see :class:`Status`)
    in_doubt: int = 0
    possible_duplicates: int = 0
    elapsed: float = 0.0
    codes: Counter[str] = field(default_factory=Counter)
    domains: Counter[str] = field(default_factory=Counter)
    #: why the run stopped early (an authentication failure, a journal that
    #: cannot be written); every recipient not final is deferred
    aborted: Reply | None = None

    @property
    def total(self) -> int:
        return self.delivered + self.bounced + self.deferred + self.suppressed + self.in_doubt

    def add(self, result: Result) -> None:
        self.add_all([result], result.status, result.reply)

    def add_all(self, results: list[Result], status: Status, reply: Reply | None) -> None:
        """Count results that share a status and a reply (one transaction's)."""
        n = len(results)
        if status is _DELIVERED:
            self.delivered += n
        elif status is _BOUNCED:
            self.bounced += n
        elif status is _DEFERRED:
            self.deferred += n
        elif status is _IN_DOUBT:
            self.in_doubt += n
        else:
            self.suppressed += n
        self.possible_duplicates += sum(map(_flagged, results))  # C-level: no frame per result
        if reply is not None:
            self.codes[f"{reply.code} {reply.enhanced}" if reply.enhanced else str(reply.code)] += n
        if n == 1:  # a personalised message's transaction: no Counter.update and generator
            self.domains[results[0].recipient.rpartition("@")[2].lower()] += 1
        else:
            self.domains.update(r.recipient.rpartition("@")[2].lower() for r in results)

    def merge(self, other: Summary) -> None:
        """Add ``other``'s counts (results settled outside the engine) to these."""
        self.delivered += other.delivered
        self.bounced += other.bounced
        self.deferred += other.deferred
        self.suppressed += other.suppressed
        self.in_doubt += other.in_doubt
        self.possible_duplicates += other.possible_duplicates
        self.codes.update(other.codes)
        self.domains.update(other.domains)

    def as_dict(self) -> dict[str, object]:
        return {
            "delivered": self.delivered,
            "bounced": self.bounced,
            "deferred": self.deferred,
            "suppressed": self.suppressed,
            "in_doubt": self.in_doubt,
            "total": self.total,
            "possible_duplicates": self.possible_duplicates,
            "elapsed": round(self.elapsed, 3),
            "top_codes": self.codes.most_common(10),
            "top_domains": self.domains.most_common(10),
        }
