"""A tiny authoritative DNS server on loopback for tests and benchmarks: UDP and
TCP on one port.

Zone data comes from a dict API; answers are built with dnspython.  Failure
modes (an rcode, silence, truncation) are set per name so tests can make the
resolver meet each one.  Nothing here ever resolves a real name.

A benchmark asks it for hundreds of thousands of lookups, so a built answer is
kept by its query's bytes (all but the ID) and replayed with the new ID: the
resolver under test, not this server, must be the bottleneck.  Run alone
(``python -m bulkmail.testing.dns_server --domains 100000 --mx-hosts 20``) it
serves a synthetic zone of many domains hosted by a few MX hosts.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import socket
import struct
import sys
import threading
from collections import defaultdict

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.rrset
import trio

#: CNAME hops followed inside one answer, as an authoritative server would
MAX_CNAME_HOPS = 8
#: query types answered from bytes, denials included (others are built by dnspython)
_TYPE_NAMES = {1: "A", 28: "AAAA", 15: "MX", 16: "TXT"}
#: built answers kept for replay (a few hundred bytes each)
MAX_KEPT_ANSWERS = 500_000


#: how often the UDP thread looks whether it should stop (seconds)
_POLL = 0.2


def _key(name: str) -> str:
    return name.lower().rstrip(".") + "."


class DNSServer:
    """Serve ``records`` authoritatively; ``queries`` logs (qname, qtype, transport)."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
        self.names: set[str] = set()
        self.rcodes: dict[str, dns.rcode.Rcode] = {}
        self.blackholed: set[str] = set()
        self.truncated: set[str] = set()
        #: names whose next N queries over UDP go unanswered (a lost datagram)
        self.dropped: dict[str, int] = {}
        #: names whose answers carry the AD bit, as from a validating resolver
        self.authenticated: set[str] = set()
        #: (name without trailing dot, type, "udp" | "tcp"), in arrival order
        self.queries: list[tuple[str, str, str]] = []
        #: False: do not log queries (a benchmark's millions would only cost memory)
        self.log_queries = True
        self.port = 0
        #: built answers by (query bytes after the ID, transport); cleared when the zone changes
        self._answers: dict[tuple[bytes, str], tuple[bytes, str, str]] = {}
        self._rdata_wire: dict[tuple[str, str], bytes] = {}
        self._soa_records: dict[str, bytes] = {}

    # -- zone data ---------------------------------------------------------------

    def add(self, name: str, rdtype: str, value: str, ttl: int = 300) -> None:
        """Add one record, e.g. ``add("a.test", "MX", "10 mx.a.test.")``."""
        self.records[(_key(name), rdtype.upper())].append((value, ttl))
        self.names.add(_key(name))
        self._answers.clear()
        self._soa_records.clear()

    def set_rcode(self, name: str, rcode: dns.rcode.Rcode) -> None:
        """Answer every query for ``name`` with ``rcode`` (e.g. SERVFAIL)."""
        self.rcodes[_key(name)] = rcode
        self._answers.clear()

    def authenticate(self, name: str) -> None:
        """Set AD on answers for ``name`` (the resolver vouches for them: DNSSEC)."""
        self.authenticated.add(_key(name))

    def blackhole(self, name: str) -> None:
        """Never answer queries for ``name``, over UDP or TCP."""
        self.blackholed.add(_key(name))
        self._answers.clear()

    def drop(self, name: str, count: int = 1) -> None:
        """Leave the next ``count`` UDP queries for ``name`` unanswered, as if
        the datagrams were lost; later ones are answered."""
        self.dropped[_key(name)] = count
        self._answers.clear()

    def force_truncation(self, name: str) -> None:
        """UDP answers for ``name`` set TC and carry no records; TCP answers are full."""
        self.truncated.add(_key(name))
        self._answers.clear()

    def _soa_for(self, name: str) -> dns.rrset.RRset | None:
        """The SOA of the closest enclosing zone we hold, for negative answers."""
        labels = name.split(".")
        for i in range(len(labels) - 1):
            owner = ".".join(labels[i:])
            found = self.records.get((owner, "SOA"))
            if found:
                value, ttl = found[0]
                return dns.rrset.from_text(owner, ttl, "IN", "SOA", value)
        return None

    # -- answering ---------------------------------------------------------------

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        """The response to one query, or ``None`` to stay silent."""
        known = self._answers.get((wire[2:], transport))
        if known is not None:
            response, name, rdtype = known
            if self.log_queries:
                self.queries.append((name, rdtype, transport))
            return wire[:2] + response[2:]
        return self._direct(wire, transport) or self._build(wire, transport)

    def _direct(self, wire: bytes, transport: str) -> bytes | None:
        """The plain case -- one question, records of that type, no special
        treatment -- answered from bytes (dnspython's build costs ~0.5 ms, a
        benchmark's 100,000 distinct domains are each asked once); None for
        anything else, which :meth:`_build` answers."""
        if len(wire) < 17 or wire[2] & 0xF8 or wire[4:6] != b"\x00\x01":
            return None  # not a standard query with one question
        labels: list[str] = []
        at = 12
        while True:
            if at >= len(wire):
                return None
            size = wire[at]
            if size == 0 or size & 0xC0:
                break
            labels.append(wire[at + 1 : at + 1 + size].decode("ascii", "replace").lower())
            at += 1 + size
        if size or at + 5 > len(wire):
            return None  # a compressed or cut question
        name = ".".join(labels) + "."
        qtype, qclass = struct.unpack_from("!HH", wire, at + 1)
        end = at + 5
        rdtype = _TYPE_NAMES.get(qtype)
        if (
            rdtype is None or qclass != 1 or name in self.rcodes
            or name in self.blackholed or name in self.truncated or name in self.dropped
            or name in self.authenticated  # AD is set by _build
            or (name, "CNAME") in self.records
        ):
            return None
        exists = name in self.names
        values = self.records.get((name, rdtype)) if exists else None
        flags = 0x8400 | (wire[2] & 0x01) << 8  # QR AA, RD echoed
        if self.log_queries:
            self.queries.append((name.rstrip("."), rdtype, transport))
        if not values:
            # a denial (NXDOMAIN, or no data at a name that exists) with the
            # zone's SOA: MTA-STS asks one such TXT per recipient domain
            soa = self._soa_wire(name)
            header = struct.pack(
                "!HHHHH", flags | (0 if exists else 3), 1, 0, 1 if soa else 0, 0
            )
            return wire[:2] + header + wire[12:end] + soa
        ttl = min(t for _, t in values)
        answers = b"".join(
            b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, ttl, len(rdata)) + rdata
            for rdata in (self._rdata(rdtype, value) for value, _ in values)
        )
        header = wire[:2] + struct.pack("!HHHHH", flags, 1, len(values), 0, 0)
        return header + wire[12:end] + answers

    def _soa_wire(self, name: str) -> bytes:
        """:meth:`_soa_for` as an uncompressed record in wire form, or b""."""
        labels = name.split(".")
        for i in range(len(labels) - 1):
            owner = ".".join(labels[i:])
            if (owner, "SOA") not in self.records:
                continue
            known = self._soa_records.get(owner)
            if known is None:
                soa = self._soa_for(owner)
                assert soa is not None
                owner_wire = soa.name.to_wire()
                assert owner_wire is not None
                rdata = soa[0].to_digestable()
                known = self._soa_records[owner] = owner_wire + struct.pack(
                    "!HHIH", 6, 1, soa.ttl, len(rdata)
                ) + rdata
            return known
        return b""

    def _rdata(self, rdtype: str, value: str) -> bytes:
        """One record's rdata in wire form (a few distinct values: kept)."""
        known = self._rdata_wire.get((rdtype, value))
        if known is None:
            rdata = dns.rdata.from_text("IN", rdtype, value)
            known = self._rdata_wire[rdtype, value] = rdata.to_digestable()
        return known

    def _build(self, wire: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        question = query.question[0]
        name = question.name.to_text().lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        if self.log_queries:
            self.queries.append((name.rstrip("."), rdtype, transport))
        if name in self.blackholed:
            return None
        if name in self.dropped and transport == "udp":
            self.dropped[name] -= 1
            if not self.dropped[name]:
                del self.dropped[name]
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if name in self.authenticated:
            response.flags |= dns.flags.AD
        if name in self.rcodes:
            response.set_rcode(self.rcodes[name])
            return response.to_wire()
        if name not in self.names:
            response.set_rcode(dns.rcode.NXDOMAIN)
            self._add_soa(response, name)
            return response.to_wire()
        if name in self.truncated and transport == "udp":
            response.flags |= dns.flags.TC
            return response.to_wire()
        current = name
        for _ in range(MAX_CNAME_HOPS):
            cname = self.records.get((current, "CNAME"))
            if not cname or rdtype == "CNAME":
                break
            target, ttl = cname[0]
            response.answer.append(dns.rrset.from_text(current, ttl, "IN", "CNAME", target))
            current = _key(target)
        values = self.records.get((current, rdtype))
        if values:
            ttl = min(t for _, t in values)
            rrset = dns.rrset.from_text_list(current, ttl, "IN", rdtype, [v for v, _ in values])
            response.answer.append(rrset)
        elif not response.answer:
            self._add_soa(response, name)
        built = response.to_wire()
        if len(self._answers) < MAX_KEPT_ANSWERS:
            self._answers[wire[2:], transport] = (built, name.rstrip("."), rdtype)
        return built

    def _add_soa(self, response: dns.message.Message, name: str) -> None:
        soa = self._soa_for(name)
        if soa is not None:
            response.authority.append(soa)

    # -- transports --------------------------------------------------------------

    async def serve(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        udp_thread: bool = False,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve UDP and TCP on ``host`` and ``port`` (0: a free one); ``started``
        gets the port.  A fixed port is for clients that can only ask port 53
        (libresolv: the opendkim verifier in the tests).  ``udp_thread``: UDP
        answered by a thread (:meth:`_serve_udp_in_thread`), for a server
        in a process of its own."""
        for attempt in range(5):
            udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            # a burst of queries must queue, not be dropped (the resolver would
            # see a timeout this server caused)
            udp.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4 << 20)
            await udp.bind((host, port))
            bound = udp.getsockname()[1]
            try:
                listeners = await trio.open_tcp_listeners(bound, host=host)
            except OSError:
                udp.close()  # the TCP side of this port is taken: pick another
                if attempt == 4 or port:
                    raise
                continue
            break
        self.port = bound
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve_udp_in_thread if udp_thread else self._serve_udp, udp)
            nursery.start_soon(trio.serve_listeners, self._serve_tcp, listeners)
            task_status.started(bound)

    async def _serve_udp(self, sock: trio.socket.SocketType) -> None:
        with sock:
            while True:
                data, peer = await sock.recvfrom(65535)
                reply = self.answer(data, "udp")
                if reply is not None:
                    await sock.sendto(reply, peer)

    async def _serve_udp_in_thread(self, sock: trio.socket.SocketType) -> None:
        """Answer datagrams in a thread of their own, with blocking calls.

        For a server in its own process beside a benchmark: awaiting trio's
        ``recvfrom`` and ``sendto`` (a scheduler pass each) cost ~66 us of
        CPU per query (scenario f, 100,000 domains: 6.6 s, more than the
        client's own lookups), and a non-blocking loop that waits only when
        the socket is empty still ~45 us (an epoll round per query when the
        client asks one at a time).  A blocking ``recvfrom`` is one system
        call.  Not for a server inside a test's own trio run: a thread's
        answer is no I/O event to trio's ``autojump_clock``, which could jump
        past a client's timeout meanwhile.  Stops within ``_POLL`` seconds
        of cancellation."""
        raw = socket.socket(fileno=sock.detach())
        raw.settimeout(_POLL)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    data, peer = raw.recvfrom(65535)
                except TimeoutError:
                    continue
                except OSError:
                    return  # closed under us
                reply = self.answer(data, "udp")
                if reply is not None:
                    with contextlib.suppress(OSError):  # lost, as on a network: asked again
                        raw.sendto(reply, peer)

        try:
            await trio.to_thread.run_sync(serve, abandon_on_cancel=True)
        finally:
            stop.set()
            raw.close()

    async def _serve_tcp(self, stream: trio.SocketStream) -> None:
        buf = b""
        async with stream:
            while True:
                while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                    data = await stream.receive_some(65535)
                    if not data:
                        return
                    buf += data
                size = struct.unpack("!H", buf[:2])[0]
                wire, buf = buf[2 : 2 + size], buf[2 + size :]
                reply = self.answer(wire, "tcp")
                if reply is None:
                    await trio.sleep_forever()  # blackholed: hold the connection, say nothing
                await stream.send_all(struct.pack("!H", len(reply)) + reply)


def synthetic_zone(
    server: DNSServer, domains: int, mx_hosts: int, *, domain_format: str = "d{}.test",
    ttl: int = 3600,
) -> None:
    """``domains`` domains (``domain_format.format(n)``) hosted round robin by
    ``mx_hosts`` MX hosts ``mx{k}.hosts.test``, host k at 127.0.0.{k+1}: one
    sink per loopback address stands for a provider's MX host."""
    if not 1 <= mx_hosts <= 250:
        raise ValueError("mx_hosts must be 1..250 (one loopback address each)")
    for k in range(mx_hosts):
        server.add(f"mx{k}.hosts.test", "A", f"127.0.0.{k + 1}", ttl)
    for n in range(domains):
        server.add(domain_format.format(n), "MX", f"10 mx{n % mx_hosts}.hosts.test.", ttl)


def main(argv: list[str] | None = None) -> None:
    """Serve a synthetic zone until killed; prints the port on stdout once bound."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--domains", type=int, required=True)
    p.add_argument("--mx-hosts", type=int, default=1)
    p.add_argument("--domain-format", default="d{}.test")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    server = DNSServer()
    server.log_queries = False
    synthetic_zone(server, args.domains, args.mx_hosts, domain_format=args.domain_format)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                functools.partial(server.serve, port=args.port, udp_thread=True))
            print(port, flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
