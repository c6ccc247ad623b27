"""A tiny authoritative DNS server on loopback for tests: UDP and TCP on one port.

Zone data comes from a dict API; answers are built with dnspython.  Failure
modes (an rcode, silence, truncation) are set per name so tests can make the
resolver meet each one.  Nothing here ever resolves a real name.
"""

from __future__ import annotations

import struct
from collections import defaultdict

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import trio

#: CNAME hops followed inside one answer, as an authoritative server would
MAX_CNAME_HOPS = 8


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
        #: names whose answers carry the AD bit, as from a validating resolver
        self.authenticated: set[str] = set()
        #: (name without trailing dot, type, "udp" | "tcp"), in arrival order
        self.queries: list[tuple[str, str, str]] = []
        self.port = 0

    # -- zone data ---------------------------------------------------------------

    def add(self, name: str, rdtype: str, value: str, ttl: int = 300) -> None:
        """Add one record, e.g. ``add("a.test", "MX", "10 mx.a.test.")``."""
        self.records[(_key(name), rdtype.upper())].append((value, ttl))
        self.names.add(_key(name))

    def set_rcode(self, name: str, rcode: dns.rcode.Rcode) -> None:
        """Answer every query for ``name`` with ``rcode`` (e.g. SERVFAIL)."""
        self.rcodes[_key(name)] = rcode

    def authenticate(self, name: str) -> None:
        """Set AD on answers for ``name`` (the resolver vouches for them: DNSSEC)."""
        self.authenticated.add(_key(name))

    def blackhole(self, name: str) -> None:
        """Never answer queries for ``name``, over UDP or TCP."""
        self.blackholed.add(_key(name))

    def force_truncation(self, name: str) -> None:
        """UDP answers for ``name`` set TC and carry no records; TCP answers are full."""
        self.truncated.add(_key(name))

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
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        question = query.question[0]
        name = question.name.to_text().lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name.rstrip("."), rdtype, transport))
        if name in self.blackholed:
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
        return response.to_wire()

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
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve UDP and TCP on ``host`` and ``port`` (0: a free one); ``started`` gets
        the port.  A fixed port is for clients that can only ask port 53 (libresolv)."""
        for attempt in range(5):
            udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
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
        port = bound
        self.port = port
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve_udp, udp)
            nursery.start_soon(trio.serve_listeners, self._serve_tcp, listeners)
            task_status.started(port)

    async def _serve_udp(self, sock: trio.socket.SocketType) -> None:
        with sock:
            while True:
                data, peer = await sock.recvfrom(65535)
                reply = self.answer(data, "udp")
                if reply is not None:
                    await sock.sendto(reply, peer)

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
