"""DNS queries for routing: bounded in number, and honest about whose fault a failure is.

While :meth:`DNSLookup.serve` runs (the router's prefetcher runs it in the
engine's nursery) plain queries share long-lived UDP sockets
(:mod:`dns_client`); otherwise each query opens a socket, and dnspython,
which reads every answer that is not the plain case, opens one per query
too.  A hundred thousand domains resolved at once would take that many
descriptors: the table runs out (EMFILE), the loopback or the resolver drops
datagrams, and dnspython reports our own exhaustion as "All nameservers
failed".  So at most ``max_queries`` queries are in flight, and a query that
fails for a local resource (EMFILE, ENFILE, ENOBUFS, ENOMEM) is not the DNS's
answer: it waits and is sent again, and only a shortage that outlasts
``exhaustion_patience`` becomes a (transient) failure that says what ran out.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from . import dns_wire
from .dns_client import ClientStopped, QueryWindow, SharedClient, SharesSockets, UDPClient
from .errors import synthetic_reply
from .protocol.replies import Reply

if TYPE_CHECKING:
    import dns.message

#: errno values that mean this process or host ran out of something
LOCAL_EXHAUSTION = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: first and longest pause before resending a query that met local exhaustion
EXHAUSTION_FIRST_PAUSE = 0.01
EXHAUSTION_MAX_PAUSE = 1.0


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
    #: domains remembered (least recently used go first); a domain's entry is
    #: ~200 bytes, and a list whose domains recur far apart must not evict them
    #: before they come back
    cache_size: int = 100_000
    #: MX host names whose addresses are remembered
    host_cache_size: int = 10_000
    #: cache time of NXDOMAIN / no-data answers that carry no SOA (RFC 2308)
    negative_ttl: float = 300.0
    #: cache time of SERVFAIL / timeouts, so a broken zone is not hammered
    failure_ttl: float = 30.0
    #: queries in flight at once: a burst of domains queues here instead of
    #: flooding the resolver, or exhausting descriptors when each query has a
    #: socket of its own (when ``DNSLookup.serve`` is not running)
    max_queries: int = 64
    #: seconds a query waits out local resource exhaustion before failing
    exhaustion_patience: float = 120.0
    #: domains queued by ``prefetch`` (more are not queued, and the engine
    #: gives each of those a task): room for every domain of the 20,000
    #: recipients in memory and the 20,000 intake reads ahead, at ~100 bytes
    #: each -- with 10,000 a 100,000-domain list spent 60 MB and a third of
    #: its time on the task per domain
    prefetch_queue: int = 50_000

    def __post_init__(self) -> None:
        if self.max_queries < 1:
            raise ValueError("max_queries must be >= 1")


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


def routing_error(code: int, enhanced: str, text: str, ttl: float | None = None) -> RoutingError:
    return RoutingError(synthetic_reply(code, enhanced, text), ttl=ttl)


@dataclass(frozen=True, slots=True)
class Records:
    """One lookup's outcome: records (empty = no data), TTL, and whether the name exists.

    Records are plain values: an address string for A / AAAA, ``(preference,
    exchange)`` for MX with the exchange lower case, no final dot, "" for the root.
    """

    rdata: tuple[Any, ...]
    ttl: float
    exists: bool = True


def local_exhaustion(exc: BaseException) -> OSError | None:
    """The local resource error behind a dnspython failure, if that is what it is."""
    import dns.resolver

    if isinstance(exc, OSError):
        return exc if exc.errno in LOCAL_EXHAUSTION else None
    if isinstance(exc, dns.resolver.NoNameservers):
        for error in exc.kwargs.get("errors", ()):
            cause = error[3] if len(error) > 3 else None
            if isinstance(cause, OSError) and cause.errno in LOCAL_EXHAUSTION:
                return cause
    return None


def new_resolver(config: DNSConfig) -> Any:
    """A dnspython async resolver asking ``config``'s nameservers (the system's
    when none are given), with its timeout and lifetime.

    dnspython is imported here, not with the module: a relay-only run (the
    common bulk case) starts ~40 ms sooner without it."""
    import dns.asyncresolver
    import dns.nameserver

    resolver = dns.asyncresolver.Resolver(configure=not config.nameservers)
    if config.nameservers:
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(ip, port) for ip, port in config.nameservers
        ]
    resolver.timeout = config.timeout
    resolver.lifetime = config.lifetime
    return resolver


class DNSLookup(SharesSockets):
    """Queries through dnspython on trio, at most ``max_queries`` at a time."""

    def __init__(self, config: DNSConfig) -> None:
        import dns.asyncbackend

        self.config = config
        self._resolver = new_resolver(config)
        # explicit: the default backend is sniffed once per process and then sticks
        self._backend = dns.asyncbackend.get_backend("trio")
        self._slots = trio.CapacityLimiter(config.max_queries)
        self._servers = plain_servers(self._resolver)
        self._server = self._servers[0] if self._servers else None
        self._shared_client = SharedClient(self._servers, self.config.timeout)
        self._ids = random.Random(os.urandom(16))
        #: queries sent, and resends after local exhaustion (for tests and reports)
        self.sent = 0
        self.exhaustion_waits = 0

    @property
    def in_flight(self) -> int:
        return self._slots.borrowed_tokens

    # -- a window of queries that one task collects (resolving ahead) ---------------

    def window(self, limit: int) -> QueryWindow | None:
        """A :class:`~bulkmail.dns_client.QueryWindow` over the shared sockets,
        or None when they are not open (each query then opens its own)."""
        client = self._shared_client.client
        return client.window(limit) if client is not None and client.running else None

    def close_window(self, window: QueryWindow) -> list[str]:
        """Forget ``window``'s queries still open, and give back their slots; their names."""
        client = self._shared_client.client
        names = client.close_window(window) if client is not None else window.close()
        for name in names:
            self._slots.release_on_behalf_of(name)
        return names

    def send_in(self, window: QueryWindow, name: str, question: bytes) -> bool:
        """Send ``name``'s query (:func:`dns_wire.question` bytes) in ``window``,
        holding one of the ``max_queries`` slots until :meth:`settled`; False
        when the send failed here (ask with :meth:`query`), trio.WouldBlock
        when no slot is free."""
        self._slots.acquire_on_behalf_of_nowait(name)
        try:
            window.send(name, question, trio.current_time() + self.config.lifetime)
        except (OSError, ClientStopped):
            self._slots.release_on_behalf_of(name)
            return False
        self.sent += 1
        return True

    def settled(self, name: str) -> None:
        """``name``'s query sent by :meth:`send_in` is answered or given up."""
        self._slots.release_on_behalf_of(name)

    def read_reply(self, data: bytes, question: bytes, name: str, rdtype: str) -> Records | None:
        """A window's reply, read as :meth:`query` reads it; None when it must
        be asked again that way (truncated: TCP; not a response to it).
        RoutingError for an error rcode."""
        return self._read(data, question, name, rdtype)[0]

    async def query(self, name: str, rdtype: str) -> Records:
        """One lookup; a DNS failure raises :class:`RoutingError` (451 or 5xx)."""
        import dns.exception
        import dns.name

        question = dns_wire.question(name, rdtype)
        qname = None
        if question is None:  # not a plain host name: is it a name at all?
            try:
                qname = dns.name.from_text(name)
            except dns.exception.DNSException as exc:
                raise routing_error(
                    553, "5.1.3", f"invalid domain {name!r}: {exc}", 0.0
                ) from exc
        pause = EXHAUSTION_FIRST_PAUSE
        give_up = trio.current_time() + self.config.exhaustion_patience
        slots = self._slots
        while True:
            try:
                slots.acquire_nowait()  # no scheduler pass when a slot is free
            except trio.WouldBlock:
                await slots.acquire()
            try:
                self.sent += 1
                return await self._attempt(qname, question, name, rdtype)
            except _Exhausted as exc:
                cause = exc.cause
            finally:
                slots.release()
            # our own shortage, not the DNS's answer: wait (the slot given
            # back) for descriptors or buffers to free up, then ask again
            self.exhaustion_waits += 1
            if trio.current_time() + pause > give_up:
                raise routing_error(
                    451, "4.3.0",
                    f"local resource exhaustion, DNS query for {name} {rdtype} not sent:"
                    f" {cause.strerror or cause} (errno {errno.errorcode.get(cause.errno or 0)})",
                ) from cause
            await trio.sleep(pause)
            pause = min(pause * 2, EXHAUSTION_MAX_PAUSE)

    async def _attempt(
        self, qname: Any, question: bytes | None, name: str, rdtype: str
    ) -> Records:
        """One query, bounded by ``lifetime`` on trio's clock.

        dnspython measures its own lifetime on the wall clock, so the trio
        deadline is what holds under a mock clock; both agree in real time.
        """
        import dns.exception
        import dns.name
        import dns.resolver

        config = self.config
        deadline = trio.current_time() + config.lifetime
        shared = None
        client = self._shared_client.client
        if client is not None and question is not None:
            shared = await self._shared(client, question, name, rdtype, deadline)
            if shared is not None and shared[0] is not None:
                return shared[0]
        with trio.move_on_at(deadline):
            plain, truncated = (
                shared if shared is not None
                else await self._plain(question, name, rdtype) if question is not None
                else (None, False)
            )
            if plain is not None:
                return plain
            failure = f"DNS temporary failure for {name} {rdtype}"
            if qname is None:
                qname = dns.name.from_text(name)
            try:
                answer = await self._resolver.resolve(
                    qname, rdtype, search=False, lifetime=config.lifetime,
                    backend=self._backend, tcp=truncated,
                )
            except dns.resolver.NXDOMAIN as exc:
                ttl = self._negative_ttl(exc.kwargs["responses"].values())
                return Records((), ttl, exists=False)
            except dns.resolver.NoAnswer as exc:
                return Records((), self._negative_ttl([exc.kwargs["response"]]))
            except (dns.exception.DNSException, OSError) as exc:
                cause = local_exhaustion(exc)
                if cause is not None:
                    raise _Exhausted(cause) from exc
                raise routing_error(451, "4.4.3", f"{failure}: {exc}") from exc
            return Records(
                tuple(_plain_rdata(rd) for rd in answer),
                float(answer.chaining_result.minimum_ttl),
            )
        raise self.no_answer(name, rdtype)

    def no_answer(self, name: str, rdtype: str) -> RoutingError:
        """The failure of a query with no reply within ``lifetime``."""
        return routing_error(
            451, "4.4.3",
            f"DNS temporary failure for {name} {rdtype}:"
            f" no answer within {self.config.lifetime:g}s",
        )

    async def _shared(
        self, client: UDPClient, question: bytes, name: str, rdtype: str, deadline: float
    ) -> tuple[Records | None, bool] | None:
        """The plain query over the shared sockets (sent again every ``timeout``
        until ``deadline``): like :meth:`_plain`, or None when the client
        cannot serve (its sockets are gone or refused) and a socket of our own
        should be tried."""
        try:
            data = await client.exchange(question, deadline)
        except ClientStopped:
            return None
        except OSError as exc:
            if exc.errno in LOCAL_EXHAUSTION:
                raise _Exhausted(exc) from exc
            return None, False
        if data is None:
            raise self.no_answer(name, rdtype)
        return self._read(data, question, name, rdtype)

    async def _plain(
        self, question: bytes, name: str, rdtype: str
    ) -> tuple[Records | None, bool]:
        """The plain case in bytes (:mod:`dns_wire`), over a socket of its own.

        (None, truncated) for any other answer, no answer within ``timeout``,
        or a network error, which dnspython then meets and reports (over TCP
        straight away when the answer was truncated).
        """
        server = self._server
        if server is None:
            return None, False
        qid = self._ids.getrandbits(16)
        family = trio.socket.AF_INET6 if ":" in server[0] else trio.socket.AF_INET
        try:
            sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        except OSError as exc:
            if exc.errno in LOCAL_EXHAUSTION:
                raise _Exhausted(exc) from exc
            return None, False
        with sock:
            try:
                await sock.connect(server)  # only the server's datagrams get through
                await sock.send(dns_wire.query(qid, question))
                with trio.move_on_after(self.config.timeout):
                    while True:
                        data = await sock.recv(65535)
                        if data[:2] != qid.to_bytes(2, "big"):
                            continue  # a stray or late datagram: keep waiting
                        return self._read(data, question, name, rdtype)
            except OSError as exc:
                if exc.errno in LOCAL_EXHAUSTION:
                    raise _Exhausted(exc) from exc
        return None, False

    def _read(
        self, data: bytes, question: bytes, name: str, rdtype: str
    ) -> tuple[Records | None, bool]:
        """A reply to our question: the plain case from bytes, the rest by dnspython."""
        parsed = dns_wire.answer(data, (data[0] << 8) | data[1], question, rdtype)
        if parsed is not None:
            return Records(*parsed), False
        if dns_wire.truncated(data):
            return None, True
        return self._from_response(data, name, rdtype), False

    def _from_response(self, data: bytes, name: str, rdtype: str) -> Records | None:
        """A response that is not the plain case, read by dnspython as its
        resolver would read it (NXDOMAIN, no data, CNAME chains, error rcodes);
        None if it is not a response to this question."""
        import dns.exception
        import dns.message
        import dns.name
        import dns.rcode
        import dns.rdataclass
        import dns.rdatatype
        import dns.resolver

        try:
            response = dns.message.from_wire(data)
            qname = dns.name.from_text(name)
            wanted = dns.rdatatype.from_text(rdtype)
        except dns.exception.DNSException:
            return None
        asked = response.question[0] if len(response.question) == 1 else None
        if (
            not isinstance(response, dns.message.QueryMessage)
            or asked is None or asked.name != qname or asked.rdtype != wanted
        ):
            return None
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return Records((), self._negative_ttl([response]), exists=False)
        if rcode != dns.rcode.NOERROR:
            raise routing_error(
                451, "4.4.3",
                f"DNS temporary failure for {name} {rdtype}: the server answered"
                f" {dns.rcode.to_text(rcode)}",
            )
        try:
            answer = dns.resolver.Answer(qname, wanted, dns.rdataclass.IN, response)
        except dns.resolver.NoAnswer:
            return Records((), self._negative_ttl([response]))
        except dns.exception.DNSException:
            return None
        return Records(
            tuple(_plain_rdata(rd) for rd in answer), float(answer.chaining_result.minimum_ttl)
        )

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


def plain_servers(resolver: Any) -> tuple[tuple[str, int], ...]:
    """(address, port) of the resolver's plain-DNS nameservers, in order, up to
    the first that is not one (DNS over HTTPS or TLS is left to dnspython)."""
    import dns.nameserver

    servers: list[tuple[str, int]] = []
    for server in resolver.nameservers:
        if isinstance(server, dns.nameserver.Do53Nameserver):
            servers.append((str(server.address), int(server.port)))
            continue
        if isinstance(server, str):
            try:
                ipaddress.ip_address(server)
            except ValueError:
                break
            servers.append((server, int(resolver.port)))
            continue
        break
    return tuple(servers)


def _plain_rdata(rd: Any) -> object:
    """dnspython's rdata as :class:`Records` holds it."""
    import dns.name

    if hasattr(rd, "exchange"):
        exchange = rd.exchange
        text = "" if exchange == dns.name.root else exchange.to_text(omit_final_dot=True).lower()
        return (int(rd.preference), text)
    return str(rd.address)


class _Exhausted(Exception):
    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause
