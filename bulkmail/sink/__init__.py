"""The local SMTP sink: answers like a real MX, fast, with faults on request.

``protocol`` is the sans-IO server state machine, ``server`` runs it on trio
sockets, ``faults`` decides injected failures, ``stats`` counts, ``runner``
serves until a signal (the ``bulkmail sink`` command).
"""

from __future__ import annotations

from .config import SinkConfig
from .faults import FaultPolicy
from .protocol import SinkConnection
from .runner import run_sink
from .server import Sink
from .stats import ReceivedMessage, SinkStats

__all__ = [
    "FaultPolicy",
    "ReceivedMessage",
    "Sink",
    "SinkConfig",
    "SinkConnection",
    "SinkStats",
    "run_sink",
]
