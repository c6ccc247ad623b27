"""Bounces as providers send them (tests/data/dsn/): parsed with the modern email
policy, every file processed, skipped ones named, the journal matched as it
stores addresses, the suppression list appended once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bulkmail.dsn import DSNError, NotADSN, parse_dsn, read_dsn
from bulkmail.journal import SQLiteJournal, StateChange
from bulkmail.results import Status

DATA = Path(__file__).parent / "data" / "dsn"
SENDER = "bounces@sender.test"


def fixture(name: str) -> bytes:
    return (DATA / name).read_bytes()


def statuses(name: str) -> list[tuple[str, str, str | None, int]]:
    return [(r.recipient, r.action, r.status, r.code) for r in parse_dsn(fixture(name))]


def test_several_recipients_failed_and_delayed() -> None:
    assert statuses("postfix-multi.eml") == [
        ("alice@example.test", "failed", "5.1.1", 550),
        ("Carol+news@EXAMPLE.TEST", "failed", "5.2.2", 552),
        ("dave@example.test", "delayed", "4.4.1", 450),
    ]
    assert statuses("delayed.eml") == [("heidi@example.test", "delayed", "4.4.7", 450)]


def test_utf8_addresses_raw_and_rfc6533_escaped() -> None:
    assert statuses("utf8-two.eml") == [
        ("jörg@example.net", "failed", "5.1.1", 550),
        ("zoë@BÜRO.example.net", "failed", "5.1.2", 550),
    ]
    # a UTF-8 VERP bounce address maps back to the UTF-8 recipient, no mojibake
    reports = parse_dsn(fixture("utf8-global.eml"), verp_sender=SENDER)
    assert [r.recipient for r in reports] == ["zoë@example.net"]


def test_eight_bit_garbage_is_named_not_a_traceback() -> None:
    dsn = read_dsn(fixture("garbage-8bit.eml"))
    assert [r.recipient for r in dsn.reports] == ["erin@example.org"]
    assert len(dsn.problems) == 1 and "not valid UTF-8" in dsn.problems[0]


def test_what_is_not_a_usable_dsn_says_why() -> None:
    with pytest.raises(NotADSN, match="text/plain"):
        parse_dsn(fixture("autoreply.eml"))
    with pytest.raises(NotADSN, match="disposition-notification"):
        parse_dsn(fixture("read-receipt.eml"))
    with pytest.raises(DSNError, match="no per-recipient group"):
        parse_dsn(fixture("no-recipient-group.eml"))
    truncated = read_dsn(fixture("truncated.eml"))
    assert truncated.truncated
    assert [r.recipient for r in truncated.reports] == ["alice@example.test"]  # complete only
    assert truncated.problems == ["recipient group 2 (Carol+news@EXAMPLE.TEST): no Status field"]


# -- the command ------------------------------------------------------------------

STORED = [
    "alice@example.test", "Carol+news@example.test", "dave@example.test", "erin@example.org",
    "zoë@example.net", "jörg@example.net",
]


def journal_with(path: Path, addresses: list[str]) -> Path:
    with SQLiteJournal(path) as journal:
        journal.record([StateChange(a, Status.DELIVERED, 250) for a in addresses])
    return path


def rows(path: Path) -> dict[str, tuple[str, int | None]]:
    with SQLiteJournal(path) as journal:
        return {r.address: (r.status.value, r.code) for r in journal.iter_records()}


def bounces(journal: Path, *files: str, suppress: Path | None = None,
            verp: bool = False) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "bulkmail", "bounces", "--journal", str(journal)]
    if suppress is not None:
        command += ["--suppress", str(suppress)]
    if verp:
        command += ["--verp-sender", SENDER]
    return subprocess.run(command + [str(DATA / f) for f in files],
                          capture_output=True, text=True, check=False)


def test_every_valid_report_is_recorded_and_the_rest_listed(tmp_path: Path) -> None:
    journal = journal_with(tmp_path / "j.sqlite", STORED)
    result = bounces(journal, "postfix-multi.eml", "autoreply.eml", "garbage-8bit.eml",
                     "read-receipt.eml", "truncated.eml", "no-recipient-group.eml")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    skipped = [line for line in result.stderr.splitlines() if "skipped" in line]
    for name, why in [("autoreply.eml", "not a delivery status notification"),
                      ("read-receipt.eml", "disposition-notification"),
                      ("garbage-8bit.eml", "not valid UTF-8"),
                      ("truncated.eml", "truncated"),
                      ("no-recipient-group.eml", "no per-recipient group")]:
        assert any(name in line and why in line for line in skipped), (name, result.stderr)
    after = rows(journal)
    assert len(after) == len(STORED)  # nothing added
    # the DSN's "Carol+news@EXAMPLE.TEST" is the journal's "Carol+news@example.test"
    assert after["Carol+news@example.test"] == ("bounced", 552)
    assert after["alice@example.test"] == ("bounced", 550)
    assert after["erin@example.org"] == ("bounced", 554)
    assert after["dave@example.test"] == ("delivered", 250)  # delayed is not a bounce


def test_all_understood_exits_zero(tmp_path: Path) -> None:
    journal = journal_with(tmp_path / "j.sqlite", STORED)
    result = bounces(journal, "postfix-multi.eml", "delayed.eml", "utf8-two.eml")
    assert result.returncode == 0, result.stderr
    assert "dave@example.test: delayed 4.4.1" in result.stdout
    assert rows(journal)["jörg@example.net"] == ("bounced", 550)


def test_unknown_address_adds_no_row(tmp_path: Path) -> None:
    journal = journal_with(tmp_path / "j.sqlite", ["alice@example.test"])
    result = bounces(journal, "postfix-multi.eml")
    assert result.returncode == 0, result.stderr
    assert rows(journal) == {"alice@example.test": ("bounced", 550)}
    assert "Carol+news@EXAMPLE.TEST: not in this journal" in result.stderr


def test_the_same_dsn_twice_is_suppressed_once(tmp_path: Path) -> None:
    journal = journal_with(tmp_path / "j.sqlite", STORED)
    suppress = tmp_path / "suppress.txt"
    suppress.write_text("ALICE@example.test\n")  # listed already, in another case
    assert bounces(journal, "postfix-multi.eml", suppress=suppress).returncode == 0
    assert bounces(journal, "postfix-multi.eml", "postfix-multi.eml",
                   suppress=suppress).returncode == 0
    assert suppress.read_text() == "ALICE@example.test\nCarol+news@example.test\n"


def test_utf8_verp_bounce_is_recorded_and_suppressed(tmp_path: Path) -> None:
    journal = journal_with(tmp_path / "j.sqlite", STORED)
    suppress = tmp_path / "suppress.txt"
    result = bounces(journal, "utf8-global.eml", suppress=suppress, verp=True)
    assert result.returncode == 0, result.stderr
    assert rows(journal)["zoë@example.net"] == ("bounced", 550)
    assert suppress.read_text(encoding="utf-8") == "zoë@example.net\n"


def test_missing_journal_is_a_usage_error(tmp_path: Path) -> None:
    result = bounces(tmp_path / "nope.sqlite", "postfix-multi.eml")
    assert result.returncode == 2 and "no journal" in result.stderr
