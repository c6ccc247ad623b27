"""``--metrics``: the Prometheus exposition of a real run, scraped over HTTP
from the trio endpoint and parsed with prometheus-client's own parser."""

from __future__ import annotations

import socket
from collections import defaultdict
from collections.abc import Iterator
from itertools import pairwise

import trio
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from bulkmail.api import Mailer, MailerConfig, Relay
from bulkmail.delivery.retry import RetryPolicy
from bulkmail.errors import synthetic_reply
from bulkmail.observe import METRICS, RunMetrics
from bulkmail.observe.http import answer, serve_metrics
from bulkmail.observe.sites import OTHER
from bulkmail.results import Status
from bulkmail.routing import DNSConfig
from bulkmail.shaping import PoolLimits

from .dnsserver import DNSServer
from .sinkutil import start_sink

MESSAGE = b"From: news@sender.test\r\nSubject: metrics\r\n\r\nHello.\r\n"

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    """Every sample by its name (``_total``, ``_bucket``... included)."""
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(value for got, value in samples[name]
               if all(got.get(k) == v for k, v in labels.items()))


async def scrape(port: int, accept: str = "") -> tuple[str, str]:
    """(content type, body) of GET /metrics, over a real socket."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        head = f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\n\r\n"
        await stream.send_all(head.encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    header, _, body = data.partition(b"\r\n\r\n")
    lines = header.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK", lines[0]
    content_type = next(line.split(":", 1)[1].strip() for line in lines
                        if line.lower().startswith("content-type:"))
    return content_type, body.decode()


async def test_scraped_counts_match_the_final_report_exactly() -> None:
    recipients = [f"user{i}@dest.test" for i in range(300)]
    suppressed = {recipients[0], recipients[1]}
    metrics = RunMetrics(top_sites=5)
    scrapes: list[Samples] = []
    async with trio.open_nursery() as nursery:
        # some bounce, some are deferred and retried (and end deferred or delivered)
        sink = await start_sink(nursery, reject_rate=0.1, defer_rate=0.1, seed=7, latency=0.01)
        port = await nursery.start(serve_metrics, metrics.registry(), "127.0.0.1", 0)
        config = MailerConfig(
            relay=Relay("127.0.0.1", sink.port), secure="none",
            limits=PoolLimits(connections=3, max_rcpts=10), metrics=metrics,
            retry=RetryPolicy(first_delay=0.05, jitter=0), retry_for=0.3,
        )

        async def scrape_while_running(done: trio.Event) -> None:
            while not done.is_set():
                scrapes.append(parse((await scrape(port[1]))[1]))
                await trio.sleep(0.02)

        done = trio.Event()
        async with Mailer(config) as mailer:
            nursery.start_soon(scrape_while_running, done)
            summary = await mailer.send(
                "news@sender.test", MESSAGE, recipients,
                presettle=lambda r: (Status.SUPPRESSED, None, 0)
                if r.address in suppressed else None,
            )
            done.set()
            final = parse((await scrape(port[1]))[1])
        nursery.cancel_scope.cancel()
    assert scrapes, "nothing was scraped during the run"
    assert any(total(s, "bulkmail_recipients", state="queued")
               + total(s, "bulkmail_recipients", state="in_flight") for s in scrapes)
    assert summary.bounced and summary.delivered and summary.suppressed == 2
    for result in ("delivered", "bounced", "deferred", "suppressed", "in_doubt"):
        assert total(final, "bulkmail_results_total", result=result) == getattr(summary, result)
    assert total(final, "bulkmail_results_total", site="none") == 2  # never routed
    assert total(final, "bulkmail_messages_sent_total") == sink.stats.messages
    assert total(final, "bulkmail_connection_attempts_total", result="ok") >= 1
    assert total(final, "bulkmail_deferrals_total") >= 1
    assert total(final, "bulkmail_replies_total", **{"class": "5xx"}) >= summary.bounced
    # the sink's "550 5.1.1": every bounce is an invalid recipient
    assert total(final, "bulkmail_bounces_total") == summary.bounced
    assert total(final, "bulkmail_bounces_total", **{"class": "invalid-recipient"}) == \
        summary.bounced
    latency = total(final, "bulkmail_delivery_latency_seconds_count")
    assert latency == summary.total
    # nothing is left to send once the run is over; idle sessions stay open for reuse
    assert total(final, "bulkmail_recipients") == 0
    assert 1 <= total(final, "bulkmail_connections") <= 3
    # counters never go down between scrapes
    series = [*scrapes, final]
    for earlier, later in pairwise(series):
        assert total(later, "bulkmail_results_total") >= total(earlier, "bulkmail_results_total")


async def test_the_endpoint_speaks_openmetrics_when_asked() -> None:
    metrics = RunMetrics()
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(serve_metrics, metrics.registry(), "127.0.0.1", 0)
        content_type, body = await scrape(port, accept="application/openmetrics-text")
        nursery.cancel_scope.cancel()
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


async def test_the_registry_is_made_at_the_first_scrape() -> None:
    """``--metrics`` passes ``RunMetrics.registry`` itself: prometheus-client is
    imported (in a thread) and the registry made once, when first scraped."""
    metrics = RunMetrics()
    made: list[CollectorRegistry] = []

    def registry() -> CollectorRegistry:
        made.append(metrics.registry())
        return made[-1]

    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(serve_metrics, registry, "127.0.0.1", 0)
        assert made == []
        bodies: list[str] = []

        async def one() -> None:
            bodies.append((await scrape(port))[1])

        async with trio.open_nursery() as scrapes:
            for _ in range(3):
                scrapes.start_soon(one)
        nursery.cancel_scope.cancel()
    assert len(made) == 1 and len(bodies) == 3
    assert all("bulkmail_results_total" in body for body in bodies)


def test_the_endpoint_answers_only_get_metrics() -> None:
    registry = RunMetrics().registry()
    assert answer(registry, b"GET /other HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert answer(registry, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert answer(registry, b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400")
    head = answer(registry, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")


async def test_many_sites_make_at_most_n_plus_one_series() -> None:
    """A real run over MX routing: 40 domains, each its own MX host (site), top 3."""
    domains = [f"d{i}.test" for i in range(40)]
    dns_server = DNSServer()
    for domain in domains:
        dns_server.add(domain, "MX", f"10 mx.{domain}.")
        dns_server.add(f"mx.{domain}", "A", "127.0.0.1")
    # volumes differ, so the top three are d0, d1, d2
    recipients = [f"u{n}@{d}" for i, d in enumerate(domains) for n in range(max(1, 12 - i))]
    metrics = RunMetrics(top_sites=3)
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        dns_port = await nursery.start(dns_server.serve)
        config = MailerConfig(
            dns=DNSConfig(nameservers=(("127.0.0.1", dns_port),), mx_port=sink.port),
            secure="none", metrics=metrics,
        )
        async with Mailer(config) as mailer:
            summary = await mailer.send("news@sender.test", MESSAGE, recipients)
            samples = parse(generate_latest(metrics.registry()).decode())
        nursery.cancel_scope.cancel()
    assert summary.delivered == len(recipients)
    sites = {labels["site"] for labels, _ in samples["bulkmail_results_total"]}
    assert sites == {"mx:mx.d0.test", "mx:mx.d1.test", "mx:mx.d2.test", OTHER}
    assert total(samples, "bulkmail_results_total") == len(recipients)
    assert total(samples, "bulkmail_sites") == 40
    for name, rows in samples.items():
        per_labels: dict[tuple[tuple[str, str], ...], int] = defaultdict(int)
        for labels, _ in rows:
            per_labels[tuple(sorted((k, v) for k, v in labels.items() if k != "site"))] += 1
        assert max(per_labels.values()) <= 4, name


class ManySites:
    """What a scrape reads from an engine with a pool per site: every site has
    recipients queued and in flight, a connection, and a health entry."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    def queued(self) -> Iterator[tuple[str, int]]:
        return ((key, 2) for key in self.keys)

    def in_flight(self) -> Iterator[tuple[str, int]]:
        return ((key, 1) for key in self.keys)

    def connections(self) -> Iterator[tuple[str, int]]:
        return ((key, 1) for key in self.keys)

    def retry_waiting(self) -> Iterator[tuple[str, int]]:
        return ((key, 1) for key in self.keys[::2])

    def health(self) -> Iterator[tuple[str, float, int]]:
        return ((key, 5.0 if i % 3 == 0 else 0.0, 4) for i, key in enumerate(self.keys))


