"""TLS-RPT reports as files and as mail (RFC 8460 §5.1, §5.3).

A report is gzip'd JSON named as §5.1 names it; mailed, it is a
``multipart/report; report-type="tlsrpt"`` message with the gzip file as an
``application/tlsrpt+gzip`` part, the ``TLS-Report-Domain`` and
``TLS-Report-Submitter`` headers and the subject §5.3 prescribes.
"""

from __future__ import annotations

import gzip
import json
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from .tlsrpt import Report, report_filename


def report_bytes(report: Report) -> bytes:
    """The report, gzip'd (mtime 0: the same counts give the same bytes)."""
    return gzip.compress(json.dumps(report.body, indent=1).encode(), mtime=0)


def write_report(report: Report, directory: Path, submitter: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / report_filename(report, submitter)
    path.write_bytes(report_bytes(report))
    return path


def report_message(report: Report, *, sender: str, recipients: list[str],
                   submitter: str) -> EmailMessage:
    """The mail that carries one report to its ``rua`` addresses."""
    report_id = report.body["report-id"]
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=submitter)
    message["Subject"] = (
        f"Report Domain: {report.domain} Submitter: {submitter} Report-ID: <{report_id}>"
    )
    message["TLS-Report-Domain"] = report.domain
    message["TLS-Report-Submitter"] = submitter
    message.set_content(
        f"This is an aggregate TLS report (RFC 8460) from {submitter} for {report.domain},"
        f" {report.day.isoformat()}.\n"
    )
    message.add_attachment(
        report_bytes(report), maintype="application", subtype="tlsrpt+gzip",
        filename=report_filename(report, submitter),
    )
    message.set_type("multipart/report")
    message.set_param("report-type", "tlsrpt")
    return message
