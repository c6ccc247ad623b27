"""What one reply means for one recipient (RFC 5321, RFC 3463).

A pure function, no state and no I/O, so the rule that decides whether
somebody's mail is delivered, bounced or retried is testable alone -- and it
knows which command the reply answered, because a code means different things
at different stages (a 452 to RCPT is "too many recipients", a 452 at end of
data is "insufficient storage").
"""

from __future__ import annotations

from enum import Enum

from ..protocol.client import Stage
from ..protocol.replies import Reply


class Verdict(Enum):
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    DEFERRED = "deferred"
    #: retry at once without spending an attempt (452 too many recipients)
    RESUBMIT = "resubmit"


def classify(stage: Stage | None, reply: Reply, *, others_accepted: bool = False) -> Verdict:
    """Map one recipient's final reply of an attempt to a verdict.

    ``stage``: the command ``reply`` answered (``None``: unknown, or a reply
    bulkmail made up).  ``others_accepted``: another recipient of the same
    transaction was accepted on RCPT -- then a 452 (or the old 552 with 5.5.3)
    *on RCPT* means "too many recipients", and this one simply goes into the
    next transaction (RFC 5321 §4.5.3.1.10), whatever happened to the others
    at end of data.
    """
    code = reply.code
    if code < 400:
        return Verdict.DELIVERED
    if (
        others_accepted
        and (stage is Stage.RCPT or stage is None)
        and (code == 452 or (code == 552 and reply.enhanced == "5.5.3"))
    ):
        return Verdict.RESUBMIT
    if code < 500:
        return Verdict.DEFERRED
    return Verdict.BOUNCED
