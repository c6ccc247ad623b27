"""Shared bits of the peer load generators: arguments and the message they send."""

from __future__ import annotations

import argparse
import json
import time


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--messages", type=int, required=True)
    p.add_argument("--rcpts", type=int, default=1, help="recipients per message")
    p.add_argument("--connections", type=int, default=10)
    p.add_argument("--domains", type=int, default=1)
    return p.parse_args()


def message(n: int) -> bytes:
    return (
        f"From: news@sender.test\r\nTo: reader{n}@example.test\r\nSubject: issue {n}\r\n"
        f"\r\nHello reader {n}, this is your personalised newsletter.\r\n"
    ).encode()


def recipients(n: int, per_message: int, domains: int) -> list[str]:
    start = n * per_message
    return [f"r{i}@d{i % domains}.test" for i in range(start, start + per_message)]


def report(messages: int, recipients: int, started: float) -> None:
    print(json.dumps({"messages": messages, "recipients": recipients,
                      "seconds": time.perf_counter() - started}))