async def test_a_hundred_thousand_sites_stay_bounded() -> None:
    """The counting side at full scale (no network): 100,000 domains, each its
    own site, top 20 -- every series of every metric, counters and gauges, has
    at most 21 site labels per value of its other labels, and the sums hold."""
    metrics = RunMetrics(top_sites=20)
    keys = [f"mx:mx{i}.d{i}.example" for i in range(100_000)]
    metrics.view = ManySites(keys)
    for i, key in enumerate(keys):
        site = metrics.site(key)
        for _ in range(1 + (i % 7 == 0)):
            site.connect(None)
        metrics.deferral(key)
        metrics.finished(key, Status.DELIVERED, None, [Queued()] * (1 + i % 3), 1.0)
    samples = parse(generate_latest(metrics.registry()).decode())
    attempts = samples["bulkmail_connection_attempts_total"]
    ok = [labels["site"] for labels, _ in attempts if labels["result"] == "ok"]
    assert len(ok) == 21 and ok[-1] == OTHER
    assert total(samples, "bulkmail_connection_attempts_total") == 100_000 + 14_286
    assert len(samples["bulkmail_deferrals_total"]) == 21
    assert total(samples, "bulkmail_deferrals_total") == 100_000
    assert total(samples, "bulkmail_results_total") == sum(1 + i % 3 for i in range(100_000))
    assert total(samples, "bulkmail_recipients", state="queued") == 200_000
    assert total(samples, "bulkmail_connections") == 100_000
    assert total(samples, "bulkmail_destination_paused") == 33_334
    assert total(samples, "bulkmail_sites") == 100_000
    for name, rows in samples.items():
        sites: dict[tuple[tuple[str, str], ...], set[str]] = defaultdict(set)
        for labels, _ in rows:
            if "site" in labels:
                rest = tuple(sorted((k, v) for k, v in labels.items() if k != "site"))
                sites[rest].add(labels["site"])
        assert all(len(s) <= 21 for s in sites.values()), name


