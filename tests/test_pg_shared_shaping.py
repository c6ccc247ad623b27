"""Reply rules' actions and warm-up caps shared by ``bulkmail worker`` processes
on PostgreSQL: one worker's ``421 4.7.0 [TSS04]`` suspends the destination for
every worker for the configured time (another destination keeps flowing);
a warm-up cap of N a day lets exactly N through across two workers, and a
restarted worker finds it used up.  Real processes, the project's sink, a
scripted provider, loopback DNS; time passes in the database (``travel``)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import trio

from bulkmail.journal import Status
from bulkmail.store import PgStore
from bulkmail.store.shaping import reserve_warmup
from bulkmail.testing.dns_server import DNSServer
from tests.pg_workers import ROOT, create_loading_job, finish, finish_loading, received
from tests.pgutil import column, pg_url, store_url, travel
from tests.scripted import Conn, MiniSMTP, ScriptedServer
from tests.sinkutil import start_sink

__all__ = ["pg_url", "store_url"]  # fixtures, imported for pytest

TSS04 = (
    "421 4.7.0 [TSS04] Messages from 127.0.0.3 temporarily deferred due to unexpected volume"
    " or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes\r\n"
)
SHAPING = """
[domains."mx.yahoo.test"]
connections = 1

[[reactions]]
name = "yahoo-tss04"
destination = "*.yahoo.test"
code = "421"
enhanced = '4\\.7\\.0'
text = '\\[TSS04\\]'
action = "suspend"
duration = "30m"
"""


async def start_worker(store_url: str, job: int, args: list[str], source: str) -> trio.Process:
    return await trio.lowlevel.open_process(
        [sys.executable, "-m", "bulkmail", "worker", "--db", store_url, "--job", str(job),
         "--tls", "none", "--source-address", source, "--quiet", "--claim-size", "5",
         "--max-leased", "40", *args],
        cwd=ROOT, stderr=subprocess.PIPE,
    )


async def wait_for(store_url: str, check: str, timeout: float = 60) -> None:
    """Until ``check`` (a query of one boolean, in the test's schema) is true."""
    with trio.fail_after(timeout):
        while not column(store_url, check)[0]:
            await trio.sleep(0.1)


async def test_tss04_seen_by_one_worker_suspends_the_destination_for_both(
    store_url: str, tmp_path: Path,
) -> None:
    rules = tmp_path / "shaping.toml"
    rules.write_text(SHAPING)
    yahoo = [f"y{i}@yahoo.test" for i in range(20)]
    other = [f"o{i}@other.test" for i in range(60)]
    job = create_loading_job(store_url, max_rcpts=5, retry_for=7200.0)
    connections: list[tuple[float, str]] = []

    def rcpt(address: str, n: int) -> str:
        # the provider defers the first session only: a worker that did not
        # obey the other's suspension would get the next one through
        return TSS04 if len(connections) == 1 else "250 2.1.5 Ok\r\n"

    mini = MiniSMTP(rcpt=rcpt)

    async def provider(conn: Conn) -> None:
        assert isinstance(conn.stream, trio.SocketStream)
        connections.append((time.time(), conn.stream.socket.getpeername()[0]))
        await mini(conn)

    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True)
        server = ScriptedServer(provider)
        listeners = await trio.open_tcp_listeners(sink.port, host="127.0.0.2")
        nursery.start_soon(trio.serve_listeners, server._handle, listeners)
        dns = DNSServer()
        dns_port = await nursery.start(dns.serve)
        dns.add("yahoo.test", "MX", "10 mx.yahoo.test.")
        dns.add("mx.yahoo.test", "A", "127.0.0.2")
        dns.add("other.test", "MX", "10 mx.other.test.")
        dns.add("mx.other.test", "A", "127.0.0.1")
        args = ["--dns-server", f"127.0.0.1:{dns_port}", "--mx-port", str(sink.port),
                "--shaping", str(rules)]
        workers = [await start_worker(store_url, job, args, source)
                   for source in ("127.0.0.3", "127.0.0.4")]
        finish_loading(store_url, job, yahoo + other)

        # the other destination flows to the end; every yahoo recipient is
        # held by whichever worker has it, due when the 30 minutes are over
        await wait_for(store_url, "SELECT count(*) = 60 FROM recipients WHERE state = 'delivered'")
        await wait_for(
            store_url, "SELECT count(*) = 20 FROM recipients WHERE domain = 'yahoo.test'"
            " AND state = 'deferred' AND (attempts > 0 OR next_attempt > now() + interval '29m')")
        assert len(connections) == 1, connections  # only the session that got TSS04
        # the worker that got it stops; more recipients there come in, and the
        # other worker -- which only knows the action from the store -- holds
        # them all without a single connection
        sources = ("127.0.0.3", "127.0.0.4")
        triggered = sources.index(connections[0][1])
        workers[triggered].send_signal(signal.SIGTERM)
        errors = [await finish(workers[triggered])]
        more = [f"z{i}@yahoo.test" for i in range(20)]
        with PgStore(store_url) as store:
            store.load_recipients(job, more)
        await wait_for(
            store_url, "SELECT count(*) = 40 FROM recipients WHERE domain = 'yahoo.test'"
            " AND state = 'deferred' AND (attempts > 0 OR next_attempt > now() + interval '29m')")
        await trio.sleep(1.5)  # a few polls more: nobody tries yahoo again
        other_worker = workers[1 - triggered]
        other_worker.send_signal(signal.SIGTERM)
        errors.append(await finish(other_worker))
        assert len(connections) == 1, connections
        assert not [m for m in sink.messages if any("yahoo" in r for r in m.rcpts)]
        assert len(received(sink)) == 60  # the other destination: all of it, meanwhile
        own = [line for line in errors[0][1].splitlines() if "shaping:" in line]
        assert len(own) == 1 and own[0].startswith(
            "shaping: suspend mx:mx.yahoo.test for 1800s (yahoo-tss04)"), errors
        assert "[TSS04]" in own[0]
        heard = [line for line in errors[1][1].splitlines() if "shaping:" in line]
        assert len(heard) == 1 and heard[0].startswith("shaping: suspend mx:mx.yahoo.test for ")
        assert "[from worker " in heard[0]

        # the action is the job's log: when, what, who, and the reply
        status = await trio.run_process(
            [sys.executable, "-m", "bulkmail", "job", "status", "--db", store_url,
             str(job)], cwd=ROOT, capture_stdout=True)
        text = status.stdout.decode()
        assert "suspend mx:mx.yahoo.test (yahoo-tss04)" in text
        assert "421 4.7.0 [TSS04] Messages from 127.0.0.3" in text
        assert column(store_url, "SELECT count(*) FROM shaping_actions") == [1]

        # 30 minutes later (in the database): restarted workers send the rest
        travel(store_url, "UPDATE shaping_actions SET until = now()")
        travel(store_url, "UPDATE destinations SET paused_until = now()")
        travel(store_url, "UPDATE recipients SET next_attempt = now() WHERE state = 'deferred'")
        workers = [await start_worker(store_url, job, args, source)
                   for source in ("127.0.0.3", "127.0.0.4")]
        for worker in workers:
            status_code, err = await finish(worker)
            assert status_code == 0, err
        nursery.cancel_scope.cancel()
    assert sorted(received(sink)) == sorted(other) and max(received(sink).values()) == 1
    assert sorted(mini.delivered) == sorted(yahoo + more)  # once each, after the suspension
    with PgStore(store_url) as store:
        assert store.counts(job) == {Status.DELIVERED: 100}


