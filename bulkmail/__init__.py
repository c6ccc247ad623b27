"""bulkmail: bulk email over SMTP with trio structured concurrency.

The library API: :class:`Mailer` (an async context manager owning its pools)
and the one-call :func:`send`.  Results carry each recipient's final state and
the server's reply.
"""

from __future__ import annotations

from .api import Mailer, MailerConfig, Relay, send
from .config import SessionConfig, Timeouts
from .delivery.connector import ConnectionFailure
from .delivery.retry import RetryPolicy
from .message import CallableContent, Recipient, StaticContent, TemplateContent
from .protocol.auth import Credentials
from .protocol.replies import Reply
from .results import Result, Status, Summary
from .routing import DNSConfig
from .shaping import PoolLimits, Shaping

__version__ = "0.1.0"

__all__ = [
    "CallableContent",
    "ConnectionFailure",
    "Credentials",
    "DNSConfig",
    "Mailer",
    "MailerConfig",
    "PoolLimits",
    "Recipient",
    "Relay",
    "Reply",
    "Result",
    "RetryPolicy",
    "SessionConfig",
    "Shaping",
    "StaticContent",
    "Status",
    "Summary",
    "TemplateContent",
    "Timeouts",
    "send",
]
