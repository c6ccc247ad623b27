"""Feedback-loop complaints (ARF, RFC 5965; tests/data/arf/): the recipient found
from the report, a VERP address or the original's To header confirmed by the
journal, and suppressed with reason "complaint"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bulkmail.arf import NotAComplaint, read_complaint
from bulkmail.journal import SQLiteJournal, StateChange
from bulkmail.results import Status
from bulkmail.suppression import SuppressionStore

DATA = Path(__file__).parent / "data" / "arf"
SENDER = "bounces@sender.test"


def raw(name: str) -> bytes:
    return (DATA / name).read_bytes()


def test_original_rcpt_to_names_the_recipient() -> None:
    complaint = read_complaint(raw("rfc5965-abuse.eml"))
    assert complaint.recipients == ["User@Example.COM"]
    assert complaint.found_by == "Original-Rcpt-To"
    assert complaint.feedback_type == "abuse"
    assert complaint.source_ip == "192.0.2.1"
    assert complaint.message_id == "8787KJKJ3K4J3K4J3K4J3.mail@example.net"


def test_a_redacted_report_is_mapped_back_by_verp() -> None:
    with pytest.raises(NotAComplaint, match="no --verp-sender given"):
        read_complaint(raw("redacted-verp.eml"))
    complaint = read_complaint(raw("redacted-verp.eml"), verp_sender=SENDER)
    assert (complaint.recipients, complaint.found_by) == (["alice@example.net"], "VERP")


def test_the_message_id_lookup_is_used_when_given() -> None:
    ids = {"<9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d@sender.test>": "carol@example.net"}
    complaint = read_complaint(raw("to-header-only.eml"), by_message_id=ids.get)
    assert (complaint.recipients, complaint.found_by) == (["carol@example.net"], "Message-ID")


def test_the_to_header_counts_only_when_known() -> None:
    with pytest.raises(NotAComplaint, match="To not a known recipient"):
        read_complaint(raw("to-header-only.eml"), known=lambda a: False)
    complaint = read_complaint(raw("to-header-only.eml"), known=lambda a: True)
    assert (complaint.recipients, complaint.found_by) == (["Carol@EXAMPLE.NET"], "To")


def test_what_is_no_complaint_says_why() -> None:
    with pytest.raises(NotAComplaint, match="'not-spam' is not a complaint"):
        read_complaint(raw("not-spam.eml"))
    with pytest.raises(NotAComplaint, match=r"not an ARF report \(text/plain\)"):
        read_complaint(raw("autoreply.eml"))
    dsn = (Path(__file__).parent / "data" / "dsn" / "postfix-multi.eml").read_bytes()
    with pytest.raises(NotAComplaint, match="'delivery-status' with no message/feedback-report"):
        read_complaint(dsn)


def complaints(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bulkmail", "complaints", *args],
                          capture_output=True, text=True, check=False)


def test_the_command_suppresses_every_complainer_and_lists_the_rest(tmp_path: Path) -> None:
    journal = tmp_path / "j.sqlite"
    with SQLiteJournal(journal) as j:
        j.record([StateChange(a, Status.DELIVERED, 250)
                  for a in ["carol@example.net", "alice@example.net"]])
    db = tmp_path / "s.sqlite"
    result = complaints(str(DATA), "--store", str(db), "--journal", str(journal),
                        "--verp-sender", SENDER)
    assert result.returncode == 1, result.stderr  # two files are no complaints
    assert "Traceback" not in result.stderr
    assert result.stdout.splitlines() == [
        "alice@example.net: suppressed (complaint, found by VERP)",
        "User@example.com: suppressed (complaint, found by Original-Rcpt-To)",
        # the journal's spelling of the To header's Carol@EXAMPLE.NET
        "carol@example.net: suppressed (complaint, found by To)",
    ]
    skipped = result.stderr.splitlines()
    assert len(skipped) == 2
    assert "autoreply.eml: not an ARF report" in skipped[0]
    assert "not-spam.eml: Feedback-Type 'not-spam' is not a complaint" in skipped[1]
    with SuppressionStore(db) as store:
        entries = {e.address: e for e in store.entries()}
    assert set(entries) == {"alice@example.net", "User@example.com", "carol@example.net"}
    assert {e.reason for e in entries.values()} == {"complaint"}
    source = entries["carol@example.net"].source
    assert source == ("abuse report to-header-only.eml about "
                      "<9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d@sender.test>")
    # the same reports again: nothing new
    again = complaints(str(DATA / "rfc5965-abuse.eml"), "--store", str(db))
    assert again.returncode == 0
    assert again.stdout == "User@example.com: already suppressed (complaint, found by " \
        "Original-Rcpt-To)\n"


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    result = complaints(str(DATA), "--store", str(tmp_path / "s.sqlite"),
                        "--journal", str(tmp_path / "none.sqlite"))
    assert result.returncode == 2 and "no journal at" in result.stderr
    (tmp_path / "dir").mkdir()
    result = complaints(str(DATA / "rfc5965-abuse.eml"), "--store", str(tmp_path / "dir"))
    assert result.returncode == 2
    assert result.stderr.startswith("bulkmail complaints: cannot use suppression store")
    missing = complaints(str(tmp_path / "absent.eml"), "--store", str(tmp_path / "s.sqlite"))
    assert missing.returncode == 1 and "absent.eml: no such file" in missing.stderr
