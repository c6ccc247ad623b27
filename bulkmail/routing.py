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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from . import dns_wire
from .dns_client import QueryWindow
from .dns_lookup import DNSConfig, DNSLookup, Records, RoutingError, routing_error
from .mx_hosts import Found, HostAddresses
from .prefetch import PrefetchQueue
from .protocol.replies import Reply
from .ttl_cache import CoalescingCache

#: seconds the resolve-ahead loop waits, its window empty, when direct lookups
#: hold every query slot or its own tasks are as many as it may have
NO_SLOT_PAUSE = 0.01

__all__ = [
    "DNSConfig", "Destination", "Host", "MXRouter", "Router", "RoutingError",
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


def is_ip(text: str) -> bool:
    if ":" not in text and not _IPV4_CHARS.issuperset(text):
        return False  # a host name (asked per MX host: no exception raised for it)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_IPV4_CHARS = frozenset("0123456789.")


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
        self.hosts = HostAddresses(self.dns, config.host_cache_size)
        # one Destination per (key, hosts): 100,000 domains at one provider
        # hold references, not copies
        self._interned: dict[tuple[str, tuple[Host, ...]], Destination] = {}
        # an MX answer's records -> its Destination and when the first of its
        # hosts' cached addresses expires (see _answered)
        self._by_answer: dict[tuple[object, ...], tuple[Destination, float]] = {}
        self._ahead: PrefetchQueue[Destination | RoutingError] = PrefetchQueue(
            config.prefetch_queue
        )
        #: prefetched domains settled from the window's replies, with no task of their own
        self.settled_in_window = 0
        self._alone = 0  # prefetched domains being resolved by a task of their own
        self._window: QueryWindow | None = None  # the resolve-ahead loop's, while it runs

    async def route(self, domain: str) -> Destination:
        domain = canonical_domain(domain)
        lookup = functools.partial(self._outcome, domain)
        return unwrap_route(await self._routes.fetch(domain, lookup))

    def peek(self, domain: str) -> Destination | None:
        outcome = self._routes.get(canonical_domain(domain))
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
        domain = canonical_domain(domain)
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
        half = self.config.max_queries // 2
        async with trio.open_nursery() as nursery:
            await nursery.start(self.dns.serve)
            window = self.dns.window(max(1, half))
            if window is None:  # no shared sockets: a crew, each query a socket of its own
                await self._ahead.run(self.route, half, on_resolved, RoutingError)
                return
            try:
                await self._resolve_ahead(window, nursery, on_resolved)
            finally:
                self._window = None
                for domain in self.dns.close_window(window):
                    self._ahead.done(domain)  # cancelled: nobody resolves it now

    async def _resolve_ahead(
        self, window: QueryWindow, nursery: trio.Nursery, on_resolved: Resolved | None
    ) -> None:
        """One task sends the queued domains' MX queries and reads their answers.

        A crew of tasks each awaiting ``route()`` spent ~60 us of CPU per
        domain, most of it in the coroutine chain and scheduler pass each
        query costs; a loop that keeps ``window`` full and settles every
        answer that has come per wake-up needs about half (see
        :class:`~bulkmail.dns_client.QueryWindow`).  The plain case is
        settled here, synchronously, when the MX hosts' addresses are in the
        host cache -- 100,000 domains at 20 providers are nearly all that
        case; anything else (an MX host not cached yet, no MX, truncation,
        an address literal, the shared sockets gone) goes to a task of its
        own.  A ``route()`` call for a domain in the window looks it up
        itself; the engine never makes one (``prefetch`` said True)."""
        ahead = self._ahead
        dns = self.dns
        self._window = window
        ahead.on_add = self._wake_ahead
        try:
            while True:
                no_slot = False
                # tasks of their own stay as few as a crew's: with the shared
                # sockets gone or refused, every domain would need one
                while len(window) + self._alone < window.limit:
                    domain = ahead.take()
                    if domain is None:
                        break
                    cached = self._routes.get(domain)  # routed by someone meanwhile
                    if cached is not None:
                        self._settle(domain, cached, None, on_resolved)
                        continue
                    question = None if _literal(domain) else dns_wire.question(domain, "MX")
                    try:
                        sent = question is not None and dns.send_in(window, domain, question)
                    except trio.WouldBlock:  # direct lookups hold every slot
                        ahead.put_back(domain)
                        no_slot = True
                        break
                    if not sent:
                        self._spawn_alone(nursery, domain, on_resolved, None)
                if not len(window) and not ahead.has_queued():
                    await ahead.wait()  # nothing in flight, nothing to send
                    continue
                # for a reply, a resend, more work (on_add), a task of its own
                # ending (_resolve_alone) or, with no slot free, a short while
                await window.wait(trio.current_time() + NO_SLOT_PAUSE if no_slot else math.inf)
                replies, expired, stopped = window.collect()
                for domain, question, data in replies:
                    dns.settled(domain)
                    self._answered(domain, question, data, nursery, on_resolved)
                for domain in expired:
                    dns.settled(domain)
                    self.settled_in_window += 1
                    self._settle(domain, *self._failure(dns.no_answer(domain, "MX")),
                                 on_resolved)
                for domain in stopped:
                    dns.settled(domain)
                    self._spawn_alone(nursery, domain, on_resolved, None)
        finally:
            ahead.on_add = None

    def _answered(
        self, domain: str, question: bytes, data: bytes, nursery: trio.Nursery,
        on_resolved: Resolved | None,
    ) -> None:
        """Settle ``domain`` from its MX reply when that needs no more lookups."""
        try:
            mx = self.dns.read_reply(data, question, domain, "MX")
            if mx is not None:
                # The domains one provider hosts send the same MX records, and
                # what they route to is the same while its hosts' addresses
                # are cached: one dict lookup instead of ordering the records,
                # reading the host cache and building the hosts.  Only answers
                # without a tie in preference: tied hosts are shuffled per
                # domain (_assemble).
                known = self._by_answer.get(mx.rdata)
                if known is not None:
                    left = known[1] - trio.current_time()
                    if left > 0:
                        self.settled_in_window += 1
                        self._settle(domain, known[0], min(mx.ttl, left), on_resolved)
                        return
                preference = self._preferences(domain, mx)
                found = None if preference is None else self.hosts.cached(list(preference))
                if preference is None or found is None:
                    self._spawn_alone(nursery, domain, on_resolved, mx)
                    return
                destination, ttl = self._assemble(domain, preference, found, mx.ttl)
                self._remember(mx.rdata, preference, found, destination)
                self.settled_in_window += 1
                self._settle(domain, destination, ttl, on_resolved)
                return
        except RoutingError as exc:
            self.settled_in_window += 1
            self._settle(domain, *self._failure(exc), on_resolved)
            return
        self._spawn_alone(nursery, domain, on_resolved, None)  # asked again

    def _remember(
        self, rdata: tuple[object, ...], preference: dict[str, int], found: Found,
        destination: Destination,
    ) -> None:
        """Note what the MX records ``rdata`` route to, until the first of
        their hosts' cached addresses expires (see :meth:`_answered`)."""
        if len(set(preference.values())) != len(preference):
            return  # a tie: each domain gets its own order
        # (``found`` is the host cache's, which holds no failures: a time left each)
        if len(self._by_answer) >= self.config.cache_size:
            self._by_answer.clear()
        expires = trio.current_time() + min(ttl for _, ttl in found.values())
        self._by_answer[rdata] = (destination, expires)

    def _spawn_alone(
        self, nursery: trio.Nursery, domain: str, on_resolved: Resolved | None,
        mx: Records | None,
    ) -> None:
        self._alone += 1  # counted from now: the filling loop reads it before the task runs
        nursery.start_soon(self._resolve_alone, domain, on_resolved, mx)

    async def _resolve_alone(
        self, domain: str, on_resolved: Resolved | None, mx: Records | None
    ) -> None:
        try:
            value, ttl = await self._outcome(domain, mx)
        finally:
            self._alone -= 1
            self._ahead.done(domain)  # (cancelled, too)
            if self._ahead.has_queued():
                self._wake_ahead()  # room for the next queued domain
        self._settle(domain, value, ttl, on_resolved)

    def _wake_ahead(self) -> None:
        """Wake the resolve-ahead loop if it may send another query now."""
        window = self._window
        if window is not None and len(window) + self._alone < window.limit:
            window.wake()

    def _settle(
        self, domain: str, value: Destination | Reply, ttl: float | None,
        on_resolved: Resolved | None,
    ) -> None:
        """Report ``domain``'s outcome, cached for ``ttl`` (None: it already is)."""
        if ttl is not None:
            self._routes.put(domain, value, ttl)
        self._ahead.done(domain)
        if on_resolved is not None:
            on_resolved(domain, value if isinstance(value, Destination) else RoutingError(value))

    # -- lookups -----------------------------------------------------------------

    async def _outcome(
        self, domain: str, mx: Records | None = None
    ) -> tuple[Destination | Reply, float]:
        """The route or the failure (with its cache time) for ``domain``, from
        ``mx`` when its MX answer is in hand."""
        try:
            return await (self._lookup(domain) if mx is None else self._from_mx(domain, mx))
        except RoutingError as exc:
            return self._failure(exc)

    def _failure(self, exc: RoutingError) -> tuple[Reply, float]:
        """A failure as cached: its reply, for the DNS's TTL or ``failure_ttl``."""
        return exc.reply, self.config.failure_ttl if exc.ttl is None else exc.ttl

    async def _lookup(self, domain: str) -> tuple[Destination, float]:
        port = self.config.mx_port
        literal = _literal(domain)
        if literal is not None:
            return Destination(f"literal:{literal}", (Host(literal, (literal,), port),)), math.inf
        return await self._from_mx(domain, await self.dns.query(domain, "MX"))

    async def _from_mx(self, domain: str, mx: Records) -> tuple[Destination, float]:
        """The route an MX answer gives: its hosts' addresses, from the host
        cache or looked up; RoutingError for a final answer (none, null MX)."""
        preference = self._preferences(domain, mx)
        if preference is None:
            # no MX: the domain itself is the implicit MX (RFC 5321 §5.1)
            addresses, ttl = await self.hosts.addresses(domain)
            if isinstance(addresses, RoutingError):
                raise addresses
            if not addresses:
                raise routing_error(
                    550, "5.4.4", f"domain {domain} has no MX and no address", ttl
                )
            host = Host(domain, addresses, self.config.mx_port)
            return Destination(f"mx:{domain}", (host,)), min(mx.ttl, ttl)
        names = list(preference)
        found = self.hosts.cached(names) or await self.hosts.lookup(names)
        return self._assemble(domain, preference, found, mx.ttl)

    def _preferences(self, domain: str, mx: Records) -> dict[str, int] | None:
        """MX host names by preference (None: no MX, the implicit MX applies)."""
        if not mx.exists:
            raise routing_error(550, "5.1.2", f"domain {domain} not found", mx.ttl)
        if not mx.rdata:
            return None
        exchanges: list[tuple[int, str]] = list(mx.rdata)
        if len(exchanges) == 1 and exchanges[0][1] == "":
            raise routing_error(
                556, "5.1.10", f"domain {domain} accepts no mail (null MX)", mx.ttl
            )
        preference: dict[str, int] = {}
        # canonical order first (answers arrive shuffled), so only the rng shuffles
        for pref, name in sorted(exchanges):
            if name and not is_ip(name):
                preference.setdefault(name, pref)
        if not preference:
            raise routing_error(451, "4.4.4", f"no usable MX host for {domain}")
        return preference

    def _assemble(
        self, domain: str, preference: dict[str, int],
        found: Found, mx_ttl: float,
    ) -> tuple[Destination, float]:
        port = self.config.mx_port
        hosts: list[Host] = []
        ttl = mx_ttl
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


def canonical_domain(domain: str) -> str:
    """Lower case, no final dot: how routes are keyed (the caller's string when it is)."""
    lowered = domain.lower().rstrip(".")
    return domain if lowered == domain else lowered  # keep the caller's string

def unwrap_route(outcome: Destination | Reply) -> Destination:
    if isinstance(outcome, Reply):
        raise RoutingError(outcome)  # a fresh error each time: no shared traceback
    return outcome
