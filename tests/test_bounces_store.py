"""``bulkmail bounces --store``: asynchronous bounces get a class, and the hard
ones land in the suppression store (the soft ones do not)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bulkmail.suppression import SuppressionStore

from .test_bounces import DATA, STORED, journal_with


def bounces(journal: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "bulkmail", "bounces", "--journal", str(journal), *args]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_hard_bounces_are_classified_and_suppressed(tmp_path: Path) -> None:
    journal = journal_with(tmp_path / "j.sqlite", STORED)
    db = tmp_path / "s.sqlite"
    result = bounces(journal, "--store", str(db), str(DATA / "postfix-multi.eml"),
                     str(DATA / "utf8-two.eml"))
    assert result.returncode == 0, result.stderr
    assert "alice@example.test: bounced 550 5.1.1 class=invalid-recipient" in result.stdout
    assert "Carol+news@example.test: bounced 552 5.2.2 class=mailbox-full" in result.stdout
    assert "jörg@example.net: bounced 550 5.1.1 class=invalid-recipient" in result.stdout
    with SuppressionStore(db) as store:
        entries = {e.address: e for e in store.entries()}
    assert set(entries) == {"alice@example.test", "jörg@example.net"}
    alice = entries["alice@example.test"]
    assert (alice.reason, alice.bounce_class) == ("bounce", "invalid-recipient")
    assert alice.source is not None and "550 5.1.1" in alice.source


def test_the_suppressing_classes_are_configurable(tmp_path: Path) -> None:
    journal = journal_with(tmp_path / "j.sqlite", STORED)
    db = tmp_path / "s.sqlite"
    result = bounces(journal, "--store", str(db), "--suppress-classes", "mailbox-full",
                     str(DATA / "postfix-multi.eml"))
    assert result.returncode == 0, result.stderr
    with SuppressionStore(db) as store:
        assert [e.address for e in store.entries()] == ["Carol+news@example.test"]


def test_an_unknown_class_is_a_usage_error(tmp_path: Path) -> None:
    journal = journal_with(tmp_path / "j.sqlite", STORED)
    result = bounces(journal, "--store", str(tmp_path / "s.sqlite"),
                     "--suppress-classes", "hard", str(DATA / "postfix-multi.eml"))
    assert result.returncode == 2
    assert result.stderr.startswith("bulkmail bounces: unknown bounce class(es) hard")
