"""The long tail of domains (issue 22, phase 2): batching by domain or by
site, resolving through the router's prefetcher with no task per domain,
site limits chosen by host names, and per-domain state released after a run.
Everything runs against the sink and the loopback DNS server."""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import trio
import trio.testing

from bulkmail import MailerConfig
from bulkmail.api import Mailer
from bulkmail.delivery.domain_queue import DomainQueue
from bulkmail.delivery.job import Item
from bulkmail.message import Recipient
from bulkmail.routing import DNSConfig
from bulkmail.shaping import PoolLimits, Rule, Shaping
from bulkmail.sink import Sink, SinkConfig
from bulkmail.sink.stats import ReceivedMessage
from bulkmail.tls_policy.settings import TLSPolicyConfig

from .dnsserver import DNSServer

MESSAGE = b"From: news@sender.test\r\nSubject: tail\r\n\r\nHello.\r\n"
BULKMAIL = [sys.executable, "-m", "bulkmail"]


async def start_world(
    nursery: trio.Nursery, domains: list[str], mx: str = "mx.site.test"
) -> tuple[Sink, DNSServer]:
    sink = Sink(SinkConfig(record_messages=True))
    await nursery.start(sink.serve)
    dns = DNSServer()
    await nursery.start(dns.serve)
    dns.add(mx, "A", "127.0.0.1")
    for domain in domains:
        dns.add(domain, "MX", f"10 {mx}.")
    return sink, dns


def mx_config(
    sink: Sink, dns: DNSServer, policy: str = "opportunistic", **kwargs: Any
) -> MailerConfig:
    """MX delivery, by default without MTA-STS (the plain MXRouter); with
    ``policy="mta-sts"`` the PolicyRouter, whose prefetcher adds the TXT lookup."""
    return MailerConfig(
        dns=DNSConfig(nameservers=(("127.0.0.1", dns.port),), mx_port=sink.port),
        secure="none", tls_policy=TLSPolicyConfig(policy=policy),  # type: ignore[arg-type]
        **kwargs,
    )


class SpawnedTasks(trio.abc.Instrument):
    """Counts spawned tasks by the last two parts of their name."""

    def __init__(self) -> None:
        self.names: Counter[str] = Counter()

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.names[".".join(task.name.split(".")[-2:])] += 1


def domains_per_message(messages: list[ReceivedMessage]) -> Counter[int]:
    return Counter(len({r.rpartition("@")[2] for r in m.rcpts}) for m in messages)


async def send_two_domains(batch_by: str) -> list[ReceivedMessage]:
    recipients = [f"u{i}@{d}" for i in range(10) for d in ("a.test", "b.test")]
    async with trio.open_nursery() as nursery:
        sink, dns = await start_world(nursery, ["a.test", "b.test"])
        config = mx_config(sink, dns, batch_by=batch_by, linger=0.5)
        async with Mailer(config) as mailer:
            summary = await mailer.send("news@sender.test", MESSAGE, recipients)
        nursery.cancel_scope.cancel()
    assert summary.delivered == 20
    return sink.messages


async def test_batch_by_site_puts_two_domains_of_one_mx_set_in_one_transaction() -> None:
    messages = await send_two_domains("site")
    assert sorted(r for m in messages for r in m.rcpts) == sorted(
        f"u{i}@{d}" for i in range(10) for d in ("a.test", "b.test")
    )
    assert domains_per_message(messages)[2] >= 1  # a.test and b.test together


async def test_batch_by_domain_never_mixes_domains_in_a_transaction() -> None:
    messages = await send_two_domains("domain")
    assert sum(len(m.rcpts) for m in messages) == 20
    assert set(domains_per_message(messages)) == {1}
    assert len(messages) == 2  # still one full transaction per domain


async def test_site_batching_is_the_default_as_before_the_option() -> None:
    """Pools were keyed by MX host set before ``batch_by`` existed, so domains
    of one site already shared transactions: the default keeps that."""
    assert MailerConfig().batch_by == "site"
    assert MailerConfig().engine_config().batch_by == "site"


