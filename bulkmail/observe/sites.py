"""Per-destination-site counters with a bounded set of labels.

A *site* is a pool's destination key (the MX set), so the thousands of
domains one provider hosts are one site.  Even so a list of 100,000 small
domains makes 100,000 sites; Prometheus must not get 100,000 series.  So at
each scrape the ``top`` sites by volume get their own label and the rest are
summed under ``other``: at most ``top + 1`` series per metric and label value.

Counters stay monotonic through promotions and demotions, and the series
always add up to the true totals:

- a site promoted to its own label at the first scrape that sees it shows
  all it counted; one promoted later, after ``other`` showed its counts,
  starts its series at zero (a new series, which ``rate()`` handles) and what
  it counted before stays in ``other``;
- a demoted site's series ends, and what it had counted under its own label
  moves into ``other`` (a counter may jump up, never down).

Labelled sites keep their place unless a rival has 25% more volume, so the
labels do not flap between scrapes.  Updates are one list add per counter
and a running total (no locks, no label lookups): the hooks call them per
transaction or per connection, never per recipient where it can be avoided.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from enum import IntEnum

#: the label of everything outside the top sites
OTHER = "other"
#: the site of recipients settled before routing (suppressed, invalid, no route)
NO_SITE = "none"
#: a labelled site keeps its label until a rival is this much bigger
HYSTERESIS = 1.25


class Slot(IntEnum):
    """The per-site counters (one flat list per site, indexed by these)."""

    DELIVERED = 0
    BOUNCED = 1
    DEFERRED = 2
    SUPPRESSED = 3
    IN_DOUBT = 4
    CONNECT_OK = 5
    CONNECT_REFUSED = 6
    CONNECT_TLS = 7
    CONNECT_AUTH = 8
    CONNECT_UNAVAILABLE = 9
    CONNECT_TIMEOUT = 10
    CONNECT_LOST = 11
    CONNECT_OTHER = 12
    TRANSACTIONS = 13
    MESSAGES = 14
    REPLY_2XX = 15
    REPLY_4XX = 16
    REPLY_5XX = 17
    DEFERRALS = 18
    THROTTLE_WAITS = 19
    THROTTLE_SECONDS = 20


SLOTS = len(Slot)
#: the slots whose sum is a site's settled volume
RESULT_SLOTS = (Slot.DELIVERED, Slot.BOUNCED, Slot.DEFERRED, Slot.SUPPRESSED, Slot.IN_DOUBT)


class Site:
    """One site's counters; ``base`` is what it had when it got its label."""

    __slots__ = ("base", "exposed", "key", "values")

    def __init__(self, key: str, width: int = SLOTS) -> None:
        self.key = key
        self.values = [0.0] * width
        self.base: list[float] | None = None
        #: a scrape has seen it (unlabelled, its counts were shown in ``other``)
        self.exposed = False

    @property
    def settled(self) -> float:
        values = self.values
        return sum(values[slot] for slot in RESULT_SLOTS)


class SiteTable:
    """Every site's counters, and which of them are labelled at this scrape."""

    def __init__(self, top: int, width: int = SLOTS) -> None:
        """``width``: counters per site, :data:`SLOTS` or more (the caller's own
        counters follow the :class:`Slot` ones)."""
        if top < 1:
            raise ValueError(f"top sites must be 1 or more, not {top}")
        self.top = top
        self.width = width
        self.sites: dict[str, Site] = {}
        #: the sum over every site, kept as counters are added
        self.totals = [0.0] * width
        self._labelled: set[Site] = set()
        #: ``other`` has been shown once: it stays (a counter series does not vanish)
        self._other_shown = False

    def site(self, key: str) -> Site:
        site = self.sites.get(key)
        if site is None:
            site = self.sites[key] = Site(key, self.width)
        return site

    def add(self, site: Site, slot: int, amount: float = 1) -> None:
        site.values[slot] += amount
        self.totals[slot] += amount

    def relabel(self, volume: dict[str, float]) -> None:
        """Choose this scrape's labelled sites: the top by ``volume`` (plus
        what each has settled), labelled ones favoured by ``HYSTERESIS``."""
        labelled = self._labelled

        def weight(site: Site) -> float:
            v = site.settled + volume.get(site.key, 0.0)
            return v * HYSTERESIS if site in labelled else v

        chosen = set(heapq.nlargest(self.top, self.sites.values(), key=weight))
        for site in labelled - chosen:
            site.base = None  # what it counted under its label is ``other``'s now
        for site in chosen - labelled:
            site.base = list(site.values) if site.exposed else [0.0] * self.width
        self._labelled = chosen
        if len(chosen) < len(self.sites):
            self._other_shown = True
            for site in self.sites.values():
                site.exposed = True

    def labelled(self) -> list[Site]:
        """The labelled sites, biggest first by what they settled (stable output)."""
        return sorted(self._labelled, key=lambda s: (-s.settled, s.key))

    def own(self, site: Site, slot: int) -> float:
        """What a labelled site shows for ``slot``: counted since it got its label."""
        base = site.base
        assert base is not None
        return site.values[slot] - base[slot]

    def other(self, slot: int) -> float:
        """What ``other`` shows: everything not shown under a site's own label."""
        own = sum(self.own(site, slot) for site in self._labelled)
        return self.totals[slot] - own

    def has_other(self) -> bool:
        return self._other_shown

    def label_of(self, key: str) -> str:
        site = self.sites.get(key)
        return key if site is not None and site in self._labelled else OTHER

    def gauge(self, values: Iterable[tuple[str, float]]) -> dict[str, float]:
        """Per-site gauge values summed under this scrape's labels."""
        out: dict[str, float] = {}
        for key, value in values:
            label = self.label_of(key)
            out[label] = out.get(label, 0.0) + value
        return out

    def counter(self, slot: int) -> list[tuple[str, float]]:
        """(label, value) for one counter slot, ``other`` last when it exists."""
        rows = [(site.key, self.own(site, slot)) for site in self.labelled()]
        if self.has_other():
            rows.append((OTHER, self.other(slot)))
        return rows
