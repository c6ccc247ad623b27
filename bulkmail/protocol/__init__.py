"""Sans-IO SMTP: no sockets, no trio, no clock -- bytes in, bytes out."""

from __future__ import annotations

from .errors import (
    InvalidAddress,
    InvalidArgument,
    LocalProtocolError,
    MessageError,
    RemoteProtocolError,
    SMTPProtocolError,
)
from .extensions import Extensions, parse_ehlo
from .replies import Reply, ReplyParser

__all__ = [
    "Extensions",
    "InvalidAddress",
    "InvalidArgument",
    "LocalProtocolError",
    "MessageError",
    "RemoteProtocolError",
    "Reply",
    "ReplyParser",
    "SMTPProtocolError",
    "parse_ehlo",
]