async def send_through_the_prefetcher(
    domains: list[str], per_domain: int, policy: str
) -> tuple[Any, Sink, DNSServer, SpawnedTasks]:
    """Send to ``per_domain`` recipients of each domain, counting trio's task
    spawns; asserts every domain went through the router's prefetcher.
    Returns the router first."""
    recipients = [f"u{i}@{d}" for d in domains for i in range(per_domain)]
    async with trio.open_nursery() as nursery:
        sink, dns = await start_world(nursery, domains)
        spawned = SpawnedTasks()
        trio.lowlevel.add_instrument(spawned)
        async with Mailer(mx_config(sink, dns, policy)) as mailer:
            engine = mailer.engine
            router = engine.router
            summary = await mailer.send("news@sender.test", MESSAGE, recipients)
            assert engine.prefetched == len(domains)
            assert engine.resolve_tasks == 0
        trio.lowlevel.remove_instrument(spawned)
        nursery.cancel_scope.cancel()
    assert summary.delivered == len(recipients)
    # trio's own count: no engine task per domain (the prefetcher's lookups
    # are the router's, bounded by its semaphore)
    assert spawned.names["Engine._resolve"] == 0
    return router, sink, dns, spawned


async def test_prefetch_path_delivers_everyone_with_no_task_per_domain() -> None:
    domains = [f"d{n}.test" for n in range(300)]
    router, sink, dns, spawned = await send_through_the_prefetcher(
        domains, 3, "opportunistic")
    assert sink.stats.recipients == 3 * len(domains)
    assert Counter(rdtype for _, rdtype, _ in dns.queries)["MX"] == len(domains)
    # all but the first window's worth (answered before the MX host's address
    # was cached) settled in the MX router's window, with no task of their own
    assert router.settled_in_window >= len(domains) - DNSConfig().max_queries // 2
    assert spawned.names["Engine._run_prefetcher"] == 1


async def test_mta_sts_plans_are_made_by_the_prefetcher_with_no_task_per_domain() -> None:
    """MTA-STS (the CLI's default) asks a TXT per domain: the policy router's
    prefetcher makes each plan, over the shared UDP socket, and reports it."""
    domains = [f"d{n}.test" for n in range(200)]
    router, _, dns, _ = await send_through_the_prefetcher(domains, 2, "mta-sts")
    txt = [(name, transport) for name, rdtype, transport in dns.queries if rdtype == "TXT"]
    assert sorted(txt) == sorted((f"_mta-sts.{d}", "udp") for d in domains)
    # the MX answers came through the inner router's window, once per domain
    assert Counter(rdtype for _, rdtype, _ in dns.queries)["MX"] == len(domains)
    assert router.inner.settled_in_window >= len(domains) - DNSConfig().max_queries // 2


async def test_routing_failures_reach_their_recipients_through_the_prefetcher() -> None:
    async with trio.open_nursery() as nursery:
        sink, dns = await start_world(nursery, ["good.test"])
        dns.add("nullmx.test", "MX", "0 .")
        async with Mailer(mx_config(sink, dns)) as mailer:
            summary = await mailer.send(
                "news@sender.test", MESSAGE,
                ["a@good.test", "b@nullmx.test", "c@nullmx.test", "d@nowhere.test"],
            )
            assert mailer.engine.resolve_tasks == 0
        nursery.cancel_scope.cancel()
    assert summary.delivered == 1 and summary.bounced == 3
    assert sink.stats.recipients == 1


async def test_state_of_finished_domains_is_released_after_the_run() -> None:
    domains = [f"d{n}.test" for n in range(200)]
    async with trio.open_nursery() as nursery:
        sink, dns = await start_world(nursery, domains)
        config = mx_config(sink, dns, limits=PoolLimits(idle_timeout=0.05))
        async with Mailer(config) as mailer:
            engine = mailer.engine
            summary = await mailer.send(
                "news@sender.test", MESSAGE, [f"u@{d}" for d in domains]
            )
            with trio.fail_after(10):
                while engine.pools:  # idle sessions leave after their idle timeout
                    await trio.sleep(0.05)
            assert len(engine._health) == 0  # healthy destinations are not remembered
            assert engine._resolving == {}
        nursery.cancel_scope.cancel()
    assert summary.delivered == len(domains)


