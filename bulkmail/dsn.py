"""Reading delivery status notifications (RFC 3464, RFC 6533) that come back after a run.

DSNs arrive as providers write them, not as the RFCs do: UTF-8 addresses raw
or as ``utf-8;`` address types (RFC 6533), stray 8-bit bytes, truncated
files, several recipients per report, ``delayed`` next to ``failed``.  They
are parsed with the modern email policy (``email.policy.default``, which
decodes UTF-8 headers), and every part that cannot be used is *said*:
:class:`NotADSN` for a file that is no DSN (an autoreply), :class:`DSNError`
for a DSN without a usable per-recipient group, and ``DSN.problems`` for the
groups skipped from one that was otherwise read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesParser
from email.utils import getaddresses

from .verp import verp_recipient

_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
_CODE = re.compile(r"\b([245]\d\d)\b")
_GROUP_BREAK = re.compile(rb"\r?\n[ \t]*\r?\n")
#: RFC 6533 §3: utf-8-addr-xtext / -unitext escape a code point as \x{HEX}
_UNI_ESCAPE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
#: RFC 3461 §4: xtext escapes an octet as "+" and two upper-case hex digits
_XTEXT = re.compile(r"\+([0-9A-F]{2})")
_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
_TRUNCATED = ("CloseBoundaryNotFoundDefect", "StartBoundaryNotFoundDefect")


class NotADSN(ValueError):
    """The message is not a delivery status notification (e.g. an autoreply)."""


class DSNError(ValueError):
    """A DSN this module cannot take a single recipient's status from."""


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


@dataclass(frozen=True)
class DSN:
    """The per-recipient reports read, and what was skipped and why."""

    reports: list[BounceReport]
    problems: list[str] = field(default_factory=list)
    #: the file ends before its MIME structure does: reports are the groups complete in it
    truncated: bool = False


def parse_dsn(raw: bytes, *, verp_sender: str | None = None) -> list[BounceReport]:
    """Per-recipient reports from a DSN; the VERP address wins over the DSN's claims.

    Raises :class:`NotADSN` / :class:`DSNError` (both ``ValueError``).
    """
    return read_dsn(raw, verp_sender=verp_sender).reports


def read_dsn(raw: bytes, *, verp_sender: str | None = None) -> DSN:
    """The whole reading: reports, plus problems and truncation to tell the operator."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    truncated = any(type(d).__name__ in _TRUNCATED for p in message.walk() for d in p.defects)
    if message.get_content_type() != "multipart/report":
        kind = message.get_content_type()
        raise NotADSN(f"not a delivery status notification ({kind}, not multipart/report)")
    status_parts = [p for p in message.walk() if p.get_content_type() in _STATUS_TYPES]
    if not status_parts:
        report_type = message.get_param("report-type") or "none"
        where = " (the file is truncated)" if truncated else ""
        raise NotADSN(f"a report of type {report_type!r} with no delivery-status part{where}")
    verp_target = _verp_target(message, verp_sender) if verp_sender else None
    reports: list[BounceReport] = []
    problems: list[str] = []
    for part in status_parts:
        groups = _groups(part)
        for number, group in enumerate(groups[1:], 1):  # the first group is per-message
            report = _report(group, verp_target, number, problems)
            if report is not None:
                reports.append(report)
    if not reports:
        why = "; ".join(problems) or "it has no per-recipient group"
        if truncated:
            why += " (the file is truncated)"
        raise DSNError(f"no usable recipient status: {why}")
    return DSN(reports, problems, truncated)


def _groups(part: Message) -> list[Message]:
    """The header groups of a delivery-status part.

    Python splits ``message/delivery-status`` into groups itself; it reads
    ``message/global-delivery-status`` as one message whose body holds every
    group after the first, so those are split here.
    """
    groups: list[Message] = []
    payload = part.get_payload()
    for item in payload if isinstance(payload, list) else []:
        if not isinstance(item, Message):
            continue
        groups.append(item)
        # as bytes: the str form would have 8-bit octets replaced by U+FFFD
        data = item.get_payload(decode=True) if not item.is_multipart() else None
        if isinstance(data, bytes) and data.strip():
            for chunk in _GROUP_BREAK.split(data):
                if chunk.strip():
                    parsed = BytesParser(policy=policy.default).parsebytes(
                        chunk.strip(b"\r\n") + b"\r\n", headersonly=True
                    )
                    groups.append(parsed)
    return groups


def _report(
    group: Message, verp_target: str | None, number: int, problems: list[str]
) -> BounceReport | None:
    def text(name: str) -> str | None:
        try:
            value = group.get(name)
        except Exception:  # a header the policy cannot parse is as good as absent
            problems.append(f"recipient group {number}: unreadable {name}")
            return None
        return None if value is None else " ".join(str(value).split())

    action = (text("Action") or "").lower()
    notes: list[str] = []
    recipient = _address(text("Final-Recipient"), "Final-Recipient", notes) or _address(
        text("Original-Recipient"), "Original-Recipient", notes, xtext=True
    )
    if verp_target is not None:
        recipient = verp_target
    if recipient is None:
        problems.extend(f"recipient group {number}: {n}" for n in notes or ["no recipient"])
        return None
    if not action:
        problems.append(f"recipient group {number} ({recipient}): no Action field")
        return None
    status_field = text("Status")
    status = _STATUS.search(status_field) if status_field else None
    if status is None:  # required (RFC 3464 §2.3.4); missing where a file was cut off
        problems.append(f"recipient group {number} ({recipient}): no Status field")
        return None
    diagnostic = text("Diagnostic-Code")
    if diagnostic:
        diagnostic = diagnostic.partition(";")[2].strip() or None
    return BounceReport(recipient, action, status.group(0), diagnostic)


def _address(
    value: str | None, name: str, notes: list[str], *, xtext: bool = False
) -> str | None:
    """The address of an ``address-type ; address`` field, or ``None`` with a note why."""
    if not value:
        return None
    kind, semi, address = value.partition(";")
    if not semi:
        kind, address = "rfc822", value
    kind = kind.strip().lower()
    address = address.strip().strip("<>").strip()
    if kind == "utf-8":
        address = _UNI_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), address)
    elif kind == "rfc822":
        if xtext:
            address = _XTEXT.sub(lambda m: chr(int(m.group(1), 16)), address)
    else:
        notes.append(f"{name} has address type {kind!r}, not rfc822 or utf-8")
        return None
    if "\ufffd" in address or any(0xD800 <= ord(c) <= 0xDFFF for c in address):
        notes.append(f"{name} is not valid UTF-8 ({address!r})")
        return None
    if "@" not in address:
        notes.append(f"{name} {address!r} is not an address")
        return None
    return address


def _verp_target(message: Message, verp_sender: str) -> str | None:
    """The recipient a VERP bounce address names, from the headers that carry it."""
    for header in ("X-Original-To", "Delivered-To", "To"):
        try:
            values = message.get_all(header) or []
        except Exception:  # an unparsable header cannot name our VERP address
            continue
        for _, address in getaddresses([str(v) for v in values]):
            if address and (target := verp_recipient(address, verp_sender)):
                return target
    return None
