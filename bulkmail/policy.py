"""What a reply means for a recipient and for its destination (RFC 5321, RFC 3463).

Pure functions and small state objects -- no I/O -- so the rules that decide
whether somebody's mail is delivered, bounced or retried are testable alone.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import Enum

from .protocol.replies import Reply


class Verdict(Enum):
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    DEFERRED = "deferred"
    #: retry at once without spending an attempt (452 too many recipients)
    RESUBMIT = "resubmit"


def classify(reply: Reply, *, others_accepted: bool = False) -> Verdict:
    """Map one recipient's final reply of an attempt to a verdict.

    ``others_accepted``: another recipient of the same transaction was
    accepted -- then 452 (and the old 552 with 5.5.3) on RCPT means "too many
    recipients", and the rest simply go into the next transaction
    (RFC 5321 §4.5.3.1.10).
    """
    code = reply.code
    if code < 400:
        return Verdict.DELIVERED
    if others_accepted and (code == 452 or (code == 552 and reply.enhanced == "5.5.3")):
        return Verdict.RESUBMIT
    if code < 500:
        return Verdict.DEFERRED
    return Verdict.BOUNCED


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Per-recipient schedule: exponential with jitter, bounded by attempts and lifetime."""

    first_delay: float = 60.0
    max_delay: float = 3600.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_attempts: int = 10
    #: how long (seconds, from the first attempt) a recipient may stay deferred
    lifetime: float = 6 * 3600.0

    def delay(self, attempts: int, rng: random.Random) -> float:
        """Delay before attempt number ``attempts + 1`` (``attempts`` >= 1)."""
        base = min(self.max_delay, self.first_delay * self.multiplier ** max(0, attempts - 1))
        spread = base * self.jitter
        return max(0.0, base + rng.uniform(-spread, spread))

    def next_attempt(
        self, attempts: int, first_attempt: float, now: float, rng: random.Random
    ) -> float | None:
        """When to try again, or ``None`` when the recipient has expired."""
        if attempts >= self.max_attempts:
            return None
        due = now + self.delay(attempts, rng)
        if due - first_attempt > self.lifetime:
            return None
        return due


@dataclass(slots=True)
class DestinationHealth:
    """Backoff state of one destination (Postfix destination throttling in spirit).

    Failures (421, connection errors, a run of 4xx) halve the allowed
    concurrency and pause new connections for a growing interval; successes
    win concurrency back one step at a time.  Other destinations are untouched.
    """

    max_concurrency: int
    concurrency: int = 0
    pause_until: float = 0.0
    pause: float = 0.0
    min_pause: float = 1.0
    max_pause: float = 300.0
    successes: int = 0
    recover_after: int = 10
    #: False once a server advertised PIPELINING but answered out of sequence
    pipelining: bool = True

    def __post_init__(self) -> None:
        if self.concurrency <= 0:
            self.concurrency = self.max_concurrency

    def failure(self, now: float) -> None:
        self.successes = 0
        self.concurrency = max(1, self.concurrency // 2)
        self.pause = self.min_pause if self.pause == 0 else min(self.max_pause, self.pause * 2)
        self.pause_until = now + self.pause

    def success(self) -> None:
        self.successes += 1
        if self.successes >= self.recover_after:
            self.successes = 0
            self.pause = 0.0
            if self.concurrency < self.max_concurrency:
                self.concurrency += 1

    @property
    def backing_off(self) -> bool:
        return self.concurrency < self.max_concurrency or self.pause > 0


def rate_interval(rate: float | None) -> float:
    """Seconds between message starts for a rate in messages per second."""
    if rate is None or rate <= 0 or math.isinf(rate):
        return 0.0
    return 1.0 / rate
