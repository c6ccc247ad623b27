"""Where a recipient's mail goes: a relay, or the domain's MX hosts."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver
import trio

from .errors import synthetic_reply
from .protocol.replies import Reply


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    addresses: tuple[str, ...]
    port: int
    preference: int = 0


@dataclass(frozen=True, slots=True)
class Destination:
    key: str
    hosts: tuple[Host, ...]


class RoutingError(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply

    @property
    def permanent(self) -> bool:
        return self.reply.code >= 500


class Router(Protocol):
    async def route(self, domain: str) -> Destination: ...


def domain_of(address: str) -> str:
    _local, at, domain = address.rpartition("@")
    if not at or not domain:
        raise ValueError(f"no domain in {address!r}")
    domain = domain.lower().rstrip(".")
    if not domain.isascii():
        domain = domain.encode("idna").decode("ascii")
    return domain


class RelayRouter:
    def __init__(self, host: str, port: int = 25) -> None:
        try:
            ipaddress.ip_address(host)
            addresses: tuple[str, ...] = (host,)
        except ValueError:
            addresses = ()
        self.destination = Destination(f"relay:{host}:{port}", (Host(host, addresses, port),))

    async def route(self, domain: str) -> Destination:
        return self.destination


@dataclass(frozen=True)
class DNSConfig:
    """Resolver settings; tests point ``nameservers`` and ``mx_port`` at loopback."""

    nameservers: tuple[tuple[str, int], ...] = ()
    timeout: float = 5.0
    lifetime: float = 15.0
    mx_port: int = 25
    cache_size: int = 10_000
    #: how long failures are remembered (permanent, transient)
    negative_ttl: tuple[float, float] = (300.0, 30.0)


def _reply(code: int, enhanced: str, text: str) -> RoutingError:
    return RoutingError(synthetic_reply(code, enhanced, text))


class MXRouter:
    """Direct delivery: MX hosts by preference (RFC 5321 §5.1), null MX (RFC 7505).

    Answers are cached for their TTL on the trio clock; concurrent lookups of
    one domain share a single query, since thousands of its recipients arrive
    at once.
    """

    def __init__(self, config: DNSConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.Random()
        resolver = dns.asyncresolver.Resolver(configure=not config.nameservers)
        if config.nameservers:
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(ip, port) for ip, port in config.nameservers
            ]
        resolver.timeout = config.timeout
        resolver.lifetime = config.lifetime
        self._resolver = resolver
        self._cache: dict[str, tuple[float, Destination | RoutingError]] = {}
        self._inflight: dict[str, trio.Event] = {}
        self.queries = 0

    async def route(self, domain: str) -> Destination:
        while True:
            cached = self._cache.get(domain)
            if cached is not None and cached[0] > trio.current_time():
                return self._unwrap(cached[1])
            waiting = self._inflight.get(domain)
            if waiting is None:
                break
            await waiting.wait()
        event = self._inflight[domain] = trio.Event()
        try:
            try:
                destination, ttl = await self._lookup(domain)
                outcome: Destination | RoutingError = destination
            except RoutingError as exc:
                outcome = exc
                permanent, transient = self.config.negative_ttl
                ttl = permanent if exc.permanent else transient
            self._store(domain, outcome, ttl)
            return self._unwrap(outcome)
        finally:
            del self._inflight[domain]
            event.set()

    @staticmethod
    def _unwrap(outcome: Destination | RoutingError) -> Destination:
        if isinstance(outcome, RoutingError):
            raise outcome
        return outcome

    def _store(self, domain: str, outcome: Destination | RoutingError, ttl: float) -> None:
        if len(self._cache) >= self.config.cache_size:
            del self._cache[next(iter(self._cache))]
        self._cache[domain] = (trio.current_time() + ttl, outcome)

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        """An answer, ``None`` for "no such record", or a transient RoutingError."""
        self.queries += 1
        try:
            return await self._resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NoAnswer:
            return None
        except dns.resolver.NXDOMAIN:
            raise
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise _reply(451, "4.4.3", f"DNS lookup of {name} {rdtype} failed: {exc}") from exc
        except dns.exception.DNSException as exc:
            raise _reply(451, "4.4.3", f"DNS error for {name} {rdtype}: {exc}") from exc

    async def _addresses(self, name: str) -> tuple[tuple[str, ...], float]:
        addresses: list[str] = []
        ttl = 3600.0
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._query(name, rdtype)
            except dns.resolver.NXDOMAIN:
                return (), 300.0
            if answer is not None:
                addresses += [r.address for r in answer]
                ttl = min(ttl, float(answer.rrset.ttl if answer.rrset else 300))
        return tuple(addresses), ttl

    async def _lookup(self, domain: str) -> tuple[Destination, float]:
        port = self.config.mx_port
        try:
            answer = await self._query(domain, "MX")
        except dns.resolver.NXDOMAIN as exc:
            raise _reply(550, "5.1.2", f"domain {domain} does not exist") from exc
        if answer is None:
            # no MX: the domain itself is the implicit MX (RFC 5321 §5.1)
            try:
                addresses, ttl = await self._addresses(domain)
            except RoutingError:
                raise
            if not addresses:
                raise _reply(550, "5.4.4", f"domain {domain} has no MX and no address")
            host = Host(domain, addresses, port)
            return Destination(f"mx:{domain}", (host,)), ttl
        records = sorted(answer, key=lambda r: r.preference)
        ttl = float(answer.rrset.ttl if answer.rrset else 300)
        if len(records) == 1 and records[0].exchange == dns.name.root:
            raise _reply(556, "5.1.10", f"domain {domain} does not accept mail (null MX)")
        hosts: list[Host] = []
        transient: RoutingError | None = None
        for record in records:
            if record.exchange == dns.name.root:
                continue
            name = record.exchange.to_text(omit_final_dot=True).lower()
            try:
                addresses, host_ttl = await self._addresses(name)
            except RoutingError as exc:
                transient = exc
                continue
            ttl = min(ttl, host_ttl)
            if addresses:
                hosts.append(Host(name, addresses, port, record.preference))
        if not hosts:
            # never fall back to the domain's own A record when MX exists
            if transient is not None:
                raise transient
            raise _reply(451, "4.4.4", f"no MX host of {domain} has an address")
        hosts = self._shuffle_equal(hosts)
        key = "mx:" + ",".join(sorted(h.name for h in hosts))
        return Destination(key, tuple(hosts)), max(ttl, 1.0)

    def _shuffle_equal(self, hosts: list[Host]) -> list[Host]:
        keyed = [(h.preference, self.rng.random(), i) for i, h in enumerate(hosts)]
        return [hosts[i] for _, _, i in sorted(keyed)]
