"""Stage deadlines: which RFC 5321 §4.5.3.2 timeout a reply is awaited with,
and a cancel-scope deadline that moves cheaply (see :func:`arm`)."""

from __future__ import annotations

import trio

from .config import Timeouts
from .protocol.client import Stage

__all__ = ["DEADLINE_SLACK", "arm", "stage_timeouts"]

#: how late a stage deadline may fire (RFC 5321's are minutes): a batch's
#: cancel scope is moved once per this many seconds, not at every read and write
DEADLINE_SLACK = 0.5

#: the timeout the reply to each command is awaited with (else ``command``)
_TIMEOUT_OF = {
    Stage.GREETING: "greeting", Stage.EHLO: "ehlo", Stage.HELO: "ehlo", Stage.MAIL: "mail",
    Stage.RCPT: "rcpt", Stage.DATA: "data_init", Stage.DATA_END: "data_done",
    Stage.BDAT: "data_done", Stage.QUIT: "quit",
}


def stage_timeouts(timeouts: Timeouts) -> dict[Stage | None, float]:
    """Seconds to wait for the reply of each stage (``None``: nothing owed)."""
    return {
        stage: getattr(timeouts, _TIMEOUT_OF.get(stage, "command")) for stage in (*Stage, None)
    }


def arm(scope: trio.CancelScope, timeout: float) -> None:
    """Let ``scope`` expire ``timeout`` seconds from now, up to ``DEADLINE_SLACK`` late.

    Moving a cancel scope's deadline costs ~2 us in trio (a plain attribute
    ~0.15 us); the slack makes that once per half second of a busy session."""
    deadline = trio.current_time() + timeout
    current = scope.deadline
    if not current - DEADLINE_SLACK <= deadline <= current:
        scope.deadline = deadline + DEADLINE_SLACK
