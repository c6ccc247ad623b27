"""Where a recipient's mail goes: one relay, or the domain's MX hosts.

Routing failures carry a synthesised SMTP :class:`Reply` so the policy treats
"the DNS said no" exactly like "the server said no": the code alone decides
bounce (5xx) or defer (4xx).
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

if TYPE_CHECKING:
    import dns.message

from .errors import synthetic_reply
from .protocol.replies import Reply


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

    ``key`` names the pool: for MX routing it is the *set* of MX host names, so
    the thousands of domains one provider hosts share one pool.
    """

    key: str
    hosts: tuple[Host, ...]


class RoutingError(Exception):
    """No destination for a domain; ``reply`` says whether that is final.

    ``ttl``, when known, is how long the DNS lets the outcome be cached.
    """

    def __init__(self, reply: Reply, *, ttl: float | None = None) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.ttl = ttl

    @property
    def permanent(self) -> bool:
        return self.reply.code >= 500


class Router(Protocol):
    async def route(self, domain: str) -> Destination: ...

    def peek(self, domain: str) -> Destination | None:
        """The cached destination, without awaiting (the engine's per-recipient fast path)."""
        ...


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
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _order(addresses: Iterable[str]) -> tuple[str, ...]:
    """Deduplicated, IPv4 before IPv6 (many senders lack working IPv6 reputation)."""
    unique = dict.fromkeys(addresses)
    return tuple(sorted(unique, key=lambda a: ":" in a))


def _error(code: int, enhanced: str, text: str, ttl: float | None = None) -> RoutingError:
    return RoutingError(synthetic_reply(code, enhanced, text), ttl=ttl)


#: how long a relay's resolved addresses (or failure to resolve) are reused:
#: getaddrinfo gives no TTL
RELAY_ADDRESS_TTL = 300.0
RELAY_FAILURE_TTL = 30.0


class RelayRouter:
    """Every domain goes to one smarthost; a host name is resolved lazily."""

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


@dataclass(frozen=True)
class DNSConfig:
    """Resolver settings; tests point ``nameservers`` and ``mx_port`` at loopback."""

    #: (ip, port) pairs; empty means the system resolver configuration
    nameservers: tuple[tuple[str, int], ...] = ()
    #: seconds per query attempt
    timeout: float = 5.0
    #: seconds per lookup (one name, one type), retries included, on trio's clock
    lifetime: float = 15.0
    #: SMTP port of MX hosts
    mx_port: int = 25
    #: domains remembered (least recently used go first)
    cache_size: int = 10_000
    #: cache time of NXDOMAIN / no-data answers that carry no SOA (RFC 2308)
    negative_ttl: float = 300.0
    #: cache time of SERVFAIL / timeouts, so a broken zone is not hammered
    failure_ttl: float = 30.0


@dataclass(frozen=True, slots=True)
class _Records:
    """One lookup's outcome: rdata (empty = no data), TTL, and whether the name exists."""

    rdata: tuple[Any, ...]
    ttl: float
    exists: bool = True


class _Flight:
    """A lookup in progress that other tasks wait on instead of querying again."""

    __slots__ = ("done", "outcome")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.outcome: Destination | Reply | None = None


