"""The reply policy and backoff state as pure functions (RFC 5321, RFC 3463)."""

from __future__ import annotations

import random

from bulkmail.policy import DestinationHealth, RetryPolicy, Verdict, classify, rate_interval
from bulkmail.protocol.replies import Reply


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
