"""A sink as a process's main job: serve until SIGINT / SIGTERM, keeping a
stats file fresh so a benchmark can read the counters while it runs."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import trio
from trio_util import periodic

from .config import SinkConfig
from .server import Sink
from .stats import SinkStats

#: seconds between rewrites of ``SinkConfig.stats_file``
STATS_INTERVAL = 1.0

_log = logging.getLogger(__name__)


async def run_sink(
    config: SinkConfig, *, on_listening: Callable[[str, int], None] | None = None
) -> SinkStats:
    """Serve until SIGINT or SIGTERM; the final counters.

    ``on_listening(host, port)`` is called once the port is bound.  The
    stats file, if configured, is rewritten every second and once at exit.
    """
    sink = Sink(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        port = await sink.listen()
        if on_listening is not None:
            on_listening(config.host, port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sink.serve)
            if config.stats_file is not None:
                nursery.start_soon(_write_stats, sink.stats, config.stats_file)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    if config.stats_file is not None:
        _try_write(sink.stats, config.stats_file)
    return sink.stats


async def _write_stats(stats: SinkStats, path: str) -> None:
    async for _ in periodic(STATS_INTERVAL):
        _try_write(stats, path)


def _try_write(stats: SinkStats, path: str) -> None:
    """Rewrite the stats file if the process can; a sink that ran out of
    descriptors (or disk) keeps serving, and the next tick tries again."""
    try:
        stats.write(path)
    except OSError as exc:
        _log.warning("sink: cannot write %s: %s", path, exc.strerror or exc)
