"""TLS-RPT (RFC 8460): counts from real sessions, reports valid against the
RFC's schema, file names, rua records, and `bulkmail tlsrpt --send` mailing
a report through a relay (all on loopback)."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import trio

from bulkmail import Mailer
from bulkmail.sink import Sink, SinkConfig
from bulkmail.tls_policy.tlsrpt import (
    ReportPolicy,
    TLSReportStore,
    build_reports,
    parse_rua,
    report_filename,
)

from .dnsserver import DNSServer
from .tlspolicy_world import DOMAIN, MESSAGE, MX, TESTING, build_world

SCHEMA = json.loads((Path(__file__).parent / "data" / "tlsrpt-schema.json").read_text())
BULKMAIL = [sys.executable, "-m", "bulkmail"]


def validate(report: dict[str, Any]) -> None:
    jsonschema.validate(report, SCHEMA, format_checker=jsonschema.FormatChecker())


async def test_sessions_of_a_run_make_a_valid_report(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await build_world(nursery, tmp_path, cert_name="other.test")
        world.sts(TESTING)
        for _run in range(2):  # two runs, two failed (then delivered) sessions
            async with Mailer(world.config()) as mailer:
                await mailer.send("news@sender.test", MESSAGE, [f"a@{DOMAIN}"])
        nursery.cancel_scope.cancel()
    store = TLSReportStore(world.state / "tlsrpt.sqlite")
    today = dt.datetime.now(dt.UTC).date()
    reports = build_reports(store.rows(today, today), organization="Sender Org",
                            contact="postmaster@sender.test", submitter="mail.sender.test")
    store.close()
    assert [r.domain for r in reports] == [DOMAIN]
    body = reports[0].body
    validate(body)
    (policy,) = body["policies"]
    assert policy["policy"]["policy-type"] == "sts"
    assert policy["policy"]["mx-host"] == [MX]
    assert "mode: testing" in policy["policy"]["policy-string"]
    assert policy["summary"] == {"total-successful-session-count": 0,
                                 "total-failure-session-count": 2}
    (detail,) = policy["failure-details"]
    assert detail["result-type"] == "certificate-host-mismatch"
    assert detail["receiving-mx-hostname"] == MX and detail["receiving-ip"] == "127.0.0.1"
    assert detail["failed-session-count"] == 2


def test_report_covers_one_utc_day_and_is_named_as_the_rfc_names_it() -> None:
    store = TLSReportStore(None, today=lambda: "2026-03-04")
    policy = ReportPolicy("example.test", "tlsa", ("3 1 1 abcd",), ("mx.example.test",))
    store.success(policy)
    store.success(policy)
    store.failure(policy, "tlsa-invalid", receiving_mx="mx.example.test", reason="no match")
    day = dt.date(2026, 3, 4)
    (report,) = build_reports(store.rows(day, day), organization="o", contact="c",
                              submitter="mail.sender.test")
    validate(report.body)
    assert report.body["date-range"] == {"start-datetime": "2026-03-04T00:00:00Z",
                                         "end-datetime": "2026-03-04T23:59:59Z"}
    assert report.body["policies"][0]["summary"] == {
        "total-successful-session-count": 2, "total-failure-session-count": 1}
    begin = int(dt.datetime(2026, 3, 4, tzinfo=dt.UTC).timestamp())
    assert report_filename(report, "mail.sender.test") == \
        f"mail.sender.test!example.test!{begin}!{begin + 86400}.json.gz"
    assert build_reports(store.rows(dt.date(2026, 3, 5), dt.date(2026, 3, 9)),
                         organization="o", contact="c", submitter="s") == []


def test_rua_takes_the_mailto_addresses_of_the_one_record() -> None:
    record = "v=TLSRPTv1; rua=mailto:a@example.test,https://r.example.test/x,mailto:b@example.test"
    assert parse_rua([record]) == ["a@example.test", "b@example.test"]
    assert parse_rua([record, "v=TLSRPTv1; rua=mailto:c@example.test"]) == []  # two: none
    assert parse_rua(["v=spf1 -all"]) == []


async def test_cli_writes_and_mails_the_reports(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = TLSReportStore(state / "tlsrpt.sqlite", today=lambda: "2026-03-04")
    policy = ReportPolicy(DOMAIN, "sts", ("version: STSv1", "mode: enforce"), (MX,))
    store.success(policy)
    store.failure(policy, "starttls-not-supported", receiving_mx=MX, receiving_ip="127.0.0.1")
    store.close()
    async with trio.open_nursery() as nursery:
        dns = DNSServer()
        await nursery.start(dns.serve)
        dns.add(f"_smtp._tls.{DOMAIN}", "TXT", '"v=TLSRPTv1; rua=mailto:tlsrpt@policy.test"')
        sink = Sink(SinkConfig(record_messages=True))
        await nursery.start(sink.serve)
        done = await trio.run_process(
            [*BULKMAIL, "tlsrpt", "--since", "2026-03-01", "--until", "2026-03-31",
             "--state", str(state), "--out", str(tmp_path / "out"),
             "--contact", "postmaster@sender.test", "--submitter", "mail.sender.test",
             "--send", "--sender", "tlsrpt@sender.test", "--relay", f"127.0.0.1:{sink.port}",
             "--dns-server", f"127.0.0.1:{dns.port}"],
            capture_stdout=True, capture_stderr=True, check=False,
        )
        nursery.cancel_scope.cancel()
    assert done.returncode == 0, done.stderr
    (written,) = (tmp_path / "out").iterdir()
    assert written.name.startswith(f"mail.sender.test!{DOMAIN}!") and written.suffixes[-2:] == \
        [".json", ".gz"]
    validate(json.loads(gzip.decompress(written.read_bytes())))
    (received,) = sink.messages
    assert received.rcpts == ["tlsrpt@policy.test"]
    message = email.message_from_bytes(received.content, policy=email.policy.default)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "tlsrpt"
    assert message["TLS-Report-Domain"] == DOMAIN
    assert message["TLS-Report-Submitter"] == "mail.sender.test"
    assert message["Subject"].startswith(f"Report Domain: {DOMAIN} Submitter: mail.sender.test")
    (attachment,) = [p for p in message.iter_attachments()]
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    assert attachment.get_content() == written.read_bytes()
    assert f"{DOMAIN}: sent to tlsrpt@policy.test" in done.stdout.decode()


def test_cli_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*BULKMAIL, "tlsrpt", "--contact", "c@x.test", *args],
                              capture_output=True, check=False, cwd=tmp_path)

    missing = run("--since", "2026-01-01", "--state", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and b"no TLS-RPT counts" in missing.stderr
    assert len(missing.stderr.decode().strip().splitlines()) == 1
    backwards = run("--since", "2026-01-05", "--until", "2026-01-01")
    assert backwards.returncode == 2 and b"before --since" in backwards.stderr
    bad_date = run("--since", "yesterday")
    assert bad_date.returncode == 2 and b"not a date" in bad_date.stderr
    no_relay = run("--since", "2026-01-01", "--send")
    assert no_relay.returncode == 2 and b"--send needs" in no_relay.stderr
