"""MX hosts' addresses, cached by host name.

A hundred thousand domains hosted by twenty providers name the same few MX
hosts: each host's A and AAAA are looked up once per TTL, not per domain,
so a domain costs one MX query; concurrent lookups of one host share one.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import trio

from .dns_lookup import DNSLookup, Records, RoutingError
from .protocol.replies import Reply
from .ttl_cache import CoalescingCache

#: each host's addresses (or why it has none) and how long they may be used
Found = dict[str, tuple[tuple[str, ...] | RoutingError, float]]


def order_addresses(addresses: Iterable[str]) -> tuple[str, ...]:
    """Deduplicated, IPv4 before IPv6 (many senders lack working IPv6 reputation)."""
    unique = dict.fromkeys(addresses)
    return tuple(sorted(unique, key=lambda a: ":" in a))


class HostAddresses:
    """Addresses of MX hosts: from the cache, or A and AAAA looked up at once."""

    def __init__(self, dns: DNSLookup, cache_size: int) -> None:
        self.dns = dns
        self._cache: CoalescingCache[str, tuple[str, ...] | Reply] = CoalescingCache(cache_size)

    def cached(self, names: list[str]) -> Found | None:
        """The hosts' addresses if the cache has them all, else None (no await:
        the resolve-ahead loop settles a domain on the spot with them)."""
        found: Found = {}
        cache = self._cache
        now = trio.current_time()
        for name in names:
            addresses = cache.get(name)
            if addresses is None or isinstance(addresses, Reply):
                return None  # a failed host is not cached: looked up again
            found[name] = (addresses, max(0.0, cache.expires(name) - now))
        return found

    async def lookup(self, names: list[str]) -> Found:
        """The hosts' addresses, from the cache or looked up all at once."""
        found: Found = {}
        now = trio.current_time()

        async def one(name: str) -> None:
            outcome = await self._cache.fetch(name, functools.partial(self._lookup, name))
            if isinstance(outcome, Reply):
                found[name] = (RoutingError(outcome), 0.0)
            else:
                found[name] = (outcome, max(0.0, self._cache.expires(name) - now))

        if len(names) == 1:
            await one(names[0])
        else:
            async with trio.open_nursery() as nursery:
                for name in names:
                    nursery.start_soon(one, name)
        return {name: found[name] for name in names}

    async def _lookup(self, name: str) -> tuple[tuple[str, ...] | Reply, float]:
        addresses, ttl = await self.addresses(name)
        if isinstance(addresses, RoutingError):
            return addresses.reply, 0.0  # a failed host is not remembered
        return addresses, ttl

    async def addresses(self, name: str) -> tuple[tuple[str, ...] | RoutingError, float]:
        """A and AAAA of ``name`` at once (no cache); a failure is returned, not raised."""
        results: dict[str, Records | RoutingError] = {}

        async def one(rdtype: str) -> None:
            try:
                results[rdtype] = await self.dns.query(name, rdtype)
            except RoutingError as exc:
                results[rdtype] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "A")
            nursery.start_soon(one, "AAAA")
        v4, v6 = results["A"], results["AAAA"]
        good = [r for r in (v4, v6) if isinstance(r, Records)]
        addresses = order_addresses(address for r in good for address in r.rdata)
        ttl = min((r.ttl for r in good), default=0.0)
        if not addresses and len(good) < 2:
            bad = v4 if isinstance(v4, RoutingError) else v6
            assert isinstance(bad, RoutingError)
            return bad, 0.0
        return addresses, ttl
