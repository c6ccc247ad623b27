"""Per-recipient Message-IDs derived from the job's key: the same on every
rendering (a resend carries the ID of the copy that may have arrived), one per
recipient, and mapped back to the recipient by the journal alone."""

from __future__ import annotations

from email import message_from_bytes
from pathlib import Path

from bulkmail.cli.send_job import message_id_key
from bulkmail.journal import SQLiteJournal, StateChange, Status
from bulkmail.message import Recipient, StaticContent, TemplateContent
from bulkmail.message_ids import recipients_for_message_ids
from bulkmail.newsletter import DecoratedContent, Decorations

TEMPLATE = b"From: news@sender.test\r\nSubject: hi ${name}\r\n\r\nbody\r\n"
STATIC = b"From: news@sender.test\r\nSubject: hi\r\n\r\nbody\r\n"


def message_id(content: DecoratedContent, address: str, name: str = "x") -> str:
    raw = content.render(Recipient(address, {"name": name})).normalized
    value = message_from_bytes(raw)["Message-ID"]
    assert value is not None
    return str(value)


def test_the_journal_keeps_one_key_per_job(tmp_path: Path) -> None:
    with SQLiteJournal(tmp_path / "j.sqlite") as journal:
        key = message_id_key(journal)
        assert key is not None and len(key) == 16
        assert message_id_key(journal) == key  # the rerun reads the first run's key
    assert message_id_key(None) is None
    # a job begun before keys: its resends keep the content-derived Message-IDs
    with SQLiteJournal(tmp_path / "old.sqlite") as journal:
        journal.record([StateChange("alice@example.test", Status.DEFERRED, 451)])
        assert message_id_key(journal) is None
        assert journal.get_meta("message-id-key") is None


def test_keyed_ids_are_stable_per_recipient_and_map_back(tmp_path: Path) -> None:
    key = b"k" * 16
    signed = Decorations(identity_domain="sender.test", message_id_key=key,
                         unsubscribe_url="https://sender.test/u", unsubscribe_secret=b"s" * 16)
    contents = [
        # the template fast path (only Message-ID/Date to add) and the general one
        DecoratedContent(TemplateContent(TEMPLATE),
                         Decorations(identity_domain="sender.test", message_id_key=key)),
        DecoratedContent(StaticContent(STATIC), signed),
    ]
    with SQLiteJournal(tmp_path / "j.sqlite") as journal:
        journal.set_meta("message-id-key", key.hex())
        journal.record([StateChange(a, Status.DELIVERED, 250)
                        for a in ("alice@example.test", "bob@example.test")])
        for content in contents:
            alice = message_id(content, "alice@example.test", "Alice")
            # the same recipient, rendered again (a resend), even with other values
            assert message_id(content, "alice@example.test", "Al") == alice
            bob = message_id(content, "bob@example.test")
            assert bob != alice and alice.endswith("@sender.test>")
            unknown = message_id(content, "carol@example.test")
            assert recipients_for_message_ids(journal, [alice, bob.upper(), unknown]) == {
                alice: "alice@example.test", bob.upper(): "bob@example.test"}


def test_without_a_key_nothing_maps(tmp_path: Path) -> None:
    content = DecoratedContent(TemplateContent(TEMPLATE), Decorations(identity_domain="d.test"))
    mid = message_id(content, "alice@example.test")
    with SQLiteJournal(tmp_path / "j.sqlite") as journal:
        journal.record([StateChange("alice@example.test", Status.DELIVERED, 250)])
        assert recipients_for_message_ids(journal, [mid]) == {}
