"""The reply policy, settlement and backoff state as pure functions (RFC 5321, RFC 3463)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from bulkmail import policy as old_policy
from bulkmail.delivery.health import DestinationHealth, rate_interval
from bulkmail.delivery.job import Item, Job, JobOptions
from bulkmail.delivery.policy import Verdict
from bulkmail.delivery.policy import classify as classify_at
from bulkmail.delivery.retry import RetryPolicy
from bulkmail.delivery.settle import settle
from bulkmail.message import Recipient, StaticContent
from bulkmail.protocol.client import Stage
from bulkmail.protocol.replies import Reply
from bulkmail.session import TransactionResult


def classify(r: Reply, *, others_accepted: bool = False) -> Verdict:
    """A reply whose stage is unknown."""
    return classify_at(None, r, others_accepted=others_accepted)


def reply(code: int, enhanced: str | None = None) -> Reply:
    text = f"{enhanced} text" if enhanced else "text"
    return Reply(code, (text,), enhanced)


def test_2xx_delivers_4xx_defers_5xx_bounces() -> None:
    assert classify(reply(250, "2.0.0")) is Verdict.DELIVERED
    assert classify(reply(251)) is Verdict.DELIVERED
    assert classify(reply(451, "4.7.1")) is Verdict.DEFERRED
    assert classify(reply(421, "4.7.0")) is Verdict.DEFERRED
    assert classify(reply(550, "5.1.1")) is Verdict.BOUNCED
    assert classify(reply(554)) is Verdict.BOUNCED


def test_too_many_recipients_resubmits_only_when_others_were_accepted() -> None:
    assert classify(reply(452, "4.5.3"), others_accepted=True) is Verdict.RESUBMIT
    assert classify(reply(552, "5.5.3"), others_accepted=True) is Verdict.RESUBMIT
    # alone, a 452 is "insufficient storage": a real deferral
    assert classify(reply(452, "4.3.1"), others_accepted=False) is Verdict.DEFERRED
    # 552 mailbox full is a bounce whatever else happened
    assert classify(reply(552, "5.2.2"), others_accepted=True) is Verdict.BOUNCED


def test_452_resubmits_only_when_it_came_on_rcpt() -> None:
    too_many = reply(452, "4.5.3")
    assert classify_at(Stage.RCPT, too_many, others_accepted=True) is Verdict.RESUBMIT
    # at end of data (or BDAT) a 452 is "insufficient storage": a real deferral
    assert classify_at(Stage.DATA_END, too_many, others_accepted=True) is Verdict.DEFERRED
    assert classify_at(Stage.BDAT, too_many, others_accepted=True) is Verdict.DEFERRED
    assert classify_at(Stage.MAIL, too_many, others_accepted=True) is Verdict.DEFERRED


def test_the_old_import_path_keeps_the_old_signature() -> None:
    assert old_policy.classify(reply(452, "4.5.3"), others_accepted=True) is Verdict.RESUBMIT
    assert old_policy.classify(reply(550)) is Verdict.BOUNCED
    assert old_policy.RetryPolicy is RetryPolicy


class Recorder:
    """The engine's side of :func:`settle`: what each recipient was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []

    def delivered(self, items: Sequence[Item], reply: Reply, host: str) -> None:
        self.calls += [("delivered", i.recipient.address, reply.code) for i in items]

    def attempted(self, item: Item, reply: Reply, verdict: Verdict, host: str | None) -> None:
        self.calls.append((verdict.value, item.recipient.address, reply.code))

    def in_doubt(self, item: Item, reply: Reply, host: str | None) -> None:
        self.calls.append(("in_doubt", item.recipient.address, reply.code))

    def unattempted(self, item: Item, reply: Reply, requeue: Callable[[Item], None]) -> None:
        self.calls.append(("unattempted", item.recipient.address, reply.code))


def items(*addresses: str) -> list[Item]:
    job = Job("a@sender.test", StaticContent(b"x\r\n"), JobOptions(), release=lambda n: None)
    return [Item(Recipient(a), job) for a in addresses]