async def test_a_domain_with_its_own_rule_gets_its_own_pool_and_the_site_keeps_its_limits(
) -> None:
    """ruled.test shares plain.test's MX but has a rule of one recipient per
    transaction.  It arrives first: the site's pool must still take the
    default limits (it took the first domain's before), and ruled.test's
    recipients go through a pool of their own under its rule."""
    recipients = [f"u{i}@ruled.test" for i in range(5)] + [f"u{i}@plain.test" for i in range(20)]
    shaping = Shaping(PoolLimits(), (Rule("ruled.test", PoolLimits(max_rcpts=1)),))
    pools: set[str] = set()
    async with trio.open_nursery() as nursery:
        sink, dns = await start_world(nursery, ["ruled.test", "plain.test"])
        async with Mailer(mx_config(sink, dns, shaping=shaping, linger=0.5)) as mailer:
            summary = await mailer.send(
                "news@sender.test", MESSAGE, recipients,
                on_result=lambda _: pools.update(mailer.engine.pools),
            )
        nursery.cancel_scope.cancel()
    assert summary.delivered == 25
    assert pools == {"mx:mx.site.test", "mx:mx.site.test|ruled.test"}
    by_domain: dict[str, list[int]] = {}
    for m in sink.messages:
        by_domain.setdefault(m.rcpts[0].rpartition("@")[2], []).append(len(m.rcpts))
    assert by_domain["ruled.test"] == [1] * 5
    assert by_domain["plain.test"] == [20]


async def test_site_limits_come_from_host_names_whatever_domain_comes_first() -> None:
    shaping = Shaping(PoolLimits(max_rcpts=7), (
        Rule("gmail.test", PoolLimits(connections=2)),
        Rule("*.site.test", PoolLimits(max_rcpts=3)),
    ))
    hosts = ["mx.site.test"]
    assert shaping.site_rule(hosts) is shaping.rules[1]
    assert shaping.own_rule("gmail.test", hosts) is shaping.rules[0]
    assert shaping.own_rule("other.test", hosts) is None  # the site's rule: no pool of its own


def item(domain: str, n: int = 0) -> Item:
    job: Any = object()
    return Item(Recipient(f"u{n}@{domain}"), job, domain=domain)


def test_domain_queue_takes_domains_in_turn_and_drops_empty_ones() -> None:
    queue = DomainQueue(run=2)
    for n in range(5):
        queue.append(item("big.test", n))
    queue.append(item("small.test"))
    order = [queue.popleft().domain for _ in range(4)]
    assert order == ["big.test", "big.test", "small.test", "big.test"]
    assert queue.domains == 1 and len(queue) == 2  # small.test's deque is gone
    front = item("again.test")
    queue.appendleft(front)
    assert queue[0] is front and queue.popleft() is front
    assert queue.domains == 1
    assert [i.domain for i in queue.take()] == ["big.test", "big.test"]
    assert not queue and queue.domains == 0


async def test_cli_batch_by_site_shares_transactions_across_domains(tmp_path: Path) -> None:
    rcpts = tmp_path / "rcpts.txt"
    rcpts.write_text("".join(f"u{i}@d{i % 4}.test\n" for i in range(40)))
    message = tmp_path / "msg.eml"
    message.write_text("From: news@sender.test\nSubject: tail\n\nHello.\n")
    results = {}
    for batch_by in ("site", "domain"):
        async with trio.open_nursery() as nursery:
            sink, dns = await start_world(nursery, [f"d{n}.test" for n in range(4)])
            proc = await trio.run_process(
                [*BULKMAIL, "send", "--sender", "news@sender.test", "--recipients", str(rcpts),
                 "--message", str(message), "--tls", "none", "--quiet", "--no-journal",
                 "--batch-by", batch_by,
                 "--dns-server", f"127.0.0.1:{dns.port}", "--mx-port", str(sink.port)],
                cwd=tmp_path, capture_stdout=True, capture_stderr=True, check=False,
            )
            nursery.cancel_scope.cancel()
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        assert sink.stats.recipients == 40
        results[batch_by] = domains_per_message(sink.messages)
    assert max(results["site"]) > 1
    assert set(results["domain"]) == {1}


