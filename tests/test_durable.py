"""``send_durably``, the library's resume, against the sink on 127.0.0.1: what
the journal already knows decides who is sent, and its flags reach the results
(issue 15.5, 15.6)."""

from __future__ import annotations

from pathlib import Path

import trio

from bulkmail import Mailer, MailerConfig, Relay, Result
from bulkmail.durable import ResumeCounts, send_durably
from bulkmail.journal import JournalWriter, SQLiteJournal, StateChange, Status
from bulkmail.message import Recipient

from .sinkutil import start_sink


async def test_a_resume_keeps_flags_and_never_sends_a_recipient_in_doubt_twice(
    tmp_path: Path,
) -> None:
    journal = SQLiteJournal(tmp_path / "j.sqlite")
    journal.record([
        # resent after a kill, then delivered: final, and still a possible duplicate
        StateChange("resent@example.test", Status.DELIVERED, 250, "2.0.0", "ok", 2,
                    possible_duplicate=True),
        # in doubt once: resent, flagged
        StateChange("once@example.test", Status.IN_DOUBT, attempts=1),
        # in doubt while it was being resent: in doubt twice
        StateChange("twice@example.test", Status.IN_DOUBT, attempts=2, possible_duplicate=True),
    ])
    results: dict[str, Result] = {}
    resume = ResumeCounts()
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True)
        config = MailerConfig(relay=Relay("127.0.0.1", sink.port), secure="none")
        writer = JournalWriter(journal)
        async with Mailer(config) as mailer:
            await nursery.start(writer.run)
            summary = await send_durably(
                mailer, writer, "news@sender.test", b"Subject: x\r\n\r\ny\r\n",
                [Recipient(a) for a in ("resent@example.test", "once@example.test",
                                        "twice@example.test", "new@example.test")],
                on_result=lambda r: results.__setitem__(r.recipient, r), resume=resume,
            )
            await writer.aclose()
        nursery.cancel_scope.cancel()
    sent = sorted(r for m in sink.messages for r in m.rcpts)
    assert sent == ["new@example.test", "once@example.test"]
    assert results["resent@example.test"].status is Status.DELIVERED
    assert results["resent@example.test"].possible_duplicate
    assert results["once@example.test"].status is Status.DELIVERED
    assert results["once@example.test"].possible_duplicate
    twice = results["twice@example.test"]
    assert twice.status is Status.IN_DOUBT and twice.possible_duplicate
    assert twice.reply is not None and "in doubt twice" in twice.reply.text
    assert not results["new@example.test"].possible_duplicate
    assert (summary.delivered, summary.in_doubt, summary.possible_duplicates) == (3, 1, 3)
    assert resume.already_final == 2
    assert journal.lookup(["twice@example.test"])["twice@example.test"].possible_duplicate
    journal.close()


async def test_the_in_doubt_mark_of_a_resent_recipient_carries_its_flag(tmp_path: Path) -> None:
    journal = SQLiteJournal(tmp_path / "j.sqlite")
    journal.record([StateChange("once@example.test", Status.IN_DOUBT, attempts=1)])
    marks: list[tuple[str, bool]] = []

    class Watching(SQLiteJournal):
        def record_outcomes(self, groups):  # type: ignore[no-untyped-def]
            for addresses, outcome in groups:
                if outcome.status is Status.IN_DOUBT:
                    marks.extend((a, outcome.possible_duplicate) for a in addresses)
            super().record_outcomes(groups)

    journal.close()
    watching = Watching(tmp_path / "j.sqlite")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        config = MailerConfig(relay=Relay("127.0.0.1", sink.port), secure="none")
        writer = JournalWriter(watching)
        async with Mailer(config) as mailer:
            await nursery.start(writer.run)
            await send_durably(
                mailer, writer, "news@sender.test", b"Subject: x\r\n\r\ny\r\n",
                [Recipient("once@example.test"), Recipient("new@example.test")],
            )
            await writer.aclose()
        nursery.cancel_scope.cancel()
    # killed now, "once" would be found in doubt *and* flagged: in doubt twice
    assert dict(marks) == {"once@example.test": True, "new@example.test": False}
    watching.close()