BOUNCE_REST = """
[[reactions]]
name = "blocked"
code = "550"
text = "Permanent failure requested"
action = "bounce-rest"
"""


async def test_bounce_rest_bounces_the_rest_of_the_stored_job_for_every_worker(
    store_url: str, tmp_path: Path,
) -> None:
    """One worker's 550 to ``permfail@`` bounces the rest of the job there:
    what nobody had claimed yet at once, in the store, and what is claimed
    afterwards -- by either worker -- without being sent."""
    rules = tmp_path / "shaping.toml"
    rules.write_text(BOUNCE_REST)
    job = create_loading_job(store_url, max_rcpts=5, retry_for=600.0)
    first = ["permfail@example.test"]
    later = [f"u{i}@example.test" for i in range(40)]
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True)
        args = ["--relay", f"127.0.0.1:{sink.port}", "--shaping", str(rules)]
        one = await start_worker(store_url, job, args, "127.0.0.3")
        with PgStore(store_url) as store:
            store.load_recipients(job, first)
        await wait_for(store_url, "SELECT count(*) = 1 FROM shaping_actions")
        two = await start_worker(store_url, job, args, "127.0.0.4")
        finish_loading(store_url, job, later)
        for worker in (one, two):
            status, err = await finish(worker)
            assert status == 0, err
        nursery.cancel_scope.cancel()
    assert sink.stats.recipients == 0
    with PgStore(store_url) as store:
        assert store.counts(job) == {Status.BOUNCED: 41}
    replies = column(store_url, "SELECT DISTINCT reply FROM recipients WHERE address <> "
                                "'permfail@example.test'")
    assert len(replies) == 1 and replies[0].startswith(
        f"not sent: relay:127.0.0.1:{sink.port} answered \"550 5.7.1 Permanent failure")
    assert replies[0].endswith("shaping rule blocked bounces the rest of this job there")
    assert column(store_url, "SELECT job FROM shaping_actions") == [job]


