"""The local SMTP sink: answers like a real MX, with faults on request."""

from __future__ import annotations

from .faults import FaultPolicy, Faults
from .server import ReceivedMessage, Sink, SinkConfig
from .stats import SinkStats

__all__ = ["FaultPolicy", "Faults", "ReceivedMessage", "Sink", "SinkConfig", "SinkStats"]