class MXRouter:
    """Direct delivery: MX hosts by preference (RFC 5321 §5.1), null MX (RFC 7505).

    Outcomes (failures too) are cached for their TTL on the trio clock, and
    concurrent lookups of one domain share one query: thousands of a domain's
    recipients arrive at once.
    """

    def __init__(self, config: DNSConfig, *, rng: random.Random | None = None) -> None:
        # dnspython is imported here, not with the module: a relay-only run
        # (the common bulk case) starts ~40 ms sooner without it
        import dns.asyncbackend
        import dns.asyncresolver
        import dns.nameserver

        self.config = config
        self.rng = rng if rng is not None else random.Random()
        resolver = dns.asyncresolver.Resolver(configure=not config.nameservers)
        if config.nameservers:
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(ip, port) for ip, port in config.nameservers
            ]
        resolver.timeout = config.timeout
        resolver.lifetime = config.lifetime
        self._resolver = resolver
        # explicit: the default backend is sniffed once per process and then sticks
        self._backend = dns.asyncbackend.get_backend("trio")
        self._cache: OrderedDict[str, tuple[float, Destination | Reply]] = OrderedDict()
        self._flights: dict[str, _Flight] = {}

    async def route(self, domain: str) -> Destination:
        domain = domain.lower().rstrip(".")
        while True:
            outcome = self._cached(domain)
            if outcome is not None:
                return _unwrap(outcome)
            flight = self._flights.get(domain)
            if flight is None:
                break
            await flight.done.wait()
            if flight.outcome is not None:
                return _unwrap(flight.outcome)
            # the querying task was cancelled: go round, maybe querying ourselves
        flight = self._flights[domain] = _Flight()
        try:
            try:
                destination, ttl = await self._lookup(domain)
                outcome = destination
            except RoutingError as exc:
                outcome = exc.reply
                ttl = self.config.failure_ttl if exc.ttl is None else exc.ttl
            self._store(domain, outcome, ttl)
            flight.outcome = outcome
        finally:
            del self._flights[domain]
            flight.done.set()
        return _unwrap(outcome)

    def peek(self, domain: str) -> Destination | None:
        outcome = self._cached(domain.lower().rstrip("."))
        return outcome if isinstance(outcome, Destination) else None

    def _cached(self, domain: str) -> Destination | Reply | None:
        entry = self._cache.get(domain)
        if entry is None:
            return None
        if entry[0] <= trio.current_time():
            del self._cache[domain]
            return None
        self._cache.move_to_end(domain)
        return entry[1]

    def _store(self, domain: str, outcome: Destination | Reply, ttl: float) -> None:
        if ttl <= 0:
            return
        self._cache[domain] = (trio.current_time() + ttl, outcome)
        self._cache.move_to_end(domain)
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)

    async def _lookup(self, domain: str) -> tuple[Destination, float]:
        import dns.name

        port = self.config.mx_port
        literal = _literal(domain)
        if literal is not None:
            return Destination(f"literal:{literal}", (Host(literal, (literal,), port),)), math.inf
        mx = await self._query(domain, "MX")
        if not mx.exists:
            raise _error(550, "5.1.2", f"domain {domain} not found", mx.ttl)
        if not mx.rdata:
            # no MX: the domain itself is the implicit MX (RFC 5321 §5.1)
            found = await self._addresses([domain])
            addresses, ttl = found[domain]
            if isinstance(addresses, RoutingError):
                raise addresses
            if not addresses:
                raise _error(550, "5.4.4", f"domain {domain} has no MX and no address", ttl)
            return Destination(f"mx:{domain}", (Host(domain, addresses, port),)), min(mx.ttl, ttl)
        exchanges = [(r.preference, r.exchange) for r in mx.rdata]
        if len(exchanges) == 1 and exchanges[0][1] == dns.name.root:
            raise _error(556, "5.1.10", f"domain {domain} accepts no mail (null MX)", mx.ttl)
        preference: dict[str, int] = {}
        # canonical order first (answers arrive shuffled), so only the rng shuffles
        for pref, name in sorted((p, e.to_text(omit_final_dot=True).lower()) for p, e in exchanges):
            if name and not _is_ip(name):
                preference.setdefault(name, pref)
        if not preference:
            raise _error(451, "4.4.4", f"no usable MX host for {domain}")
        found = await self._addresses(list(preference))
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
            raise _error(451, "4.4.4", f"no MX host of {domain} has an address")
        keys = {h.name: (h.preference, self.rng.random()) for h in hosts}
        hosts.sort(key=lambda h: keys[h.name])
        return Destination("mx:" + ",".join(sorted(preference)), tuple(hosts)), ttl

    async def _addresses(
        self, names: list[str]
    ) -> dict[str, tuple[tuple[str, ...] | RoutingError, float]]:
        """A and AAAA of every name, all at once; a failure is kept, not raised."""
        results: dict[tuple[str, str], _Records | RoutingError] = {}

        async def one(name: str, rdtype: str) -> None:
            try:
                results[name, rdtype] = await self._query(name, rdtype)
            except RoutingError as exc:
                results[name, rdtype] = exc

        async with trio.open_nursery() as nursery:
            for name in names:
                for rdtype in ("A", "AAAA"):
                    nursery.start_soon(one, name, rdtype)
        found: dict[str, tuple[tuple[str, ...] | RoutingError, float]] = {}
        for name in names:
            v4, v6 = results[name, "A"], results[name, "AAAA"]
            good = [r for r in (v4, v6) if isinstance(r, _Records)]
            addresses = _order(rd.address for r in good for rd in r.rdata)
            ttl = min((r.ttl for r in good), default=0.0)
            if not addresses and len(good) < 2:
                bad = v4 if isinstance(v4, RoutingError) else v6
                assert isinstance(bad, RoutingError)
                found[name] = (bad, 0.0)
            else:
                found[name] = (addresses, ttl)
        return found

    async def _query(self, name: str, rdtype: str) -> _Records:
        """One lookup, bounded by ``lifetime`` on trio's clock.

        dnspython measures its own lifetime on the wall clock, so the trio
        deadline is what holds under a mock clock; both agree in real time.
        """
        import dns.exception
        import dns.name
        import dns.resolver

        config = self.config
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            raise _error(553, "5.1.3", f"invalid domain {name!r}: {exc}", 0.0) from exc
        failure = f"DNS temporary failure for {name} {rdtype}"
        with trio.move_on_after(config.lifetime):
            try:
                answer = await self._resolver.resolve(
                    qname, rdtype, search=False, lifetime=config.lifetime,
                    backend=self._backend,
                )
            except dns.resolver.NXDOMAIN as exc:
                ttl = self._negative_ttl(exc.kwargs["responses"].values())
                return _Records((), ttl, exists=False)
            except dns.resolver.NoAnswer as exc:
                return _Records((), self._negative_ttl([exc.kwargs["response"]]))
            except dns.exception.DNSException as exc:
                raise _error(451, "4.4.3", f"{failure}: {exc}") from exc
            return _Records(tuple(answer), float(answer.chaining_result.minimum_ttl))
        raise _error(451, "4.4.3", f"{failure}: no answer within {config.lifetime:g}s")

    def _negative_ttl(self, responses: Iterable[dns.message.Message]) -> float:
        """SOA-derived negative TTL (RFC 2308 §5), or the configured default."""
        import dns.rdatatype

        ttls = [
            min(rrset.ttl, rrset[0].minimum)
            for response in responses
            for rrset in response.authority
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset)
        ]
        return float(min(ttls)) if ttls else self.config.negative_ttl


def _unwrap(outcome: Destination | Reply) -> Destination:
    if isinstance(outcome, Reply):
        raise RoutingError(outcome)  # a fresh error each time: no shared traceback
    return outcome
