"""A tiny authoritative DNS server on loopback for tests (UDP and TCP, one port).

Answers are built with dnspython; nothing ever resolves a real name.
"""

from __future__ import annotations

import struct
from collections import defaultdict

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import trio


class DNSServer:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
        self.rcodes: dict[str, int] = {}
        self.blackholed: set[str] = set()
        self.truncated: set[str] = set()
        self.queries: list[tuple[str, str, str]] = []
        self.port = 0

    @staticmethod
    def _key(name: str) -> str:
        return name.lower().rstrip(".") + "."

    def add(self, name: str, rdtype: str, value: str, ttl: int = 300) -> None:
        self.records[(self._key(name), rdtype.upper())].append((value, ttl))

    def set_rcode(self, name: str, rcode: int) -> None:
        self.rcodes[self._key(name)] = rcode

    def blackhole(self, name: str) -> None:
        self.blackholed.add(self._key(name))

    def force_truncation(self, name: str) -> None:
        self.truncated.add(self._key(name))

    def _known(self, name: str) -> bool:
        return any(key[0] == name for key in self.records)

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        name = question.name.to_text().lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype, transport))
        if name in self.blackholed:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if name in self.rcodes:
            response.set_rcode(self.rcodes[name])
            return response.to_wire()
        if not self._known(name):
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()
        if name in self.truncated and transport == "udp":
            response.flags |= dns.flags.TC
            return response.to_wire()
        current = name
        for _ in range(8):  # follow CNAMEs we know
            cnames = self.records.get((current, "CNAME"))
            if cnames and rdtype != "CNAME":
                target, ttl = cnames[0]
                response.answer.append(
                    dns.rrset.from_text(current, ttl, "IN", "CNAME", target)
                )
                current = self._key(target)
                continue
            break
        values = self.records.get((current, rdtype), [])
        if values:
            ttl = min(t for _, t in values)
            response.answer.append(
                dns.rrset.from_text_list(current, ttl, "IN", rdtype, [v for v, _ in values])
            )
        return response.to_wire()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await udp.bind(("127.0.0.1", 0))
        self.port = udp.getsockname()[1]
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._udp_loop, udp)
            nursery.start_soon(trio.serve_listeners, self._tcp_client, listeners)
            task_status.started(self.port)

    async def _udp_loop(self, sock: trio.socket.SocketType) -> None:
        with sock:
            while True:
                data, peer = await sock.recvfrom(65535)
                reply = self.answer(data, "udp")
                if reply is not None:
                    await sock.sendto(reply, peer)

    async def _tcp_client(self, stream: trio.SocketStream) -> None:
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
                    await trio.sleep_forever()
                    return
                await stream.send_all(struct.pack("!H", len(reply)) + reply)

