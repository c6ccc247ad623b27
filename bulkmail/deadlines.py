"""Stage deadlines: which RFC 5321 §4.5.3.2 timeout a reply is awaited with,
and how late one may fire.

A session's batch runs under one cancel scope whose deadline is moved for
each read and write (``SMTPSession._loop``, inline: it runs twice a
message).  Moving a trio cancel scope's deadline costs ~2 us (a plain
attribute ~0.15 us), so the scope is moved only when the new deadline falls
outside ``[current - DEADLINE_SLACK, current]``: once per half second of a
busy session."""

from __future__ import annotations

from .config import Timeouts
from .protocol.client import Stage

__all__ = ["DEADLINE_SLACK", "stage_timeouts"]

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
