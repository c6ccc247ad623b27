"""Fault injection: replies shaped like the big providers' real ones.

A sink that accepts everything hides queue build-up and backoff costs; like
KumoMTA's "smart sink", this one defers, rejects, greylists, caps recipients
and drops connections on request -- repeatably, from one seeded
:class:`random.Random` -- and always fails recipients whose local part is
``tempfail`` or ``permfail``, so a test can aim a failure at one address.
"""

from __future__ import annotations

import random

from .config import SinkConfig

RATE_LIMITED = (
    b"450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents"
    b" additional messages from being delivered. Please resend your message at a later time.\r\n"
)
NO_SUCH_USER = (
    b"550 5.1.1 The email account that you tried to reach does not exist. Please try"
    b" double-checking the recipient's email address for typos.\r\n"
)
GREYLISTED = b"451 4.7.1 Greylisted, please try again later\r\n"
TOO_MANY_RCPTS = b"452 4.5.3 Too many recipients\r\n"
TEMPFAIL = b"451 4.3.0 Temporary failure requested by the recipient's local part\r\n"
PERMFAIL = b"550 5.7.1 Permanent failure requested by the recipient's local part\r\n"
TRY_AGAIN_LATER = b"421 4.7.0 Try again later, closing connection.\r\n"


class FaultPolicy:
    """Decides each RCPT's fate and whether a transaction ends in a disconnect.

    Shared by all connections of one sink, so greylisting remembers a
    recipient across connections (a retry usually comes on a new one).
    """

    __slots__ = (
        "_defer_rate", "_drop_rate", "_greylist", "_greylist_seen", "_max_rcpts",
        "_reject_rate", "_rng", "random_faults",
    )

    def __init__(self, config: SinkConfig) -> None:
        self._rng = random.Random(config.seed)
        self._defer_rate = config.defer_rate
        self._reject_rate = config.reject_rate
        self._drop_rate = config.drop_rate
        self._greylist = config.greylist
        self._max_rcpts = config.max_rcpts
        self._greylist_seen: set[bytes] = set()
        #: False when only the ``tempfail`` / ``permfail`` local parts can fail
        self.random_faults = bool(
            config.defer_rate or config.reject_rate or config.greylist or config.max_rcpts
        )

    def rcpt_reply(self, address: bytes, accepted_so_far: int) -> bytes | None:
        """The failure reply for this RCPT, or None to accept it."""
        if address[8:9] == b"@":
            local = address[:8].lower()
            if local == b"tempfail":
                return TEMPFAIL
            if local == b"permfail":
                return PERMFAIL
        if not self.random_faults:
            return None
        if self._max_rcpts is not None and accepted_so_far >= self._max_rcpts:
            return TOO_MANY_RCPTS
        if self._greylist:
            key = address.lower()
            if key not in self._greylist_seen:
                self._greylist_seen.add(key)
                return GREYLISTED
        if self._defer_rate and self._rng.random() < self._defer_rate:
            return RATE_LIMITED
        if self._reject_rate and self._rng.random() < self._reject_rate:
            return NO_SUCH_USER
        return None

    def drop_transaction(self) -> bool:
        """Whether this transaction ends in a disconnect instead of its final reply."""
        return self._drop_rate > 0.0 and self._rng.random() < self._drop_rate
