"""smtplib in a thread pool: one connection per thread, reused."""

from __future__ import annotations

import itertools
import smtplib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from common import message, parse, recipients, report


def main() -> None:
    args = parse()
    counter = itertools.count()
    lock = threading.Lock()
    sent = [0]

    def worker() -> None:
        with smtplib.SMTP("127.0.0.1", args.port) as smtp:
            while True:
                with lock:
                    n = next(counter)
                if n >= args.messages:
                    return
                smtp.sendmail("news@sender.test", recipients(n, args.rcpts, args.domains),
                              message(n))
                with lock:
                    sent[0] += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(args.connections) as pool:
        for f in [pool.submit(worker) for _ in range(args.connections)]:
            f.result()
    report(sent[0], sent[0] * args.rcpts, started)


main()
