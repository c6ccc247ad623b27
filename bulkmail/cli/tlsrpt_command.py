"""``bulkmail tlsrpt``: the TLS-RPT (RFC 8460) reports of past runs, as files,
and with ``--send`` mailed to each domain's ``rua`` addresses through a relay."""

from __future__ import annotations

import argparse
import datetime as dt
import socket
import sqlite3
import sys
from pathlib import Path

import trio

from ..api import Mailer, MailerConfig, Relay
from ..routing import DNSConfig
from ..tls_policy.lookup import LookupFailed, PolicyDNS
from ..tls_policy.report_mail import report_message, write_report
from ..tls_policy.settings import REPORT_FILE
from ..tls_policy.tlsrpt import Report, TLSReportStore, build_reports, parse_rua
from .inputs import InputError
from .options import host_port, server_address

EXAMPLE = """\
example:
  bulkmail tlsrpt --since 2026-11-01 --contact postmaster@sender.example \\
      --send --sender tlsrpt@sender.example --relay smtp.sender.example
"""


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (YYYY-MM-DD)") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", required=True, type=_date, metavar="YYYY-MM-DD",
                   help="first day to report (UTC)")
    p.add_argument("--until", type=_date, metavar="YYYY-MM-DD",
                   help="last day to report (default: yesterday, the last whole day)")
    p.add_argument("--state", default=".bulkmail", metavar="DIR",
                   help=f"where 'bulkmail send' kept {REPORT_FILE} (beside its journal)")
    p.add_argument("--out", default="tlsrpt", metavar="DIR",
                   help="directory for the .json.gz reports (default: ./tlsrpt)")
    p.add_argument("--contact", required=True, metavar="ADDR",
                   help="the reports' contact-info (who receivers may write to)")
    p.add_argument("--organization", metavar="NAME",
                   help="the reports' organization-name (default: the submitter)")
    p.add_argument("--submitter", default=socket.getfqdn(), metavar="HOST",
                   help="the sending domain named in file names and subjects")
    p.add_argument("--send", action="store_true",
                   help="mail each report to the rua= mailto: addresses of _smtp._tls.<domain>")
    p.add_argument("--sender", metavar="ADDR", help="envelope and From: of the mailed reports")
    p.add_argument("--relay", metavar="HOST[:PORT]", type=server_address(25),
                   help="the smarthost the reports go through (needed by --send)")
    p.add_argument("--dns-server", metavar="HOST[:PORT]", type=server_address(53),
                   help="resolver for the _smtp._tls TXT lookups (default: the system's)")


def run(args: argparse.Namespace) -> int:
    until = args.until or dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    try:
        if until < args.since:
            raise InputError(f"--until {until} is before --since {args.since}")
        if args.send and not (args.sender and args.relay):
            raise InputError("--send needs --sender and --relay")
        store_path = Path(args.state) / REPORT_FILE
        if not store_path.is_file():
            raise InputError(f"no TLS-RPT counts at {store_path} (see --state)")
    except InputError as exc:
        print(f"bulkmail tlsrpt: {exc}", file=sys.stderr)
        return 2
    store = TLSReportStore(store_path)
    try:
        reports = build_reports(store.rows(args.since, until),
                                organization=args.organization or args.submitter,
                                contact=args.contact, submitter=args.submitter)
        for report in reports:
            print(write_report(report, Path(args.out), args.submitter))
    except (OSError, sqlite3.Error) as exc:
        print(f"bulkmail tlsrpt: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    if not args.send:
        return 0
    return trio.run(_send_all, args, reports)


async def _send_all(args: argparse.Namespace, reports: list[Report]) -> int:
    dns = DNSConfig(nameservers=(host_port(args.dns_server, 53),)) if args.dns_server \
        else DNSConfig()
    lookups = PolicyDNS(dns)
    config = MailerConfig(relay=Relay(*host_port(args.relay, 25)), retry_for=0.0)
    status = 0
    async with Mailer(config) as mailer:
        for report in reports:
            try:
                texts, _ttl = await lookups.txt(f"_smtp._tls.{report.domain}")
            except LookupFailed as exc:
                print(f"{report.domain}: cannot look up _smtp._tls: {exc}")
                status = 75
                continue
            rua = parse_rua(texts)
            if not rua:
                print(f"{report.domain}: no rua mailto: address published, not sent")
                continue
            message = report_message(report, sender=args.sender, recipients=rua,
                                     submitter=args.submitter)
            summary = await mailer.send(args.sender, bytes(message), rua)
            outcome = "sent" if summary.delivered == len(rua) else "not all sent"
            print(f"{report.domain}: {outcome} to {', '.join(rua)} ({summary.delivered}"
                  f" delivered, {summary.deferred} deferred, {summary.bounced} bounced)")
            if summary.deferred:
                status = 75
    return status
