"""The per-batch suppression of a run's hard bounces (``send --suppress-store``):
only bounces of the chosen classes are added, one store transaction per batch,
lines that were no address are skipped, and a store that stops accepting writes
is said once while the run goes on."""

from __future__ import annotations

from pathlib import Path

from bulkmail.bounce_class import DEFAULT_SUPPRESS
from bulkmail.cli.send_reputation import BounceSuppressor
from bulkmail.errors import synthetic_reply
from bulkmail.protocol.replies import Reply
from bulkmail.results import Result, Status
from bulkmail.suppression import SuppressionStore

NO_SUCH_USER = Reply(550, ("5.1.1 user unknown",), "5.1.1")
FULL = Reply(452, ("4.2.2 mailbox full",), "4.2.2")


def batch() -> list[Result]:
    return [
        Result("ann@example.test", Status.DELIVERED, Reply(250, ("ok",))),
        Result("bob@example.test", Status.BOUNCED, NO_SUCH_USER),
        Result("cat@example.test", Status.BOUNCED, NO_SUCH_USER),
        Result("dan@example.test", Status.DEFERRED, FULL),
        Result("not an address", Status.BOUNCED,
               synthetic_reply(553, "5.1.3", "not an address")),
    ]


def test_hard_bounces_of_a_batch_are_added_with_their_reply(tmp_path: Path) -> None:
    with SuppressionStore(tmp_path / "s.sqlite") as store:
        suppressor = BounceSuppressor(store, DEFAULT_SUPPRESS)
        suppressor(batch())
        suppressor(batch())  # already there: counted once
        assert suppressor.added == 2
        entries = list(store.entries())
    assert sorted(e.address for e in entries) == ["bob@example.test", "cat@example.test"]
    assert {(e.reason, e.bounce_class, e.source) for e in entries} == {
        ("bounce", "invalid-recipient", str(NO_SUCH_USER))}


def test_a_store_that_fails_is_said_once_and_the_run_goes_on(tmp_path: Path) -> None:
    store = SuppressionStore(tmp_path / "s.sqlite")
    said: list[str] = []
    suppressor = BounceSuppressor(store, DEFAULT_SUPPRESS, warn=said.append)
    store.close()  # every write now fails
    suppressor(batch())
    suppressor(batch())
    assert suppressor.failed and suppressor.added == 0
    assert len(said) == 1
    assert said[0].startswith("bulkmail send: suppression store ")
    assert said[0].endswith("later bounces are not added to it"
                            " (the journal and report still have them)")
