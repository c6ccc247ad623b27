"""Reading feedback-loop complaints: ARF reports (RFC 5965).

A provider's feedback loop sends a ``multipart/report;
report-type=feedback-report`` whose ``message/feedback-report`` part says what
happened (``Feedback-Type: abuse``) and whose last part is the original message
or its headers.  Who complained is found, in order of trust:

1. ``Original-Rcpt-To`` in the report (many providers redact it);
2. the VERP envelope sender of the original (``Original-Mail-From``, the
   original's ``Return-Path``, or the address the report was sent to);
3. the original's ``Message-ID``, through a lookup the caller provides (the
   job store, where it records Message-IDs);
4. the original's ``To`` header -- only when the caller's ``known`` check
   accepts it, since a header is what the sender wrote, not where it went.

Pure parsing, no I/O: the command is ``bulkmail complaints``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser, HeaderParser
from email.utils import getaddresses

from .verp import verp_recipient

__all__ = [
    "COMPLAINT_TYPES", "Complaint", "NotAComplaint", "original_message_id", "read_complaint",
]

#: Feedback-Types that mean "the recipient does not want this mail" (RFC 5965 §7.3);
#: ``not-spam`` (RFC 6430) and ``auth-failure`` (RFC 6591) are not complaints
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "other"})


class NotAComplaint(ValueError):
    """The message is no usable ARF complaint (the message says why)."""


@dataclass(frozen=True, slots=True)
class Complaint:
    """One report: who complained, how that was found, and what about."""

    recipients: list[str]
    found_by: str  #: "Original-Rcpt-To", "VERP", "Message-ID" or "To"
    feedback_type: str
    message_id: str | None = None
    arrival_date: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None


def read_complaint(
    raw: bytes,
    *,
    verp_sender: str | None = None,
    by_message_id: Callable[[str], str | None] | None = None,
    known: Callable[[str], bool] | None = None,
) -> Complaint:
    """The complaint in ``raw``, or :class:`NotAComplaint` saying why not."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    if message.get_content_type() != "multipart/report":
        raise NotAComplaint(f"not an ARF report ({message.get_content_type()})")
    report_part = next(
        (p for p in message.walk() if p.get_content_type() == "message/feedback-report"), None
    )
    if report_part is None:
        kind = message.get_param("report-type") or "none"
        raise NotAComplaint(f"a report of type {kind!r} with no message/feedback-report part")
    fields = _fields(report_part)
    feedback_type = _text(fields, "Feedback-Type").lower()
    if not feedback_type:
        raise NotAComplaint("the feedback report has no Feedback-Type")
    if feedback_type not in COMPLAINT_TYPES:
        raise NotAComplaint(f"Feedback-Type {feedback_type!r} is not a complaint")
    original = _original(message)
    message_id = _text(original, "Message-ID") or None
    def found(recipients: list[str], how: str) -> Complaint:
        return Complaint(
            recipients, how, feedback_type, message_id,
            arrival_date=_text(fields, "Arrival-Date") or None,
            source_ip=_text(fields, "Source-IP") or None,
            user_agent=_text(fields, "User-Agent") or None,
        )

    rcpt_to = [a for a in _addresses(fields, "Original-Rcpt-To") if _plausible(a)]
    if rcpt_to:
        return found(rcpt_to, "Original-Rcpt-To")
    if verp_sender:
        candidates = _addresses(fields, "Original-Mail-From")
        if original is not None:
            candidates += _addresses(original, "Return-Path")
        for header in ("X-Original-To", "Delivered-To", "To"):
            candidates += _addresses(message, header)
        for address in candidates:
            if target := verp_recipient(address, verp_sender):
                return found([target], "VERP")
    if message_id and by_message_id is not None:
        target = by_message_id(message_id)
        if target:
            return found([target], "Message-ID")
    if original is not None and known is not None:
        to = [a for a in _addresses(original, "To") if known(a)]
        if to:
            return found(to, "To")
    raise NotAComplaint(
        "no recipient: no Original-Rcpt-To"
        + (", no VERP address of this sender" if verp_sender else ", no --verp-sender given")
        + (", Message-ID unknown" if message_id and by_message_id else "")
        + (", To not a known recipient" if known else "")
    )


def original_message_id(raw: bytes) -> str | None:
    """The reported original's ``Message-ID`` (``None``: no original, no ID): what a
    caller looks up in bulk before :func:`read_complaint` asks for it one by one."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    return _text(_original(message), "Message-ID") or None


def _fields(part: Message) -> Message:
    """The report's fields: Python parses ``message/*`` into a sub-message."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    text = payload if isinstance(payload, str) else ""
    return HeaderParser(policy=policy.default).parsestr(text.lstrip("\r\n"))


def _original(message: Message) -> Message | None:
    """The reported message (``message/rfc822``) or its headers (``text/rfc822-headers``)."""
    for part in message.walk():
        kind = part.get_content_type()
        if kind in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        elif kind in ("text/rfc822-headers", "message/rfc822-headers"):
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                return BytesParser(policy=policy.default).parsebytes(data, headersonly=True)
    return None


def _text(message: Message | None, name: str) -> str:
    if message is None:
        return ""
    try:
        value = message.get(name)
    except Exception:  # a header the policy cannot parse is as good as absent
        return ""
    return "" if value is None else " ".join(str(value).split())


def _addresses(message: Message, name: str) -> list[str]:
    try:
        values = message.get_all(name) or []
    except Exception:  # an unparsable header names nobody
        return []
    return [address for _, address in getaddresses([str(v) for v in values]) if address]


def _plausible(address: str) -> bool:
    """Not a redacted address: providers write ``redacted@`` or ``xxxxxxx@``."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return False
    return local.lower() != "redacted" and set(local.lower()) != {"x"}
