"""``GET /metrics`` over HTTP/1.x, served by trio in the run's own event loop.

Why not prometheus-client's ``start_http_server`` (a WSGI server in a
thread)?  A scrape there reads the counters from another thread while the
trio thread updates them -- safe only with a lock on every update, which is
exactly the per-transaction cost this must not add -- and the thread
outlives the run's nursery.  Here a scrape is one short synchronous step of
the event loop (the exposition of a few hundred bounded series takes about a
millisecond), it sees a consistent snapshot, the listener closes with the
run, and a port already in use is an error at start, not a dying thread.

One request per connection (``Connection: close``); a request that does not
arrive within ``REQUEST_TIMEOUT`` or exceeds ``MAX_REQUEST`` bytes is dropped.

prometheus-client itself (about 12 ms of imports, with ``http.server`` and
``wsgiref``) is imported at the first scrape, in a worker thread, not when
the endpoint starts: binding the port is all a run pays before it sends, a
run nobody scrapes never pays the rest, and the first scrape's import does
not stall the event loop.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry


REQUEST_TIMEOUT = 10.0
MAX_REQUEST = 16384


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


async def _read_request(stream: trio.abc.Stream) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        data += chunk
        if len(data) > MAX_REQUEST:
            return None
    return data


def answer(registry: CollectorRegistry, request: bytes) -> bytes:
    """The whole HTTP response to one request (no I/O: tests call it too)."""
    head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.replace("\r\n", "\n").split("\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _response("400 Bad Request", "text/plain", b"bad request\n")
    method, target = parts[0], parts[1]
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", "text/plain", b"GET /metrics\n")
    if target.split("?", 1)[0] not in ("/metrics", "/"):
        return _response("404 Not Found", "text/plain", b"try /metrics\n")
    accept = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "accept":
            accept = value.strip()
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept)
    body = encoder(registry)
    response = _response("200 OK", content_type, body)
    return response[: len(response) - len(body)] if method == "HEAD" else response


async def serve_metrics(
    registry: CollectorRegistry | Callable[[], CollectorRegistry],
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``registry`` at http://host:port/metrics until cancelled; started
    with ``nursery.start``, it reports the address really bound (port 0 picks one).

    ``registry`` may be a function that makes it (``RunMetrics.registry``):
    then it is made at the first scrape, after prometheus-client was imported
    in a worker thread."""
    made: list[CollectorRegistry] = []
    loading = trio.Lock()

    async def the_registry() -> CollectorRegistry:
        if not callable(registry):
            return registry
        async with loading:  # (two first scrapes at once: one import, one registry)
            if not made:
                await trio.to_thread.run_sync(importlib.import_module,
                                              "prometheus_client.exposition")
                made.append(registry())
        return made[0]

    async def handle(stream: trio.abc.Stream) -> None:
        async with stream:
            with trio.move_on_after(REQUEST_TIMEOUT), contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError, OSError
            ):
                request = await _read_request(stream)
                if request is not None:
                    await stream.send_all(answer(await the_registry(), request))

    listeners = await trio.open_tcp_listeners(port, host=host)
    sockname = listeners[0].socket.getsockname()
    async with trio.open_nursery() as nursery:
        task_status.started((str(sockname[0]), int(sockname[1])))
        await trio.serve_listeners(handle, listeners, handler_nursery=nursery)
