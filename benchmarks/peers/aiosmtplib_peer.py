"""aiosmtplib (asyncio): one client per connection, sharing a queue of messages."""

from __future__ import annotations

import asyncio
import time

import aiosmtplib
from common import message, parse, recipients, report


async def main() -> None:
    args = parse()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(args.messages):
        queue.put_nowait(n)
    sent = 0

    async def worker() -> None:
        nonlocal sent
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=args.port, start_tls=False)
        await smtp.connect()
        while not queue.empty():
            n = queue.get_nowait()
            await smtp.sendmail("news@sender.test", recipients(n, args.rcpts, args.domains),
                                message(n))
            sent += 1
        await smtp.quit()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.connections)))
    report(sent, sent * args.rcpts, started)


asyncio.run(main())
