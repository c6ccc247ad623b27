"""Old import path: the reply policy, retry schedule and destination health
live in :mod:`bulkmail.delivery` now (``policy``, ``retry``, ``health``)."""

from __future__ import annotations

from .delivery import policy as _policy
from .delivery.health import DestinationHealth, rate_interval
from .delivery.policy import Verdict
from .delivery.retry import RetryPolicy
from .protocol.replies import Reply

__all__ = ["DestinationHealth", "RetryPolicy", "Verdict", "classify", "rate_interval"]


def classify(reply: Reply, *, others_accepted: bool = False) -> Verdict:
    """The old signature: a reply whose stage is unknown (see
    :func:`bulkmail.delivery.policy.classify`)."""
    return _policy.classify(None, reply, others_accepted=others_accepted)
