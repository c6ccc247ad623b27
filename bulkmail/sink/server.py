"""The sink as a trio server: sockets, TLS, timeouts and latency around the
sans-IO :class:`~.protocol.SinkConnection`.

Built for pipelining clients: each read is handled completely and every
reply it produced goes out in one write, so a pipelined group costs one
round trip -- and ``latency`` (a simulated round trip, counted from the
read as a network's would be) is paid once per group, not per reply.  A
session's failure, whatever it is, ends that session only: hostile clients
cannot take the listener down.
"""

from __future__ import annotations

import itertools
import logging

import trio

from ..lean_stream import lean, tls_transport
from . import replies
from .config import SinkConfig
from .faults import FaultPolicy
from .protocol import Accepted, SinkConnection
from .stats import ReceivedMessage, SinkStats

#: bytes asked of the kernel per read: big, so a pipelined burst is one batch
READ_SIZE = 256 * 1024
#: seconds a refused client gets to take its 421 (a TLS handshake first, if implicit)
REFUSAL_TIMEOUT = 10.0

_log = logging.getLogger(__name__)
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class Sink:
    """A local SMTP server that counts what it accepts; see :class:`SinkConfig`.

    Run it with ``port = await nursery.start(sink.serve)``; cancel the
    nursery to stop it.
    """

    def __init__(self, config: SinkConfig | None = None) -> None:
        self.config = config if config is not None else SinkConfig()
        self.stats = SinkStats()
        #: accepted messages, in the order their 250 was written (``record_messages``)
        self.messages: list[ReceivedMessage] = []
        #: the bound port, once :meth:`serve` has started
        self.port = 0
        self._faults = FaultPolicy(self.config)
        self._ssl = self.config.server_ssl_context()
        self._session_ids = itertools.count(1)
        self._listeners: list[trio.SocketListener] | None = None

    async def listen(self) -> int:
        """Bind now, before any nursery (a port in use is then a plain
        OSError, not an exception group); the port.  :meth:`serve` calls it."""
        if self._listeners is None:
            self._listeners = await trio.open_tcp_listeners(
                self.config.port, host=self.config.host
            )
            self.port = self._listeners[0].socket.getsockname()[1]
        return self.port

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; reports the bound port when started."""
        await self.listen()
        listeners, self._listeners = self._listeners or [], None
        try:
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, listeners)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            peer = str(stream.socket.getpeername()[0])
            local = str(stream.socket.getsockname()[0])
        except OSError:  # already gone
            await trio.aclose_forcefully(stream)
            return
        cap = self.config.max_connections
        if cap is not None and self.stats.active_sessions >= cap:
            await self._refuse(stream)
            return
        self.stats.session_started(peer, local)
        # plaintext on the lean stream: a busy sink's per-read cost is mostly
        # trio's stream machinery
        lean_stream = None if self.config.implicit_tls else lean(stream)
        try:
            await self._session(lean_stream or stream, peer)
        except _BROKEN:
            pass
        except Exception:
            _log.exception("sink session with %s failed", peer)
        finally:
            self.stats.session_ended(local)
            if lean_stream is not None:
                lean_stream.detach()
            await trio.aclose_forcefully(stream)

    async def _refuse(self, stream: trio.SocketStream) -> None:
        """421 to a client beyond ``max_connections``, then close: it learns at
        once to come back later, and its descriptor is free again."""
        self.stats.refused_connections += 1
        try:
            with trio.move_on_after(min(self.config.idle_timeout, REFUSAL_TIMEOUT)):
                reply_stream: trio.abc.Stream = stream
                if self.config.implicit_tls:
                    reply_stream = await self._start_tls(stream)
                await reply_stream.send_all(replies.TOO_MANY_CONNECTIONS)
        except _BROKEN:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _session(self, stream: trio.abc.Stream, peer: str) -> None:
        config = self.config
        conn = SinkConnection(
            config, self._faults, self.stats, peer,
            tls_available=self._ssl is not None,
            tls_active=config.implicit_tls,
            session_id=next(self._session_ids),
        )
        idle, latency = config.idle_timeout, config.latency
        with trio.CancelScope(deadline=trio.current_time() + idle) as timeout:
            if config.implicit_tls:
                stream = await self._start_tls(stream)
            if latency:
                await trio.sleep(latency)
            await stream.send_all(conn.greeting())
            while True:
                timeout.deadline = trio.current_time() + idle
                data = await stream.receive_some(READ_SIZE)
                if not data:
                    return
                # the simulated round trip runs from the read, so the time the
                # sink spends on the batch is inside it, not added to it
                arrived = trio.current_time()
                batch = conn.receive_data(data)
                if batch:
                    if latency:
                        await trio.sleep_until(arrived + latency)
                    await self._send(stream, batch, conn.take_accepted())
                if conn.closing:
                    return
                if conn.wants_tls:
                    stream = await self._start_tls(stream)
                    conn.tls_started()
        if timeout.cancelled_caught:
            with trio.move_on_after(1):
                await stream.send_all(replies.IDLE_TIMEOUT)

    async def _start_tls(self, stream: trio.abc.Stream) -> trio.SSLStream[trio.abc.Stream]:
        assert self._ssl is not None
        tls = trio.SSLStream(tls_transport(stream), self._ssl, server_side=True)
        await tls.do_handshake()
        return tls

    async def _send(self, stream: trio.abc.Stream, batch: bytes, accepted: Accepted | None) -> None:
        """Write one batch of replies; its accepted messages count only if it was written.

        They are counted before the write and taken back if it fails: once
        a client has read its 250, the counters already show the message.
        """
        self.stats.reply_batches += 1
        if accepted is None:
            await stream.send_all(batch)
            return
        self._count(accepted, 1)
        try:
            await stream.send_all(batch)
        except BaseException:
            self._count(accepted, -1)
            raise

    def _count(self, accepted: Accepted, sign: int) -> None:
        stats = self.stats
        stats.messages += sign * accepted.messages
        stats.recipients += sign * accepted.recipients
        stats.bytes += sign * accepted.octets
        if sign > 0:
            self.messages.extend(accepted.records)
        else:
            for record in accepted.records:
                self.messages.remove(record)
