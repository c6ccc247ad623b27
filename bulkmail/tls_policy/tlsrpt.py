"""TLS-RPT (RFC 8460): count sessions per policy domain and day, write reports.

Counting happens once per connection (never per recipient) into a small
SQLite file beside the policy cache; :func:`build_reports` turns a date
range of counts into the RFC's JSON (§4.4), :func:`report_filename` names
the gzip file as §5.1 does, and :func:`parse_rua` reads the ``mailto:``
destinations of a ``_smtp._tls`` TXT record (§3).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: RFC 8460 §4.3 result types this module records
RESULT_TYPES = frozenset({
    "starttls-not-supported", "certificate-host-mismatch", "certificate-expired",
    "certificate-not-trusted", "validation-failure", "tlsa-invalid", "dnssec-invalid",
    "dane-required", "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid",
})


@dataclass(frozen=True, slots=True)
class ReportPolicy:
    """What one session's outcome is counted under (§4.4's ``policy`` object)."""

    domain: str
    #: "sts", "tlsa" or "no-policy-found"
    policy_type: str
    policy_string: tuple[str, ...] = ()
    mx_host: tuple[str, ...] = ()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    day TEXT NOT NULL,
    domain TEXT NOT NULL,
    policy_type TEXT NOT NULL,
    policy_string TEXT NOT NULL,
    mx_host TEXT NOT NULL,
    result_type TEXT NOT NULL,          -- '' for a successful session
    receiving_mx TEXT NOT NULL,
    receiving_ip TEXT NOT NULL,
    sending_ip TEXT NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (day, domain, policy_type, policy_string, mx_host, result_type,
                 receiving_mx, receiving_ip, sending_ip, reason)
)
"""


def _today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


class TLSReportStore:
    """Session counts; ``path`` None keeps them in memory (tests, library use)."""

    def __init__(self, path: str | Path | None, *, today: Callable[[], str] = _today) -> None:
        self.path = Path(path) if path is not None else None
        self._connection: sqlite3.Connection | None = None
        self._today = today

    @property
    def _db(self) -> sqlite3.Connection:
        """Opened at the first use: a run that meets no policy leaves no file behind."""
        if self._connection is None:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(str(self.path or ":memory:"))
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute(_SCHEMA)
            self._connection.commit()
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def success(self, policy: ReportPolicy) -> None:
        self._add(policy, "", "", "", "", "")

    def failure(self, policy: ReportPolicy, result_type: str, *, receiving_mx: str,
                receiving_ip: str = "", sending_ip: str = "", reason: str = "") -> None:
        assert result_type in RESULT_TYPES, result_type
        self._add(policy, result_type, receiving_mx, receiving_ip, sending_ip, reason[:200])

    def _add(self, policy: ReportPolicy, *row: str) -> None:
        key = (self._today(), policy.domain, policy.policy_type,
               json.dumps(list(policy.policy_string)), json.dumps(list(policy.mx_host)), *row)
        with self._db:
            self._db.execute(
                "INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?,1) ON CONFLICT DO UPDATE"
                " SET count = count + 1", key,
            )

    def rows(self, since: dt.date, until: dt.date) -> list[tuple[Any, ...]]:
        """Counts for days ``since`` .. ``until`` inclusive."""
        return self._db.execute(
            "SELECT * FROM sessions WHERE day BETWEEN ? AND ? ORDER BY 1, 2, 3, 4, 5, 6",
            (since.isoformat(), until.isoformat()),
        ).fetchall()


@dataclass(frozen=True, slots=True)
class Report:
    """One domain's report for one day."""

    domain: str
    day: dt.date
    body: dict[str, Any]

    @property
    def start(self) -> dt.datetime:
        return dt.datetime.combine(self.day, dt.time(), dt.UTC)

    @property
    def end(self) -> dt.datetime:
        return self.start + dt.timedelta(days=1)


def build_reports(rows: Iterable[tuple[Any, ...]], *, organization: str, contact: str,
                  submitter: str) -> list[Report]:
    """One RFC 8460 §4.4 report per (day, policy domain)."""
    grouped: dict[tuple[str, str], dict[tuple[str, str, str, str], dict[str, Any]]] = {}
    for (day, domain, ptype, pstring, mx_host, result, r_mx, r_ip, s_ip, reason,
         count) in rows:
        policies = grouped.setdefault((day, domain), {})
        entry = policies.setdefault((ptype, pstring, mx_host, domain), {
            "policy": _policy_object(ptype, pstring, mx_host, domain),
            "summary": {"total-successful-session-count": 0, "total-failure-session-count": 0},
            "failure-details": [],
        })
        if not result:
            entry["summary"]["total-successful-session-count"] += count
            continue
        entry["summary"]["total-failure-session-count"] += count
        detail: dict[str, Any] = {"result-type": result, "failed-session-count": count}
        if r_mx:
            detail["receiving-mx-hostname"] = r_mx
        if r_ip:
            detail["receiving-ip"] = r_ip
        if s_ip:
            detail["sending-mta-ip"] = s_ip
        if reason:
            detail["failure-reason-code"] = reason
        entry["failure-details"].append(detail)
    reports = []
    for (day, domain), policies in sorted(grouped.items()):
        date = dt.date.fromisoformat(day)
        report = Report(domain, date, {})
        for entry in policies.values():
            if not entry["failure-details"]:
                del entry["failure-details"]
        report.body.update({
            "organization-name": organization,
            "date-range": {
                "start-datetime": _rfc3339(report.start),
                "end-datetime": _rfc3339(report.end - dt.timedelta(seconds=1)),
            },
            "contact-info": contact,
            "report-id": f"{day}.{domain}@{submitter}",
            "policies": list(policies.values()),
        })
        reports.append(report)
    return reports


def _policy_object(ptype: str, pstring: str, mx_host: str, domain: str) -> dict[str, Any]:
    policy: dict[str, Any] = {"policy-type": ptype, "policy-domain": domain}
    strings = json.loads(pstring)
    if strings:
        policy["policy-string"] = strings
    hosts = json.loads(mx_host)
    if hosts:
        policy["mx-host"] = hosts
    return policy


def _rfc3339(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def report_filename(report: Report, submitter: str) -> str:
    """``submitter!policy-domain!begin!end.json.gz`` (RFC 8460 §5.1, UNIX seconds)."""
    begin, end = int(report.start.timestamp()), int(report.end.timestamp())
    return f"{submitter}!{report.domain}!{begin}!{end}.json.gz"


def parse_rua(records: list[str]) -> list[str]:
    """The ``mailto:`` addresses of the one valid ``v=TLSRPTv1`` record (§3), else []."""
    found = [r for r in records if r.replace(" ", "").startswith("v=TLSRPTv1;")]
    if len(found) != 1:
        return []
    addresses: list[str] = []
    for part in found[0].split(";"):
        key, eq, value = part.strip().partition("=")
        if eq and key.strip() == "rua":
            for uri in value.split(","):
                uri = uri.strip()
                if uri.lower().startswith("mailto:"):
                    addresses.append(uri[len("mailto:"):])
    return addresses
