"""The suppression store: case rules, first entry kept, files compatible with
``send --suppress``, automatic suppression from results, the ``suppress`` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bulkmail.cli.inputs import read_suppressions
from bulkmail.protocol.replies import Reply
from bulkmail.results import Result, Status
from bulkmail.suppression import SuppressionError, SuppressionStore, suppress_from_result


def store(tmp_path: Path) -> SuppressionStore:
    return SuppressionStore(tmp_path / "suppress.sqlite")


def test_the_domain_compares_case_insensitively_the_local_part_as_written(
    tmp_path: Path,
) -> None:
    with store(tmp_path) as s:
        assert s.add("Alice@Example.COM", "manual")
        assert "Alice@example.com" in s
        assert "<Alice@EXAMPLE.com>" in s
        assert "alice@example.com" not in s  # RFC 5321 §2.4: the local part is theirs
        assert s.suppressed_among(["Alice@EXAMPLE.COM", "bob@example.com", "not an address"]) \
            == {"Alice@EXAMPLE.COM"}


def test_the_first_entry_is_kept(tmp_path: Path) -> None:
    with store(tmp_path) as s:
        assert s.add("a@x.org", "bounce", bounce_class="invalid-recipient", source="550", at=100)
        assert not s.add("a@X.ORG", "complaint", at=200)
        entry = s.get("a@x.org")
        assert entry is not None
        assert (entry.reason, entry.bounce_class, entry.added_at) == \
            ("bounce", "invalid-recipient", 100)
        assert len(s) == 1


def test_remove_lifts_a_suppression(tmp_path: Path) -> None:
    with store(tmp_path) as s:
        s.add("a@x.org", "manual")
        assert s.remove("a@X.org")
        assert not s.remove("a@x.org")
        assert "a@x.org" not in s


def test_bad_input_is_a_suppression_error(tmp_path: Path) -> None:
    with store(tmp_path) as s:
        with pytest.raises(SuppressionError, match="not an address"):
            s.add("no-at-sign", "manual")
        with pytest.raises(SuppressionError, match="unknown reason"):
            s.add("a@x.org", "because")
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(SuppressionError, match="cannot use suppression store"):
        SuppressionStore(tmp_path / "dir.sqlite")


def test_export_is_what_send_reads_and_import_reads_it_back(tmp_path: Path) -> None:
    plain = tmp_path / "list.txt"
    plain.write_text("# my list\nA@x.org\n\nb@Y.org\nnot-an-address\n", encoding="utf-8")
    with store(tmp_path) as s:
        added, refused = s.import_file(plain)
        assert added == 2
        assert refused == [f"{plain}:5: not an address: 'not-an-address' "
                           "(invalid address 'not-an-address': missing @)"]
        exported = tmp_path / "out.txt"
        assert s.export_file(exported) == 2
        assert s.lowercased() == frozenset({"a@x.org", "b@y.org"})
    assert read_suppressions(str(exported)) == frozenset({"a@x.org", "b@y.org"})
    with SuppressionStore(tmp_path / "other.sqlite") as other:
        assert other.import_file(exported) == (2, [])


def test_entries_survive_reopening_and_are_shared(tmp_path: Path) -> None:
    with store(tmp_path) as first, store(tmp_path) as second:
        first.add("a@x.org", "unsubscribe")
        assert "a@x.org" in second
    with store(tmp_path) as again:
        assert [e.reason for e in again.entries()] == ["unsubscribe"]


def reply(line: str) -> Reply:
    code, enhanced, text = line.split(" ", 2)
    return Reply(int(code), (f"{enhanced} {text}",), enhanced)


def test_hard_bounces_are_suppressed_from_results_soft_ones_not(tmp_path: Path) -> None:
    with store(tmp_path) as s:
        dead = Result("dead@x.org", Status.BOUNCED, reply("550 5.1.1 User unknown"))
        full = Result("full@x.org", Status.BOUNCED, reply("552 5.2.2 Mailbox full"))
        later = Result("later@x.org", Status.DEFERRED, reply("450 4.1.1 User unknown"))
        sent = Result("ok@x.org", Status.DELIVERED, Reply(250, ("OK",)))
        assert suppress_from_result(s, dead)
        assert not suppress_from_result(s, dead)  # once
        assert not suppress_from_result(s, full)
        assert not suppress_from_result(s, later)
        assert not suppress_from_result(s, sent)
        assert [e.address for e in s.entries()] == ["dead@x.org"]
        entry = s.get("dead@x.org")
        assert entry is not None and entry.bounce_class == "invalid-recipient"
        assert entry.source == "550 5.1.1 User unknown"
        # the classes are the caller's choice
        assert suppress_from_result(s, full, frozenset({"mailbox-full"}))


def test_a_store_that_cannot_be_written_is_an_error_not_already_suppressed(
    tmp_path: Path,
) -> None:
    """A failed write must not look like "this address was already there":
    the caller has to learn that suppressions are being lost."""
    s = store(tmp_path)
    s.close()
    dead = Result("dead@x.org", Status.BOUNCED, reply("550 5.1.1 User unknown"))
    with pytest.raises(SuppressionError):
        suppress_from_result(s, dead)
    malformed = Result("not an address", Status.BOUNCED, reply("553 5.1.3 bad address"))
    assert not suppress_from_result(s, malformed)  # refused at intake already: nothing to add


def suppress(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bulkmail", "suppress", *args],
                          capture_output=True, text=True, check=False)


def test_the_suppress_command(tmp_path: Path) -> None:
    db = str(tmp_path / "s.sqlite")
    added = suppress("add", "a@X.org", "b@y.org", "--store", db)
    assert added.returncode == 0, added.stderr
    assert added.stdout == "a@X.org: suppressed\nb@y.org: suppressed\n"
    assert suppress("add", "a@x.ORG", "--store", db).stdout == "a@x.ORG: already suppressed\n"
    bad = suppress("add", "nope", "c@z.org", "--store", db)
    assert bad.returncode == 1 and "not an address: 'nope'" in bad.stderr
    assert "Traceback" not in bad.stderr
    listed = suppress("list", "--store", db).stdout.splitlines()
    assert [line.split("\t")[:3] for line in listed] == [
        ["a@x.org", "manual", "-"], ["b@y.org", "manual", "-"], ["c@z.org", "manual", "-"]]
    removed = suppress("remove", "b@Y.ORG", "--store", db)
    assert removed.stdout == "b@Y.ORG: removed\n"
    out = tmp_path / "out.txt"
    assert suppress("export", str(out), "--store", db).returncode == 0
    assert out.read_text().splitlines()[1:] == ["a@x.org", "c@z.org"]
    assert suppress("export", "-", "--store", db).stdout == "a@x.org\nc@z.org\n"
    db2 = str(tmp_path / "s2.sqlite")
    imported = suppress("import", str(out), "--store", db2)
    assert imported.returncode == 0 and imported.stdout.startswith("2 address(es) added")
    missing = suppress("import", str(tmp_path / "absent.txt"), "--store", db2)
    assert missing.returncode == 2 and missing.stderr.startswith("bulkmail suppress: cannot read")