WARMUP = """
[[warmup]]
destination = "example.test"
daily = 7
"""


async def test_a_warmup_cap_of_n_a_day_lets_exactly_n_through_across_two_workers(
    store_url: str, tmp_path: Path,
) -> None:
    """Both workers send from the same egress address, so they share its cap:
    7 today in all, the rest held until the next UTC day (deferred, no
    attempt spent); a worker started later the same day sends nothing more."""
    n = 7
    rules = tmp_path / "shaping.toml"
    rules.write_text(WARMUP)
    everyone = [f"u{i}@example.test" for i in range(30)]
    job = create_loading_job(store_url, max_rcpts=5, retry_for=3 * 86400.0)
    tomorrow = (int(time.time()) // 86400 + 1) * 86400
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True, latency=0.02)
        args = ["--relay", f"127.0.0.1:{sink.port}", "--shaping", str(rules)]
        workers = [await start_worker(store_url, job, args, "127.0.0.3") for _ in range(2)]
        finish_loading(store_url, job, everyone)
        await wait_for(
            store_url, f"SELECT count(*) = {len(everyone) - n} FROM recipients"
            f" WHERE state = 'deferred' AND next_attempt >= to_timestamp({tomorrow})")
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            await finish(worker)
        assert sum(received(sink).values()) == n
        with PgStore(store_url) as store:
            assert store.counts(job) == {Status.DELIVERED: n, Status.DEFERRED: len(everyone) - n}
        replies = column(store_url, "SELECT DISTINCT reply FROM recipients"
                                    " WHERE state = 'deferred'")
        assert len(replies) == 1 and replies[0].startswith(
            f"warm-up cap for example.test from 127.0.0.3 reached ({n}/day); next window ")
        assert column(store_url, "SELECT max(attempts) FROM recipients"
                                 " WHERE state = 'deferred'") == [0]
        assert column(store_url, "SELECT sent FROM warmup_sent") == [n]

        # a restart the same day: a new job there, a new worker -- nothing more today
        second = create_loading_job(store_url, max_rcpts=5, retry_for=3 * 86400.0)
        finish_loading(store_url, second, [f"v{i}@example.test" for i in range(4)])
        worker = await start_worker(store_url, second, args, "127.0.0.3")
        await wait_for(store_url, f"SELECT count(*) = 4 FROM recipients WHERE job = {second}"
                       f" AND state = 'deferred' AND next_attempt >= to_timestamp({tomorrow})")
        worker.send_signal(signal.SIGTERM)
        await finish(worker)
        nursery.cancel_scope.cancel()
    assert sum(received(sink).values()) == n


