"""Where a recipient's mail goes: one relay, or the domain's MX hosts.

Routing failures carry a synthesised SMTP :class:`Reply` so the policy treats
"the DNS said no" exactly like "the server said no": the code alone decides
bounce (5xx) or defer (4xx).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import trio

from .dns_lookup import DNSConfig, DNSLookup, Records, RoutingError, routing_error
from .errors import synthetic_reply
from .prefetch import PrefetchQueue
from .protocol.replies import Reply
from .ttl_cache import CoalescingCache

__all__ = [
    "DNSConfig", "Destination", "Host", "MXRouter", "RelayRouter", "Router", "RoutingError",
    "domain_of",
]


@dataclass(frozen=True, slots=True)
class Host:
    """One server to connect to; ``addresses`` are tried in order (IPv4 first)."""

    name: str
    addresses: tuple[str, ...]
    port: int
    preference: int = 0


@dataclass(frozen=True, slots=True)
class Destination:
    """A pool's worth of servers.

    ``key`` names the site: for MX routing it is the *set* of MX host names
    (sorted, lower case), so the thousands of domains one provider hosts share
    one key whatever their preferences; ``mx:<domain>`` for a domain that is
    its own implicit MX, ``literal:<ip>`` and ``relay:<host>:<port>`` otherwise.
    """

    key: str
    hosts: tuple[Host, ...]


class Router(Protocol):
    #: whether ``prefetch`` ever queues anything: intake reads ahead of
    #: admission only for a router that resolves domains ahead
    prefetches: bool

    async def route(self, domain: str) -> Destination: ...

    def peek(self, domain: str) -> Destination | None:
        """The cached destination, without awaiting (the engine's per-recipient fast path)."""
        ...

    def prefetch(self, domain: str) -> bool:
        """Queue ``domain`` to be resolved ahead of need (never waits).  True:
        the prefetcher will resolve it and report it to ``on_resolved``; False:
        nothing queued (cached -- use ``peek`` -- or the queue is full)."""
        ...

    async def run_prefetcher(self, on_resolved: Resolved | None = None) -> None:
        """Work the prefetch queue until cancelled (run it in the engine's nursery)."""
        ...


#: told each prefetched domain's outcome: its Destination, or the RoutingError
Resolved = Callable[[str, "Destination | RoutingError"], None]


def domain_of(address: str) -> str:
    """The canonical (lower-case, IDNA A-label) domain of ``address``, a cache key."""
    _local, at, domain = address.rpartition("@")
    if not at or not domain:
        raise ValueError(f"no domain in {address!r}")
    domain = domain.lower().rstrip(".")
    if not domain.isascii():
        domain = domain.encode("idna").decode("ascii")  # UnicodeError is a ValueError
    return domain


def _literal(domain: str) -> str | None:
    """The IP of an address literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``), else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    text = domain[1:-1]
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _is_ip(text: str) -> bool:
    if ":" not in text and not _IPV4_CHARS.issuperset(text):
        return False  # a host name (asked per MX host: no exception raised for it)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_IPV4_CHARS = frozenset("0123456789.")


def _order(addresses: Iterable[str]) -> tuple[str, ...]:
    """Deduplicated, IPv4 before IPv6 (many senders lack working IPv6 reputation)."""
    unique = dict.fromkeys(addresses)
    return tuple(sorted(unique, key=lambda a: ":" in a))


#: how long a relay's resolved addresses (or failure to resolve) are reused:
#: getaddrinfo gives no TTL
RELAY_ADDRESS_TTL = 300.0
RELAY_FAILURE_TTL = 30.0


class RelayRouter:
    """Every domain goes to one smarthost; a host name is resolved lazily."""

    prefetches = False  # one destination for every domain: nothing to resolve ahead

    def __init__(self, host: str, port: int = 25) -> None:
        self.host = host
        self.port = port
        self.key = f"relay:{host}:{port}"
        self._outcome: Destination | Reply | None = None
        self._expires = -math.inf
        if _is_ip(host):
            self._outcome = Destination(self.key, (Host(host, (host,), port),))
            self._expires = math.inf
        self._lock = trio.Lock()

    async def route(self, domain: str) -> Destination:
        async with self._lock:  # a burst of domains resolves the relay once
            if self._outcome is None or trio.current_time() >= self._expires:
                self._outcome = outcome = await self._resolve()
                ok = isinstance(outcome, Destination)
                self._expires = trio.current_time() + (
                    RELAY_ADDRESS_TTL if ok else RELAY_FAILURE_TTL
                )
            return _unwrap(self._outcome)

    def peek(self, domain: str) -> Destination | None:
        outcome, expires = self._outcome, self._expires
        # asked once per recipient: an IP relay never expires, so no clock read
        if isinstance(outcome, Destination) and (
            expires == math.inf or trio.current_time() < expires
        ):
            return outcome
        return None

    def prefetch(self, domain: str) -> bool:
        return False  # one smarthost: nothing per domain to resolve ahead

    async def run_prefetcher(self, on_resolved: Resolved | None = None) -> None:
        await trio.sleep_forever()

    async def _resolve(self) -> Destination | Reply:
        try:
            infos = await trio.socket.getaddrinfo(
                self.host, self.port, type=trio.socket.SOCK_STREAM
            )
        except OSError as exc:
            return synthetic_reply(451, "4.4.3", f"cannot resolve relay {self.host}: {exc}")
        addresses = _order(str(info[4][0]) for info in infos)
        if not addresses:
            return synthetic_reply(451, "4.4.4", f"relay {self.host} has no address")
        return Destination(self.key, (Host(self.host, addresses, self.port),))


class MXRouter:
    """Direct delivery: MX hosts by preference (RFC 5321 §5.1), null MX (RFC 7505).

    Outcomes (failures too) are cached for their TTL on the trio clock, and
    concurrent lookups of one domain share one query: thousands of a domain's
    recipients arrive at once.  MX hosts' addresses are cached by host name,
    so the many domains one provider hosts cost one MX query each, not three,
    and share one interned :class:`Destination`.
    """

    prefetches = True

    def __init__(self, config: DNSConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng if rng is not None else random.Random()
        self.dns = DNSLookup(config)
        self._routes: CoalescingCache[str, Destination | Reply] = CoalescingCache(
            config.cache_size
        )
        self._hosts: CoalescingCache[str, tuple[str, ...] | Reply] = CoalescingCache(
            config.host_cache_size
        )
        # one Destination per (key, hosts): 100,000 domains at one provider
        # hold references, not copies
        self._interned: dict[tuple[str, tuple[Host, ...]], Destination] = {}
        self._ahead: PrefetchQueue[Destination | RoutingError] = PrefetchQueue(
            config.prefetch_queue
        )

    async def route(self, domain: str) -> Destination:
        domain = _canonical(domain)
        return _unwrap(await self._routes.fetch(domain, functools.partial(self._outcome, domain)))

    def peek(self, domain: str) -> Destination | None:
        outcome = self._routes.get(_canonical(domain))
        return outcome if isinstance(outcome, Destination) else None

    # -- resolving ahead ---------------------------------------------------------

    def prefetch(self, domain: str) -> bool:
        """Queue ``domain`` to be resolved by :meth:`run_prefetcher` (never waits).

        True when the prefetcher will resolve it (queued now, earlier, or
        being resolved by it) and report it to ``on_resolved``; False when it
        is cached (``peek`` has it), the queue is full, or a ``route()`` call
        is resolving it -- the caller awaits ``route()`` then.  The engine
        feeds the domains of recipients it will send to soon, so their lookups
        overlap delivery to the current ones, with no task per domain.
        """
        domain = _canonical(domain)
        if domain in self._ahead:
            return True
        if self._routes.busy(domain) or self._routes.get(domain) is not None:
            return False
        return self._ahead.add(domain)

    async def run_prefetcher(self, on_resolved: Resolved | None = None) -> None:
        """Resolve prefetched domains, half of ``max_queries`` of them at a time
        (so lookups somebody waits for get the other half), until cancelled;
        each outcome goes to ``on_resolved(domain, Destination | RoutingError)``.

        It also keeps the resolver's shared UDP sockets open meanwhile (its
        receiver task lives in this nursery, so in the engine's), for every
        lookup, prefetched or not."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.dns.serve)
            await self._ahead.run(
                self.route, self.config.max_queries // 2, on_resolved, RoutingError)

    # -- lookups -----------------------------------------------------------------

    async def _outcome(self, domain: str) -> tuple[Destination | Reply, float]:
        try:
            return await self._lookup(domain)
        except RoutingError as exc:
            return exc.reply, self.config.failure_ttl if exc.ttl is None else exc.ttl

    async def _lookup(self, domain: str) -> tuple[Destination, float]:
        port = self.config.mx_port
        literal = _literal(domain)
        if literal is not None:
            return Destination(f"literal:{literal}", (Host(literal, (literal,), port),)), math.inf
        mx = await self.dns.query(domain, "MX")
        if not mx.exists:
            raise routing_error(550, "5.1.2", f"domain {domain} not found", mx.ttl)
        if not mx.rdata:
            # no MX: the domain itself is the implicit MX (RFC 5321 §5.1)
            addresses, ttl = await self._addresses(domain)
            if isinstance(addresses, RoutingError):
                raise addresses
            if not addresses:
                raise routing_error(
                    550, "5.4.4", f"domain {domain} has no MX and no address", ttl
                )
            return Destination(f"mx:{domain}", (Host(domain, addresses, port),)), min(mx.ttl, ttl)
        exchanges: list[tuple[int, str]] = list(mx.rdata)
        if len(exchanges) == 1 and exchanges[0][1] == "":
            raise routing_error(
                556, "5.1.10", f"domain {domain} accepts no mail (null MX)", mx.ttl
            )
        preference: dict[str, int] = {}
        # canonical order first (answers arrive shuffled), so only the rng shuffles
        for pref, name in sorted(exchanges):
            if name and not _is_ip(name):
                preference.setdefault(name, pref)
        if not preference:
            raise routing_error(451, "4.4.4", f"no usable MX host for {domain}")
        found = await self._host_addresses(list(preference))
        hosts: list[Host] = []
        ttl = mx.ttl
        failure: RoutingError | None = None
        for name, (addresses, host_ttl) in found.items():
            if isinstance(addresses, RoutingError):
                failure = addresses
                ttl = min(ttl, self.config.failure_ttl)  # retry the missing host soon
            else:
                ttl = min(ttl, host_ttl)  # an addressless host is looked at again too
                if addresses:
                    hosts.append(Host(name, addresses, port, preference[name]))
        if not hosts:
            # never fall back to the domain's own address when it has MX records
            if failure is not None:
                raise failure
            raise routing_error(451, "4.4.4", f"no MX host of {domain} has an address")
        keys = {h.name: (h.preference, self.rng.random()) for h in hosts}
        hosts.sort(key=lambda h: keys[h.name])
        return self._intern("mx:" + ",".join(sorted(preference)), tuple(hosts)), ttl

    def _intern(self, key: str, hosts: tuple[Host, ...]) -> Destination:
        interned = self._interned
        destination = interned.get((key, hosts))
        if destination is None:
            if len(interned) >= self.config.cache_size:
                interned.clear()  # every domain its own site: interning saves nothing
            destination = interned[key, hosts] = Destination(key, hosts)
        return destination

    async def _host_addresses(
        self, names: list[str]
    ) -> dict[str, tuple[tuple[str, ...] | RoutingError, float]]:
        """Addresses of MX hosts, from the host cache or looked up all at once."""
        found: dict[str, tuple[tuple[str, ...] | RoutingError, float]] = {}
        now = trio.current_time()

        async def one(name: str) -> None:
            outcome = await self._hosts.fetch(name, functools.partial(self._host_lookup, name))
            if isinstance(outcome, Reply):
                found[name] = (RoutingError(outcome), 0.0)
            else:
                found[name] = (outcome, max(0.0, self._hosts.expires(name) - now))

        if len(names) == 1:
            await one(names[0])
        else:
            async with trio.open_nursery() as nursery:
                for name in names:
                    nursery.start_soon(one, name)
        return {name: found[name] for name in names}

    async def _host_lookup(self, name: str) -> tuple[tuple[str, ...] | Reply, float]:
        addresses, ttl = await self._addresses(name)
        if isinstance(addresses, RoutingError):
            return addresses.reply, 0.0  # a failed host is not remembered
        return addresses, ttl

    async def _addresses(self, name: str) -> tuple[tuple[str, ...] | RoutingError, float]:
        """A and AAAA of ``name`` at once; a failure is returned, not raised."""
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
        addresses = _order(address for r in good for address in r.rdata)
        ttl = min((r.ttl for r in good), default=0.0)
        if not addresses and len(good) < 2:
            bad = v4 if isinstance(v4, RoutingError) else v6
            assert isinstance(bad, RoutingError)
            return bad, 0.0
        return addresses, ttl


def _canonical(domain: str) -> str:
    lowered = domain.lower().rstrip(".")
    return domain if lowered == domain else lowered  # keep the caller's string

def _unwrap(outcome: Destination | Reply) -> Destination:
    if isinstance(outcome, Reply):
        raise RoutingError(outcome)  # a fresh error each time: no shared traceback
    return outcome
