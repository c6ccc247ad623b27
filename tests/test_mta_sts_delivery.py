"""MTA-STS end to end on loopback: DNS, a policy server over HTTPS, a TLS sink
behind a relay that records every byte the client sends (and may strip STARTTLS)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from bulkmail import Mailer, Status
from bulkmail.results import Result

from .tlspolicy_world import DOMAIN, ENFORCE, MESSAGE, MX, TESTING, World, build_world

RCPTS = [f"u{i}@{DOMAIN}" for i in range(3)]


async def deliver(world: World, policy: str = "mta-sts") -> list[Result]:
    results: list[Result] = []
    async with Mailer(world.config(policy)) as mailer:
        await mailer.send("news@sender.test", MESSAGE, RCPTS, on_result=results.append)
    return results


def report_rows(world: World) -> list[tuple[object, ...]]:
    import sqlite3

    with sqlite3.connect(world.state / "tlsrpt.sqlite") as db:
        return db.execute(
            "SELECT policy_type, result_type, receiving_mx, count FROM sessions ORDER BY 2"
        ).fetchall()


def assert_nothing_in_plaintext(world: World) -> None:
    assert b"MAIL FROM" not in bytes(world.relay.sent).upper()
    assert world.sink.messages == []


async def test_enforce_with_a_valid_certificate_delivers_over_verified_tls(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await build_world(nursery, tmp_path)
        world.sts(ENFORCE)
        results = await deliver(world)
        nursery.cancel_scope.cancel()
    # three recipients arriving at once: one TXT lookup, one policy fetch
    assert [q for q in world.dns.queries if q[1] == "TXT"] == [(f"_mta-sts.{DOMAIN}", "TXT", "udp")]
    assert world.policies.requests == [(f"mta-sts.{DOMAIN}", "/.well-known/mta-sts.txt")]
    assert [r.status for r in results] == [Status.DELIVERED] * 3
    assert all(str(r.tls) == "mta-sts verified" for r in results)
    assert results[0].as_dict()["tls_policy"] == "mta-sts"
    assert results[0].as_dict()["tls_verified"] is True
    assert len(world.sink.messages) == 1
    sent = bytes(world.relay.sent)
    assert b"STARTTLS" in sent and b"MAIL FROM" not in sent.upper()  # all of it encrypted
    assert report_rows(world) == [("sts", "", "", 1)]  # one successful session counted


async def test_enforce_refuses_a_stripped_starttls(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await build_world(nursery, tmp_path, strip_starttls=True)
        world.sts(ENFORCE)
        results = await deliver(world)
        nursery.cancel_scope.cancel()
    assert {r.status for r in results} == {Status.DEFERRED}
    assert results[0].code == 421 and results[0].enhanced == "4.7.10"
    assert_nothing_in_plaintext(world)
    assert ("sts", "starttls-not-supported", MX, 1) in report_rows(world)


async def test_enforce_refuses_a_certificate_for_another_name(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await build_world(nursery, tmp_path, cert_name="other.test")
        world.sts(ENFORCE)
        results = await deliver(world)
        nursery.cancel_scope.cancel()
    assert {r.status for r in results} == {Status.DEFERRED}
    assert results[0].enhanced == "4.7.5"
    assert_nothing_in_plaintext(world)
    assert ("sts", "certificate-host-mismatch", MX, 1) in report_rows(world)


async def test_enforce_refuses_an_expired_certificate(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await build_world(nursery, tmp_path, expired=True)
        world.sts(ENFORCE)
        results = await deliver(world)
        nursery.cancel_scope.cancel()
    assert {r.status for r in results} == {Status.DEFERRED}
    assert_nothing_in_plaintext(world)
    assert ("sts", "certificate-expired", MX, 1) in report_rows(world)


async def test_enforce_never_connects_to_an_mx_outside_the_policy(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await build_world(nursery, tmp_path)
        world.sts(ENFORCE.replace(f"mx: {MX}", "mx: *.elsewhere.test"))
        results = await deliver(world)
        nursery.cancel_scope.cancel()
    assert {r.status for r in results} == {Status.DEFERRED}
    assert results[0].code == 451 and results[0].enhanced == "4.7.5"
    assert "not in policy.test's policy" in (results[0].text or "")
    assert world.relay.connections == 0 and world.relay.sent == b""
    assert ("sts", "validation-failure", MX, 1) in report_rows(world)


async def test_testing_mode_delivers_and_records_the_failure(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await build_world(nursery, tmp_path, cert_name="other.test")
        world.sts(TESTING)
        results = await deliver(world)
        nursery.cancel_scope.cancel()
    assert [r.status for r in results] == [Status.DELIVERED] * 3
    assert str(results[0].tls) == "mta-sts-testing unverified"  # as today: TLS, unchecked
    assert len(world.sink.messages) == 1
    assert report_rows(world) == [("sts", "certificate-host-mismatch", MX, 1)]


async def test_opportunistic_ignores_the_policy(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await build_world(nursery, tmp_path, strip_starttls=True)
        world.sts(ENFORCE)
        results = await deliver(world, "opportunistic")
        nursery.cancel_scope.cancel()
    assert [r.status for r in results] == [Status.DELIVERED] * 3
    assert str(results[0].tls) == "opportunistic plaintext"
    assert world.policies.requests == []  # not even fetched


async def test_a_failed_fetch_keeps_the_cached_policy_across_restarts(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await build_world(nursery, tmp_path, cert_name="other.test")
        world.sts(ENFORCE)
        await deliver(world)  # a first run (a first process) fetches and caches it
        assert json.loads((world.state / "mta-sts-cache.json").read_text())[DOMAIN]["id"] == "1"
        # the id changes but the policy host now fails: the cached enforce policy holds
        world.sts(ENFORCE, policy_id="2")
        world.policies.routes.clear()
        results = await deliver(world)
        # without that cache, the same failure means no policy: delivered as today
        world.state = tmp_path / "fresh"
        unprotected = await deliver(world)
        nursery.cancel_scope.cancel()
    assert {r.status for r in results} == {Status.DEFERRED}
    assert [r.status for r in unprotected] == [Status.DELIVERED] * 3
    assert str(unprotected[0].tls) == "opportunistic unverified"
    assert world.policies.requests.count((f"mta-sts.{DOMAIN}", "/.well-known/mta-sts.txt")) == 3
    world.state = tmp_path / "state"
    assert any(row[1] == "sts-policy-fetch-error" for row in report_rows(world))


async def test_state_that_cannot_be_written_never_stops_delivery(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await build_world(nursery, tmp_path)
        world.sts(ENFORCE)
        world.state = tmp_path / "a-file"
        world.state.write_text("not a directory")
        with pytest.warns(UserWarning) as warned:
            results = await deliver(world)
        nursery.cancel_scope.cancel()
    assert [r.status for r in results] == [Status.DELIVERED] * 3
    assert str(results[0].tls) == "mta-sts verified"
    messages = " ".join(str(w.message) for w in warned)
    assert "policy cache" in messages and "TLS-RPT counts not recorded" in messages


async def test_a_known_policy_is_not_fetched_again_while_its_id_holds(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await build_world(nursery, tmp_path)
        world.sts(ENFORCE)
        first = await deliver(world)
        second = await deliver(world)  # a new process: the TXT id is checked, the cache used
        world.sts(ENFORCE.replace("max_age: 86400", "max_age: 604800"), policy_id="2")
        third = await deliver(world)  # a new id: fetched again
        nursery.cancel_scope.cancel()
    assert all(str(r.tls) == "mta-sts verified" for r in first + second + third)
    assert len(world.policies.requests) == 2
    cached = json.loads((world.state / "mta-sts-cache.json").read_text())[DOMAIN]
    assert cached["id"] == "2" and "604800" in cached["policy"]


async def test_cli_reports_the_tls_policy_of_each_recipient(tmp_path: Path) -> None:
    import sys

    rcpts = tmp_path / "list.txt"
    rcpts.write_text(f"a@{DOMAIN}\n")
    message = tmp_path / "msg.eml"
    message.write_bytes(MESSAGE)
    async with trio.open_nursery() as nursery:
        world = await build_world(nursery, tmp_path)  # no MTA-STS record published
        done = await trio.run_process(
            [sys.executable, "-m", "bulkmail", "send", "--sender", "news@sender.test",
             "--recipients", str(rcpts), "--message", str(message),
             "--dns-server", f"127.0.0.1:{world.dns.port}", "--mx-port", str(world.relay.port),
             "--report", str(tmp_path / "report.jsonl"), "--no-journal", "--quiet"],
            cwd=tmp_path, capture_stdout=True, capture_stderr=True, check=False,
        )
        nursery.cancel_scope.cancel()
    assert done.returncode == 0, done.stderr
    line = json.loads((tmp_path / "report.jsonl").read_text())
    assert line["status"] == "delivered"
    assert line["tls_policy"] == "opportunistic" and line["tls_verified"] is False
    assert (f"_mta-sts.{DOMAIN}", "TXT", "udp") in world.dns.queries  # looked for, by default
    assert not (tmp_path / ".bulkmail" / "tlsrpt.sqlite").exists()  # nothing to count


async def test_enforce_skips_an_mx_outside_the_policy_for_one_inside(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await build_world(nursery, tmp_path)
        world.dns.add(DOMAIN, "MX", "5 rogue.policy.test.")  # preferred, but not in the policy
        world.dns.add("rogue.policy.test", "A", "127.0.0.1")
        world.sts(ENFORCE)
        results = await deliver(world)
        nursery.cancel_scope.cancel()
    assert [r.status for r in results] == [Status.DELIVERED] * 3
    assert {r.host for r in results} == {MX} and str(results[0].tls) == "mta-sts verified"
    assert world.relay.connections == 1  # the rogue host was never contacted
    assert sorted(report_rows(world)) == [("sts", "", "", 1),
                                          ("sts", "validation-failure", "rogue.policy.test", 1)]
