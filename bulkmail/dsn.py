"""Reading delivery status notifications (RFC 3464) that come back after a run."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import Message

from .verp import verp_recipient

_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
_CODE = re.compile(r"\b([245]\d\d)\b")


@dataclass(frozen=True, slots=True)
class BounceReport:
    recipient: str
    action: str
    status: str | None
    diagnostic: str | None

    @property
    def failed(self) -> bool:
        return self.action == "failed"

    @property
    def code(self) -> int:
        """The SMTP code from the diagnostic, or one implied by the status class."""
        if self.diagnostic:
            m = _CODE.search(self.diagnostic)
            if m:
                return int(m.group(1))
        if self.status and self.status.startswith("4"):
            return 450
        return 550 if self.failed else 250


def _address(value: str | None) -> str | None:
    if not value:
        return None
    _, _, address = value.partition(";")
    address = (address or value).strip().strip("<>")
    return address or None


def parse_dsn(raw: bytes, *, verp_sender: str | None = None) -> list[BounceReport]:
    """Per-recipient reports from a DSN; the VERP address wins over the DSN's claims."""
    message = message_from_bytes(raw, policy=policy.compat32)
    if message.get_content_type() != "multipart/report":
        raise ValueError("not a delivery status notification (multipart/report)")
    verp_target = None
    if verp_sender:
        for header in ("X-Original-To", "Delivered-To", "To"):
            value = message.get(header)
            if value and (verp_target := verp_recipient(str(value), verp_sender)):
                break
    reports: list[BounceReport] = []
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        groups = part.get_payload()
        if not isinstance(groups, list):
            continue
        for group in groups[1:]:  # the first group is per-message
            if not isinstance(group, Message):
                continue
            recipient = _address(group.get("Final-Recipient")) or _address(
                group.get("Original-Recipient")
            )
            status = group.get("Status")
            m = _STATUS.search(str(status)) if status else None
            diagnostic = group.get("Diagnostic-Code")
            if diagnostic:
                diagnostic = " ".join(str(diagnostic).partition(";")[2].split()) or None
            if verp_target is not None:
                recipient = verp_target
            if recipient is None:
                continue
            reports.append(
                BounceReport(
                    recipient,
                    str(group.get("Action", "")).strip().lower(),
                    m.group(0) if m else None,
                    diagnostic,
                )
            )
    if not reports:
        raise ValueError("the DSN has no per-recipient delivery status")
    return reports
