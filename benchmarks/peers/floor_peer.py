"""The pipelining floor: a bare trio loop, not a mailer.

Each connection writes a message's end of data together with the next
transaction's MAIL, RCPTs and DATA (RFC 2920), then reads the replies to
that group -- one round trip per message.  Nothing else: no templates, no
per-recipient results, no journal, no retry.  It is the yardstick for what
bulkmail's guarantees cost, and on a sink with simulated latency it measures
the one-round-trip-per-message limit that sink really allows.  It checks only
that each end of data got a 250 and each DATA a 354 (the benchmark counts what
the sink accepted), and it always sends DATA, never BDAT.
"""

from __future__ import annotations

import itertools
import time

import trio
from common import message, parse, recipients, report


class Replies:
    """Final reply lines read off one stream, by count."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def codes(self, count: int) -> list[bytes]:
        codes: list[bytes] = []
        while len(codes) < count:
            while b"\r\n" not in self.buffer:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("server closed the connection")
                self.buffer += data
            *lines, self.buffer = self.buffer.split(b"\r\n")
            codes += [line[:3] for line in lines if line[3:4] != b"-"]
        return codes


def envelope(n: int, per_message: int, domains: int) -> bytes:
    rcpts = b"".join(b"RCPT TO:<%s>\r\n" % r.encode()
                     for r in recipients(n, per_message, domains))
    return b"MAIL FROM:<news@sender.test>\r\n" + rcpts + b"DATA\r\n"


async def main() -> None:
    args = parse()
    numbers = iter(range(args.messages))
    sent = 0

    async def connection() -> None:
        async with await trio.open_tcp_stream("127.0.0.1", args.port) as stream:
            await session(stream)

    async def session(stream: trio.SocketStream) -> None:
        nonlocal sent
        replies = Replies(stream)
        await replies.codes(1)  # greeting
        await stream.send_all(b"EHLO floor.test\r\n")
        await replies.codes(1)
        group_size = args.rcpts + 2  # MAIL, RCPTs, DATA
        pending = next(numbers, None)
        if pending is None:  # more connections than messages
            await stream.send_all(b"QUIT\r\n")
            await replies.codes(1)
            return
        await stream.send_all(envelope(pending, args.rcpts, args.domains))
        if (await replies.codes(group_size))[-1] != b"354":
            raise RuntimeError("DATA was not accepted")
        for n in itertools.chain(numbers, [None]):
            content = message(pending) + b".\r\n"
            follow = b"QUIT\r\n" if n is None else envelope(n, args.rcpts, args.domains)
            await stream.send_all(content + follow)
            codes = await replies.codes(2 if n is None else 1 + group_size)
            if codes[0] != b"250" or (n is not None and codes[-1] != b"354"):
                raise RuntimeError(f"unexpected replies {codes}")
            sent += 1
            pending = n
            if n is None:
                break

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(args.connections):
            nursery.start_soon(connection)
    report(sent, sent * args.rcpts, started)


trio.run(main)