def test_concurrent_reservations_never_pass_the_cap(store_url: str) -> None:
    """Eight threads on their own connections reserving one or three at a
    time: together they get exactly the cap, never more."""
    cap, granted = 50, Counter[int]()
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def reserve(me: int) -> None:
        with PgStore(store_url) as store:
            barrier.wait()
            while True:
                got, _ = reserve_warmup(store.db, "192.0.2.1", "*.google.com", 86400,
                                        1 + me % 3, cap)
                if not got:
                    return
                with lock:
                    granted[me] += got

    PgStore(store_url).close()  # migrate once, before the threads race
    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted.values()) == cap
    assert column(store_url, "SELECT sent FROM warmup_sent") == [cap]


async def test_a_limit_recorded_by_one_worker_lowers_the_shared_cap_and_rate_of_another(
    store_url: str,
) -> None:
    """The data path without SMTP: worker A publishes a ``limit`` (2 sessions,
    1/s for 10 minutes); worker B, on its own connection, reads it on its
    next sync and hands out seats and tokens under it -- and a ``suspend``
    pauses the destination's seats for everyone before any sync."""
    from bulkmail.delivery.health import ShapingAction
    from bulkmail.protocol.replies import Reply
    from bulkmail.store.aio import AsyncStore
    from bulkmail.store.limiter import PgDestinationLimiter
    from bulkmail.store.shared_shaping import SharedShaping

    reply = Reply(451, ("4.7.650 The mail server has been temporarily rate limited",), "4.7.650")
    heard: list[tuple[ShapingAction, str]] = []
    a_store, b_store = await AsyncStore.open(store_url), await AsyncStore.open(store_url)
    try:
        a = SharedShaping(a_store, "worker-a")
        b = SharedShaping(b_store, "worker-b", on_remote=lambda act, who: heard.append((act, who)))
        await b.sync()
        a.publish(ShapingAction("limit", "mx:mx.outlook.test", reply, "outlook", 600.0, 600.0,
                                time.time() + 600, None, 2, 1.0))
        await a.flush()
        assert b.cap("mx:mx.outlook.test", 8) == 8  # not read yet
        await b.sync()
        [(action, who)] = heard
        assert (action.kind, action.connections, action.rate, who) == ("limit", 2, 1.0,
                                                                      "worker-a")
        assert 590 < action.duration <= 600 and str(action.reply) == str(reply)
        assert b.cap("mx:mx.outlook.test", 8) == 2 and b.rate("mx:mx.outlook.test", 5.0) == 1.0
        assert b.cap("mx:other.test", 8) == 8
        limiter = PgDestinationLimiter(b_store, "worker-b", 30.0, b)
        seats = [await limiter.acquire("mx:mx.outlook.test", 8) for _ in range(3)]
        assert seats[2] is None and None not in seats[:2]  # 2, not 8
        await b.sync()
        assert len(heard) == 1  # obeyed once, not at every sync

        a.publish(ShapingAction("suspend", "mx:mx.yahoo.test", reply, "tss04", 1800.0, 1800.0,
                                time.time() + 1800, None, None, None))
        await a.flush()
        assert await limiter.acquire("mx:mx.yahoo.test", 8) is None  # paused at once
        assert await limiter.paused("mx:mx.yahoo.test") > 1790
    finally:
        await a_store.aclose()
        await b_store.aclose()