async def test_intake_resolves_domains_ahead_of_admission() -> None:
    """With room for 10 recipients, intake reads further and prefetches their
    domains: most recipients find their route cached when admitted (the
    engine's dispatch-time prefetch count stays far below one per domain)."""
    domains = [f"d{n}.test" for n in range(200)]
    async with trio.open_nursery() as nursery:
        sink, dns = await start_world(nursery, domains)
        async with Mailer(mx_config(sink, dns, max_pending=10)) as mailer:
            summary = await mailer.send(
                "news@sender.test", MESSAGE, [f"u@{d}" for d in domains]
            )
            assert mailer.engine.prefetched + mailer.engine.resolve_tasks < 100
        nursery.cancel_scope.cancel()
    assert summary.delivered == len(domains)
    assert Counter(rdtype for _, rdtype, _ in dns.queries)["MX"] == len(domains)


async def test_by_domain_a_session_counts_transactions_not_recipients() -> None:
    """100 one-recipient domains at one site, 10 messages per connection: a
    take by domain is 100 transactions' worth of items, and must still end
    each session after 10 of them."""
    domains = [f"d{n}.test" for n in range(100)]
    limits = PoolLimits(connections=1, messages_per_connection=10)
    async with trio.open_nursery() as nursery:
        sink, dns = await start_world(nursery, domains)
        config = mx_config(sink, dns, limits=limits, linger=0.5, batch_by="domain")
        async with Mailer(config) as mailer:
            for domain in domains:  # routes cached: all 100 reach the pool at once
                await mailer.engine.router.route(domain)
            summary = await mailer.send(
                "news@sender.test", MESSAGE, [f"u@{d}" for d in domains]
            )
        nursery.cancel_scope.cancel()
    assert summary.delivered == 100
    assert sink.stats.messages == 100
    assert sink.stats.sessions >= 10


async def test_by_site_transactions_fill_while_domains_still_resolve() -> None:
    """The whole list is read at once, but its 400 domains resolve over time:
    until the last route is in, a pool waits for full transactions (or the
    linger), rather than sending a small one per DNS answer."""
    domains = [f"d{n}.test" for n in range(400)]
    async with trio.open_nursery() as nursery:
        sink, dns = await start_world(nursery, domains)
        config = mx_config(sink, dns, batch_by="site", linger=60.0)  # 50 per transaction
        async with Mailer(config) as mailer:
            summary = await mailer.send(
                "news@sender.test", MESSAGE, [f"u@{d}" for d in domains])
        nursery.cancel_scope.cancel()
    assert summary.delivered == 400
    assert sorted(len(m.rcpts) for m in sink.messages) == [50] * 8


async def test_a_site_pool_lingers_longer_while_routes_are_coming_in(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """d1's first MX answer is lost (sent again after 1 s): while it is
    outstanding, d0's recipients at the same site wait 4 x the 0.4 s linger
    for company, so both domains share one transaction; by domain they may
    not share one, and d0's recipients go after the plain linger."""
    for batch_by, expected in (("site", [20]), ("domain", [10, 10])):
        async with trio.open_nursery() as nursery:
            sink, dns = await start_world(nursery, ["d0.test", "d1.test"])
            dns.drop("d1.test", 1)
            config = mx_config(sink, dns, batch_by=batch_by, linger=0.4)
            config = dataclasses.replace(
                config, dns=dataclasses.replace(config.dns, timeout=1.0))
            async with Mailer(config) as mailer:
                start = trio.current_time()
                summary = await mailer.send(
                    "news@sender.test", MESSAGE,
                    [f"u{n}@d{n % 2}.test" for n in range(20)])
            nursery.cancel_scope.cancel()
        assert summary.delivered == 20
        assert sorted(len(m.rcpts) for m in sink.messages) == expected, batch_by
        # and once the last route is in (1 s) they go: not at 4 x 0.4 s
        assert trio.current_time() - start < 1.3
