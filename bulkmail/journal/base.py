"""What a journal stores and the small interface every backend implements.

The sending code (``durable``, the group-commit ``writer``) and the CLI talk
only to :class:`Journal`, and the CLI opens one with ``open_journal(url)``: a
new backend is a class implementing this protocol plus one entry in
``journal/opening.py``.  Each backend says whether its commits may run inline
in the event loop (SQLite: a fraction of a millisecond, measured faster
inline) or must go to a worker thread (anything that waits on a network).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..results import FINAL, Status

__all__ = [
    "FINAL", "Journal", "JournalError", "JournalWriteError", "Outcome", "RecipientRecord",
    "StateChange", "Status", "grouped_by_outcome",
]


class JournalError(Exception):
    """The journal cannot be used: corrupt or unreadable file, failed or closed writer."""


class JournalWriteError(JournalError):
    """A write failed (disk full, file size limit, I/O error).  The journal is
    intact up to its last commit: once the cause is fixed, a rerun resumes."""


@dataclass(frozen=True, slots=True)
class StateChange:
    """One recipient moving to a new state.

    Fields left at ``None`` mean "nothing new", not "erase": an in-doubt mark
    does not wipe the reply an earlier attempt got (see :meth:`Journal.record`).
    """

    address: str
    status: Status
    code: int | None = None
    enhanced: str | None = None
    reply: str | None = None
    attempts: int = 0
    host: str | None = None  #: host that answered
    next_attempt: float | None = None  #: unix time of the next retry (deferred)
    possible_duplicate: bool = False

    @property
    def outcome(self) -> Outcome:
        """The change without its address."""
        return Outcome(
            self.status, self.code, self.enhanced, self.reply, self.attempts, self.host,
            self.next_attempt, self.possible_duplicate,
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """A state change without its address: what a whole transaction's recipients
    usually share, so the journal stores it once for all of them."""

    status: Status
    code: int | None = None
    enhanced: str | None = None
    reply: str | None = None
    attempts: int = 0
    host: str | None = None
    next_attempt: float | None = None
    possible_duplicate: bool = False


def grouped_by_outcome(changes: Sequence[StateChange]) -> list[tuple[list[str], Outcome]]:
    """``changes`` as ``record_outcomes`` takes them: consecutive changes with the
    same outcome (a transaction's recipients, usually) share one group, in order."""
    groups: list[tuple[list[str], Outcome]] = []
    for change in changes:
        outcome = change.outcome
        if groups and groups[-1][1] == outcome:
            groups[-1][0].append(change.address)
        else:
            groups.append(([change.address], outcome))
    return groups


@dataclass(frozen=True, slots=True)
class RecipientRecord:
    """A recipient's last known state, as a lookup returns it."""

    address: str
    status: Status
    code: int | None
    enhanced: str | None
    reply: str | None
    attempts: int
    host: str | None
    next_attempt: float | None
    possible_duplicate: bool
    updated_at: float  #: unix time of the commit that wrote this state


class Journal(Protocol):
    """Durable per-recipient state: what the engine and the reports need, nothing more.

    Implementations are synchronous.  The writer calls ``record_outcomes`` in
    the event loop when ``commits_inline`` is true, else in a worker thread;
    lookups run in worker threads, possibly while a commit runs in another:
    implementations serialise access to their connection themselves.
    """

    #: True: commits are fast enough to run in the event loop (no network wait)
    commits_inline: bool

    def lookup(self, addresses: Sequence[str]) -> dict[str, RecipientRecord]:
        """The records of those addresses that the journal knows (exact, case-sensitive)."""
        ...

    def record(self, changes: Sequence[StateChange]) -> None:
        """Apply ``changes`` in order, in one transaction: all of them or none.

        Per address the last change wins for ``status`` and ``next_attempt``;
        ``code``/``enhanced``/``reply`` and ``host`` keep their previous value
        when the change carries none; ``attempts`` never decreases and
        ``possible_duplicate`` once raised stays raised.
        """
        ...

    def record_outcomes(self, groups: Sequence[tuple[Sequence[str], Outcome]]) -> None:
        """Like :meth:`record`, with each outcome applying to all of its addresses."""
        ...

    def set_meta(self, key: str, value: str) -> None:
        """Store job metadata (message hash, sender, start time)."""
        ...

    def get_meta(self, key: str) -> str | None: ...

    def iter_records(self) -> Iterator[RecipientRecord]:
        """Every record, by address, streamed rather than loaded at once."""
        ...

    def is_empty(self) -> bool:
        """True when no recipient was ever recorded (a fresh job skips lookups)."""
        ...

    def counts(self) -> dict[Status, int]:
        """Recipients per status; statuses nobody is in are absent."""
        ...

    def flagged(self) -> dict[Status, int]:
        """Recipients flagged ``possible_duplicate``, per status (``in_doubt``
        and flagged: in doubt twice, final)."""
        ...

    def top_domains(self, n: int = 10) -> list[tuple[str, int]]:
        """The ``n`` domains with most recipients, most first."""
        ...

    def top_codes(self, n: int = 10) -> list[tuple[str, int]]:
        """The ``n`` most frequent replies, keyed ``"550 5.1.1"`` (or ``"550"``)."""
        ...

    def close(self) -> None: ...