def test_labels_follow_volume_and_counters_stay_monotonic() -> None:
    """Top 1: the bigger site takes the label; no series ever goes down and
    the series always add up to the true total."""
    metrics = RunMetrics(top_sites=1)
    name = "bulkmail_results_total"

    def delivered(site: str, n: int) -> None:
        metrics.finished(site, Status.DELIVERED, None, [Queued()] * n, 1.0)

    def scrape_now() -> dict[str, float]:
        samples = parse(generate_latest(metrics.registry()).decode())
        return {labels["site"]: value for labels, value in samples[name]
                if labels["result"] == "delivered"}

    delivered("small", 1)
    metrics.site("big")
    first = scrape_now()
    assert first == {"small": 1, OTHER: 0}
    delivered("big", 5)
    second = scrape_now()
    assert set(second) == {"big", OTHER}  # big took the label, small is "other" now
    assert sum(second.values()) == 6 and second[OTHER] >= first[OTHER]
    delivered("big", 2)
    delivered("small", 1)
    third = scrape_now()
    assert third == {"big": second["big"] + 2, OTHER: second[OTHER] + 1}


class Queued:
    queued_at = 0.0


async def test_a_paused_destination_shows_as_paused() -> None:
    with socket.socket() as closed:  # a port nobody listens on: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    metrics = RunMetrics()
    async with trio.open_nursery() as nursery:
        config = MailerConfig(relay=Relay("127.0.0.1", port), secure="none", metrics=metrics)
        async with Mailer(config) as mailer:
            nursery.start_soon(mailer.send, "news@sender.test", MESSAGE, ["a@dest.test"])
            samples = parse("")
            with trio.fail_after(10):
                while not total(samples, "bulkmail_connection_attempts_total"):
                    await trio.sleep(0.01)
                    samples = parse(generate_latest(metrics.registry()).decode())
            mailer.stop()
        nursery.cancel_scope.cancel()
    site = f"relay:127.0.0.1:{port}"
    assert total(samples, "bulkmail_connection_attempts_total", result="refused") == 1
    assert total(samples, "bulkmail_destination_paused", site=site) == 1
    assert 0 < total(samples, "bulkmail_destination_backoff_seconds", site=site) <= 1
    assert total(samples, "bulkmail_destination_concurrency", site=site) < 20
    assert total(samples, "bulkmail_recipients", state="retry_wait") == 1


class At:
    def __init__(self, queued_at: float) -> None:
        self.queued_at = queued_at


def test_latency_is_per_recipient_when_a_transaction_mixes_arrival_times() -> None:
    """A retried recipient shares a transaction with newer ones: each recipient's
    own wait is observed, the shared-time shortcut notwithstanding."""
    metrics = RunMetrics()
    new = At(99.0)
    metrics.finished("s", Status.DELIVERED, None, [new, At(0.0), new, new], 100.0)
    metrics.finished("s", Status.DELIVERED, None, [new] * 3, 100.0)
    samples = parse(generate_latest(metrics.registry()).decode())
    buckets = {labels["le"]: value for labels, value in
               samples["bulkmail_delivery_latency_seconds_bucket"]
               if labels["result"] == "delivered"}
    assert buckets["1.0"] == 6 and buckets["60.0"] == 6 and buckets["300.0"] == 7
    assert total(samples, "bulkmail_delivery_latency_seconds_sum",
                 result="delivered") == 6 * 1.0 + 100.0


def test_every_exposed_name_is_listed() -> None:
    names = {family.name for family in text_string_to_metric_families(
        generate_latest(RunMetrics().registry()).decode())}
    listed = {name.removesuffix("_total") for name in METRICS}
    assert names == listed


def test_results_settled_outside_the_engine_are_counted() -> None:
    """A line ``send`` refused to read is in its report: so it is in the metrics."""
    metrics = RunMetrics()
    metrics.settled(Status.BOUNCED, synthetic_reply(553, "5.1.3", "not UTF-8"))
    samples = parse(generate_latest(metrics.registry()).decode())
    assert total(samples, "bulkmail_results_total", site="none", result="bounced") == 1
    assert total(samples, "bulkmail_bounces_total", site="none") == 1
