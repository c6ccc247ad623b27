"""A run's Prometheus metrics: cheap hooks in, prometheus-client's exposition out.

The delivery code calls the hook methods of :class:`RunMetrics` (per
transaction, per connection attempt, per group of results; plain list adds,
no locks, no label lookups), and reads nothing back.  What is a *state* --
queued recipients, open connections, who waits for a retry, which
destination is paused -- is not counted at all: :meth:`RunMetrics.collect`
reads it from the engine at scrape time (:class:`EngineView`), so it costs
the run nothing between scrapes.

``RunMetrics`` is a prometheus-client *collector*: register it in a
``CollectorRegistry`` (:meth:`RunMetrics.registry`) and prometheus-client
writes the text or OpenMetrics exposition.  Collect in the run's trio thread
(:func:`bulkmail.observe.http.serve_metrics` does): a scrape reads the
engine's live structures and trio's clock, and nothing here takes a lock.  Every name is in
:data:`METRICS` (the README's list and the Grafana dashboard's test use it).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Protocol

from ..bounce_class import CLASSES, classify_reply
from ..errors import (
    SMTPAuthError,
    SMTPConnectError,
    SMTPConnectionLost,
    SMTPError,
    SMTPServerUnavailable,
    SMTPTimeout,
    SMTPTLSError,
)
from ..protocol.replies import Reply
from ..protocol.transaction import TransactionResult
from ..results import Status

if TYPE_CHECKING:
    # prometheus-client is imported when a registry is made or scraped, not when
    # a run starts: a run without --metrics does not pay its ~13 ms of imports
    from prometheus_client.core import Metric
    from prometheus_client.registry import CollectorRegistry
from .sites import NO_SITE, OTHER, Site, SiteTable, Slot

#: delivery latency buckets (seconds, enqueue -> final): a sink on loopback
#: settles in milliseconds, a greylisting MX in tens of minutes
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 14400)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

_RESULT_SLOT = {
    Status.DELIVERED: Slot.DELIVERED, Status.BOUNCED: Slot.BOUNCED,
    Status.DEFERRED: Slot.DEFERRED, Status.SUPPRESSED: Slot.SUPPRESSED,
    Status.IN_DOUBT: Slot.IN_DOUBT,
}
#: connection attempt results (a bounded label): the exception's kind
CONNECT_RESULTS = {
    "ok": Slot.CONNECT_OK, "refused": Slot.CONNECT_REFUSED, "tls": Slot.CONNECT_TLS,
    "auth": Slot.CONNECT_AUTH, "unavailable": Slot.CONNECT_UNAVAILABLE,
    "timeout": Slot.CONNECT_TIMEOUT, "lost": Slot.CONNECT_LOST, "other": Slot.CONNECT_OTHER,
}
_CONNECT_ERRORS: tuple[tuple[type[SMTPError], Slot], ...] = (
    (SMTPConnectError, Slot.CONNECT_REFUSED), (SMTPTLSError, Slot.CONNECT_TLS),
    (SMTPAuthError, Slot.CONNECT_AUTH), (SMTPServerUnavailable, Slot.CONNECT_UNAVAILABLE),
    (SMTPTimeout, Slot.CONNECT_TIMEOUT), (SMTPConnectionLost, Slot.CONNECT_LOST),
)
_QUEUED_AT = attrgetter("queued_at")
_REPLY_SLOT = (Slot.REPLY_2XX, Slot.REPLY_2XX, Slot.REPLY_2XX, Slot.REPLY_4XX, Slot.REPLY_5XX)

#: the bounce classes (``bulkmail.bounce_class``), each a counter after the Slot ones
BOUNCE_SLOTS = {name: len(Slot) + i for i, name in enumerate(CLASSES)}

#: every metric name in the exposition (as a scraper sees it) -> its help text
METRICS: dict[str, str] = {
    "bulkmail_recipients": "recipients now queued, in flight or waiting for a retry, per site",
    "bulkmail_results_total": "recipients settled, by result (delivered, bounced, deferred,"
                              " suppressed, in_doubt), per site",
    "bulkmail_bounces_total": "bounced recipients by bounce class (the reply's meaning),"
                              " per site",
    "bulkmail_deferrals_total": "temporary failures that scheduled a retry, per site",
    "bulkmail_connections": "SMTP connections open now, per site",
    "bulkmail_connection_attempts_total": "connection attempts by result, per site",
    "bulkmail_transactions_total": "mail transactions that reached the server, per site",
    "bulkmail_messages_sent_total": "transactions accepted for at least one recipient, per site",
    "bulkmail_replies_total": "recipients' replies by class (2xx, 4xx, 5xx), per site",
    "bulkmail_destination_paused": "1 while a site pauses new connections after failures"
                                   " (for 'other': how many of its sites are paused)",
    "bulkmail_destination_backoff_seconds": "seconds left of a site's pause",
    "bulkmail_destination_concurrency": "connections a site may open now (halved by backoff)",
    "bulkmail_throttle_waits_total": "times a start waited for a rate limit or a pause, per site",
    "bulkmail_throttle_wait_seconds_total": "seconds spent waiting for rate limits and pauses",
    "bulkmail_sites": "destination sites seen (at most the top N have their own label)",
    "bulkmail_delivery_latency_seconds": "enqueue to final result, by result",
    "bulkmail_journal_commit_seconds": "duration of one journal group commit",
    "bulkmail_journal_commit_batch_size": "recipients recorded by one journal group commit",
}


class EngineView(Protocol):
    """What a scrape reads from the delivery engine: its current state, per site."""

    def queued(self) -> Iterator[tuple[str, int]]: ...
    def in_flight(self) -> Iterator[tuple[str, int]]: ...
    def connections(self) -> Iterator[tuple[str, int]]: ...
    def retry_waiting(self) -> Iterator[tuple[str, int]]: ...
    #: (site, pause left in seconds, concurrency allowed now)
    def health(self) -> Iterator[tuple[str, float, int]]: ...


class Queued(Protocol):
    """A recipient as the engine holds it: when it was taken in."""

    @property
    def queued_at(self) -> float: ...


class Histogram:
    """A lock-free histogram (the trio thread is its only writer)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += count
        self.total += value * count

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


