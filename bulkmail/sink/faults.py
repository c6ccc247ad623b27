"""Fault injection: replies shaped like the big providers' real ones.

A sink that accepts everything hides queue build-up and backoff costs; like
KumoMTA's "smart sink", this one defers, rejects, greylists, caps recipients
and drops connections on request -- deterministically with a seed -- and
always fails recipients whose local part is ``tempfail`` or ``permfail``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

RATE_LIMITED = (
    b"450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents"
    b" additional messages from being delivered. Please resend your message at a later time.\r\n"
)
NO_SUCH_USER = (
    b"550 5.1.1 The email account that you tried to reach does not exist. Please try"
    b" double-checking the recipient's email address for typos.\r\n"
)
GREYLISTED = b"451 4.7.1 Greylisted, please try again later\r\n"
TOO_MANY = b"452 4.5.3 Too many recipients\r\n"
TEMPFAIL = b"451 4.3.0 Temporary failure requested by the recipient's local part\r\n"
PERMFAIL = b"550 5.7.1 Permanent failure requested by the recipient's local part\r\n"
ACCEPTED = b"250 2.1.5 Ok\r\n"


@dataclass(frozen=True, slots=True)
class Faults:
    defer_rate: float = 0.0
    reject_rate: float = 0.0
    greylist: bool = False
    max_rcpts: int | None = None
    drop_rate: float = 0.0

    @property
    def active(self) -> bool:
        return bool(
            self.defer_rate or self.reject_rate or self.greylist or self.max_rcpts or self.drop_rate
        )


class FaultPolicy:
    """Decides each RCPT's reply and whether to drop a transaction."""

    def __init__(self, faults: Faults, seed: int | None) -> None:
        self.faults = faults
        self.rng = random.Random(seed)
        self._greylist_seen: set[str] = set()

    def rcpt_reply(self, address: str, accepted_so_far: int) -> bytes:
        local = address.rpartition("@")[0].lower()
        if local == "tempfail":
            return TEMPFAIL
        if local == "permfail":
            return PERMFAIL
        f = self.faults
        if f.max_rcpts is not None and accepted_so_far >= f.max_rcpts:
            return TOO_MANY
        if f.greylist:
            key = address.lower()
            if key not in self._greylist_seen:
                self._greylist_seen.add(key)
                return GREYLISTED
        if f.defer_rate and self.rng.random() < f.defer_rate:
            return RATE_LIMITED
        if f.reject_rate and self.rng.random() < f.reject_rate:
            return NO_SUCH_USER
        return ACCEPTED

    def drop_now(self) -> bool:
        return bool(self.faults.drop_rate) and self.rng.random() < self.faults.drop_rate