async def test_452_on_rcpt_then_4xx_at_end_of_data_spends_no_attempt_on_the_452s() -> None:
    """RFC 5321 §4.5.3.1.10: the recipients refused "too many" on RCPT go into
    the next transaction, whatever the end of data said to the others."""
    group = items("a@x.test", "b@x.test", "c@x.test")
    scanner_down, too_many = reply(451, "4.3.0"), reply(452, "4.5.3")
    result = TransactionResult(
        [scanner_down, scanner_down, too_many], stages=[Stage.DATA_END, Stage.DATA_END, Stage.RCPT]
    )
    outcomes, requeued = Recorder(), list[Item]()
    accepted = settle(outcomes, requeued.append, group, result, "mx.test")
    assert not accepted
    assert outcomes.calls == [("deferred", "a@x.test", 451), ("deferred", "b@x.test", 451)]
    assert requeued == [group[2]] and group[2].attempts == 0


async def test_452_at_end_of_data_defers_everyone() -> None:
    group = items("a@x.test", "b@x.test")
    storage = reply(452, "4.3.1")
    result = TransactionResult([storage, storage], stages=[Stage.DATA_END, Stage.DATA_END])
    outcomes, requeued = Recorder(), list[Item]()
    settle(outcomes, requeued.append, group, result, "mx.test")
    assert requeued == []
    assert [c[0] for c in outcomes.calls] == ["deferred", "deferred"]


async def test_without_stages_a_452_resubmits_beside_an_acceptance() -> None:
    group = items("a@x.test", "b@x.test")
    result = TransactionResult([reply(250, "2.0.0"), reply(452, "4.5.3")], stages=[])
    outcomes, requeued = Recorder(), list[Item]()
    assert settle(outcomes, requeued.append, group, result, "mx.test")
    assert outcomes.calls == [("delivered", "a@x.test", 250)]
    assert requeued == [group[1]]


async def test_settle_in_doubt_and_unattempted() -> None:
    group = items("a@x.test", "b@x.test")
    lost = reply(451, "4.4.2")
    outcomes = Recorder()
    unknown = [None, None]
    result = TransactionResult([lost, lost], stages=unknown, in_doubt=frozenset({0}))
    settle(outcomes, print, group, result, "mx")
    assert outcomes.calls == [("in_doubt", "a@x.test", 451), ("deferred", "b@x.test", 451)]
    outcomes = Recorder()
    result = TransactionResult([lost, lost], stages=unknown, attempted=False)
    settle(outcomes, print, group, result, "mx")
    # back to the queue's front in their order: the last one first
    assert outcomes.calls == [("unattempted", "b@x.test", 451), ("unattempted", "a@x.test", 451)]


def test_retry_schedule_is_exponential_with_bounded_jitter() -> None:
    policy = RetryPolicy(first_delay=60, max_delay=600, multiplier=2, jitter=0.1)
    rng = random.Random(1)
    for attempts, base in [(1, 60), (2, 120), (3, 240), (4, 480), (5, 600), (9, 600)]:
        for _ in range(20):
            d = policy.delay(attempts, rng)
            assert base * 0.9 <= d <= base * 1.1


def test_retry_stops_at_max_attempts_and_lifetime() -> None:
    rng = random.Random(0)
    policy = RetryPolicy(first_delay=100, jitter=0, max_attempts=3, lifetime=1000)
    assert policy.next_attempt(1, first_attempt=0, now=0, rng=rng) == 100
    assert policy.next_attempt(3, first_attempt=0, now=0, rng=rng) is None
    assert policy.next_attempt(2, first_attempt=0, now=900, rng=rng) is None  # 900+200 > 1000


def test_destination_backoff_halves_then_recovers_step_by_step() -> None:
    health = DestinationHealth(max_concurrency=16, recover_after=2)
    health.failure(now=0)
    assert health.concurrency == 8 and health.pause_until == 1.0
    health.failure(now=1)
    assert health.concurrency == 4 and health.pause_until == 3.0  # pause doubles
    for _ in range(2):
        health.success()
    assert health.concurrency == 5 and health.pause == 0
    for _ in range(40):
        health.success()
    assert health.concurrency == 16
    assert not health.backing_off


def test_rate_interval() -> None:
    assert rate_interval(None) == 0
    assert rate_interval(10) == 0.1