def connect_result(error: SMTPError | None) -> Slot:
    """A connection attempt's result label, from the error that ended it."""
    if error is None:
        return Slot.CONNECT_OK
    for kind, slot in _CONNECT_ERRORS:
        if isinstance(error, kind):
            return slot
    return Slot.CONNECT_OTHER


class SiteMetrics:
    """The hooks a pool calls for its site: per connection attempt, per
    transaction, per wait -- never per recipient."""

    __slots__ = ("_site", "_table")

    def __init__(self, table: SiteTable, site: Site) -> None:
        self._table = table
        self._site = site

    def connect(self, error: SMTPError | None) -> None:
        self._table.add(self._site, connect_result(error))

    def transaction(self, result: TransactionResult) -> None:
        """One transaction's replies: one per recipient, by class."""
        table, site = self._table, self._site
        replies = result.replies
        first = replies[0]
        # the common case, one reply for all: list.count compares identity
        # first, in C (a generator over 50 replies costs ten times as much)
        if first.code < 300 and replies.count(first) == len(replies):
            table.add(site, Slot.TRANSACTIONS)
            table.add(site, Slot.MESSAGES)
            table.add(site, Slot.REPLY_2XX, len(replies))
            return
        if result.attempted:
            table.add(site, Slot.TRANSACTIONS)
            if any(r.code < 300 for r in replies):
                table.add(site, Slot.MESSAGES)
        for reply in replies:
            table.add(site, _REPLY_SLOT[min(max(reply.code // 100, 2), 5) - 1])

    def throttled(self, seconds: float) -> None:
        """A start waited ``seconds`` for a rate limit or a pause."""
        self._table.add(self._site, Slot.THROTTLE_WAITS)
        self._table.add(self._site, Slot.THROTTLE_SECONDS, seconds)


class NoSiteMetrics(SiteMetrics):
    """A pool's hooks when nothing is measured: each a no-op (cheaper than a test
    at every call site, and the pool's code stays one path)."""

    __slots__ = ()

    def __init__(self) -> None:
        pass

    def connect(self, error: SMTPError | None) -> None:
        pass

    def transaction(self, result: TransactionResult) -> None:
        pass

    def throttled(self, seconds: float) -> None:
        pass


NOT_MEASURED = NoSiteMetrics()


class RunMetrics:
    """The counters of one process's run, and the collector that exposes them."""

    def __init__(self, top_sites: int = 20) -> None:
        self.sites = SiteTable(top_sites, len(Slot) + len(BOUNCE_SLOTS))
        self.none = self.sites.site(NO_SITE)
        self.view: EngineView | None = None
        self.latency = {status: Histogram(LATENCY_BUCKETS) for status in _RESULT_SLOT}
        self.commit_seconds = Histogram(COMMIT_BUCKETS)
        self.commit_batch = Histogram(BATCH_BUCKETS)

    def registry(self) -> CollectorRegistry:
        from prometheus_client.registry import CollectorRegistry

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return registry

    # -- hooks (called by the delivery code) ---------------------------------------

    def site(self, key: str) -> SiteMetrics:
        """The hooks of one site (a pool keeps its own: one lookup per pool)."""
        return SiteMetrics(self.sites, self.sites.site(key))

    def finished(self, key: str | None, status: Status, reply: Reply | None,
                 items: Sequence[Queued], now: float) -> None:
        """``items`` of site ``key`` (None: never routed) settled with ``status``
        and ``reply`` at ``now``: one group -- a transaction's recipients, or one."""
        self._count(self.none if key is None else self.sites.site(key), status, reply,
                    len(items))
        # items taken in together share a queued_at -- the same float object:
        # intake reads the clock per chunk -- so a transaction's recipients
        # usually share one, found in C (list.count compares identity first)
        histogram = self.latency[status]
        n = len(items)
        times = list(map(_QUEUED_AT, items)) if n > 1 else None
        if times is None or times.count(times[0]) == n:
            histogram.observe(now - items[0].queued_at, n)
            return
        # else one observation per run of equal times, not one per recipient
        then, run = 0.0, 0
        for queued in times:
            if queued != then:
                if run:
                    histogram.observe(now - then, run)
                then, run = queued, 0
            run += 1
        if run:
            histogram.observe(now - then, run)

    def settled(self, status: Status, reply: Reply | None, count: int = 1) -> None:
        """Results settled outside the engine (a line the command refused to
        read), so that the counts still add up to the run's report."""
        self._count(self.none, status, reply, count)

    def _count(self, site: Site, status: Status, reply: Reply | None, count: int) -> None:
        table = self.sites
        table.add(site, _RESULT_SLOT[status], count)
        if status is Status.BOUNCED:  # (classified once per distinct reply: cached)
            table.add(site, BOUNCE_SLOTS[classify_reply(reply) or "unclassified"], count)

    def deferral(self, key: str | None) -> None:
        """A temporary failure scheduled a retry."""
        table = self.sites
        table.add(self.none if key is None else table.site(key), Slot.DEFERRALS)

    def commit(self, seconds: float, recipients: int) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_batch.observe(recipients)

    # -- the collector (called by prometheus-client at a scrape) ------------------

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        view = self.view
        queued = dict(view.queued()) if view is not None else {}
        in_flight = dict(view.in_flight()) if view is not None else {}
        retry = dict(view.retry_waiting()) if view is not None else {}
        table = self.sites
        volume: dict[str, float] = {}
        for counts in (queued, in_flight, retry):
            for key, n in counts.items():
                volume[key] = volume.get(key, 0.0) + n
        table.relabel(volume)

        states = GaugeMetricFamily("bulkmail_recipients", METRICS["bulkmail_recipients"],
                                   labels=["site", "state"])
        for state, values in (
            ("queued", queued.items()),
            ("in_flight", in_flight.items()),
            ("retry_wait", retry.items()),
        ):
            for label, value in sorted(table.gauge(values).items()):
                states.add_metric([label, state], value)
        yield states

        yield self._counter("bulkmail_results", "result", {
            "delivered": Slot.DELIVERED, "bounced": Slot.BOUNCED, "deferred": Slot.DEFERRED,
            "suppressed": Slot.SUPPRESSED, "in_doubt": Slot.IN_DOUBT,
        })
        yield self._counter("bulkmail_bounces", "class", BOUNCE_SLOTS)
        yield self._counter("bulkmail_deferrals", None, {"": Slot.DEFERRALS})
        yield from self._connections(view)
        yield self._counter("bulkmail_connection_attempts", "result", CONNECT_RESULTS)
        yield self._counter("bulkmail_transactions", None, {"": Slot.TRANSACTIONS})
        yield self._counter("bulkmail_messages_sent", None, {"": Slot.MESSAGES})
        yield self._counter("bulkmail_replies", "class", {
            "2xx": Slot.REPLY_2XX, "4xx": Slot.REPLY_4XX, "5xx": Slot.REPLY_5XX,
        })
        yield from self._health(view)
        yield self._counter("bulkmail_throttle_waits", None, {"": Slot.THROTTLE_WAITS})
        yield self._counter("bulkmail_throttle_wait_seconds", None, {"": Slot.THROTTLE_SECONDS})
        yield GaugeMetricFamily("bulkmail_sites", METRICS["bulkmail_sites"],
                                value=len(table.sites) - (NO_SITE in table.sites))
        latency = HistogramMetricFamily(
            "bulkmail_delivery_latency_seconds", METRICS["bulkmail_delivery_latency_seconds"],
            labels=["result"],
        )
        for status, histogram in self.latency.items():
            latency.add_metric([status.value], histogram.buckets(), histogram.total)
        yield latency
        for name, histogram in (("bulkmail_journal_commit_seconds", self.commit_seconds),
                                ("bulkmail_journal_commit_batch_size", self.commit_batch)):
            yield HistogramMetricFamily(name, METRICS[name], buckets=histogram.buckets(),
                                        sum_value=histogram.total)

    def _counter(self, name: str, label: str | None, slots: Mapping[str, int]) -> Metric:
        from prometheus_client.core import (
            CounterMetricFamily,
        )

        family = CounterMetricFamily(
            name, METRICS[f"{name}_total"], labels=["site"] if label is None else ["site", label]
        )
        for value_label, slot in slots.items():
            for site, value in self.sites.counter(slot):
                family.add_metric([site] if label is None else [site, value_label], value)
        return family

    def _connections(self, view: EngineView | None) -> Iterator[Metric]:
        from prometheus_client.core import (
            GaugeMetricFamily,
        )

        family = GaugeMetricFamily("bulkmail_connections", METRICS["bulkmail_connections"],
                                   labels=["site"])
        if view is not None:
            for label, value in sorted(self.sites.gauge(view.connections()).items()):
                family.add_metric([label], value)
        yield family

    def _health(self, view: EngineView | None) -> Iterator[Metric]:
        from prometheus_client.core import (
            GaugeMetricFamily,
        )

        paused = GaugeMetricFamily("bulkmail_destination_paused",
                                   METRICS["bulkmail_destination_paused"], labels=["site"])
        backoff = GaugeMetricFamily("bulkmail_destination_backoff_seconds",
                                    METRICS["bulkmail_destination_backoff_seconds"],
                                    labels=["site"])
        concurrency = GaugeMetricFamily("bulkmail_destination_concurrency",
                                        METRICS["bulkmail_destination_concurrency"],
                                        labels=["site"])
        rows = list(view.health()) if view is not None else []
        table = self.sites
        for family, values in (
            (paused, ((key, 1.0 if left > 0 else 0.0) for key, left, _ in rows)),
            (backoff, ((key, left) for key, left, _ in rows if table.label_of(key) != OTHER)),
            (concurrency, ((key, n) for key, _, n in rows)),
        ):
            for label, value in sorted(table.gauge(values).items()):
                family.add_metric([label], value)
        yield paused
        yield backoff
        yield concurrency
