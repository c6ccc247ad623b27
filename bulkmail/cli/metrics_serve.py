"""``--metrics ADDR:PORT``: the option's parsing and the endpoint's task."""

from __future__ import annotations

import argparse
import sys

import trio

from ..observe import RunMetrics
from .inputs import InputError
from .options import host_port


def metrics_address(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[v6]:PORT``); the port is required (0 picks a free one,
    printed at the start of the run)."""
    text = text.strip()
    host, port = host_port(text, -1, allow_zero=True)
    if port == -1:
        raise argparse.ArgumentTypeError(f"{text.strip()!r}: expected ADDR:PORT,"
                                         " e.g. 127.0.0.1:9464")
    return host, port


async def start_metrics(
    nursery: trio.Nursery, metrics: RunMetrics, address: tuple[str, int], quiet: bool
) -> None:
    """Serve ``metrics`` in ``nursery``; a port that cannot be bound is bad input."""
    from ..observe.http import serve_metrics

    host, port = address
    try:  # (prometheus-client is imported at the first scrape, not here)
        bound = await nursery.start(serve_metrics, metrics.registry, host, port)
    except OSError as exc:
        raise InputError(f"--metrics {host}:{port}: {exc.strerror or exc}") from exc
    if not quiet or port == 0:  # a port picked for you is worth a line even when quiet
        print(f"metrics: http://{bound[0]}:{bound[1]}/metrics", file=sys.stderr)
