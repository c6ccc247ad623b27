"""Plain DNS queries over long-lived UDP sockets, replies matched by query ID.

A socket per query cost more than the query: socket, connect, an epoll
registration, close -- the resolver managed 3,000-5,000 lookups a second on
loopback, and a list of 100,000 domains spent most of its time there.  Here
one connected socket per nameserver (opened when the owner's nursery starts
:meth:`UDPClient.run`) carries every query; one receiver task per socket reads
replies and hands each to the query whose ID *and* question it carries --
anything else (a stray, a late duplicate, a reply to a question we did not
ask) is dropped.  A query with no reply within ``timeout`` is sent again, to
the next nameserver, until the caller's lifetime runs out.

Only bytes move here; building and reading messages is the caller's
(:mod:`dns_wire`, dnspython).  A socket connected to the server accepts
datagrams from that address alone, and IDs are random, but one source port
serves many queries: this is a stub talking to a recursive resolver you
configured, not a resolver talking to the internet.
"""

from __future__ import annotations

import errno
import itertools
import math
import os
import random
import socket

import trio

from . import dns_wire

#: bytes of a reply we read (a UDP answer is at most 65,535 bytes)
MAX_DATAGRAM = 65535


class ClientStopped(Exception):
    """The client's sockets are gone (its nursery ended, or the server refused):
    ask some other way."""


class _Pending:
    """One query waiting for its reply."""

    __slots__ = ("question", "reply", "stopped", "task", "wake_at")

    def __init__(self, question: bytes) -> None:
        self.question = question
        #: the task to wake, while it waits (a window's query: never, the window's)
        self.task: trio.lowlevel.Task | None = None
        self.reply: bytes | None = None
        self.stopped = False
        #: when the waiting task is woken without a reply (resend, or give up)
        self.wake_at = math.inf


class _Sent(_Pending):
    """A window's query: what it needs to be sent again and handed back."""

    __slots__ = ("attempt", "deadline", "key", "qid", "window", "wire")

    def __init__(
        self, question: bytes, window: QueryWindow, key: str, qid: int, wire: bytes,
        deadline: float,
    ) -> None:
        super().__init__(question)
        #: the window whose task collects this query's reply
        self.window = window
        self.key = key
        self.qid = qid
        self.wire = wire
        self.deadline = deadline
        self.attempt = 0


class QueryWindow:
    """Queries that one task sends and collects itself: the resolve-ahead way.

    :meth:`UDPClient.exchange` parks its caller once per query, and a task per
    query in flight costs a scheduler pass and a coroutine chain each: ~60 us
    of CPU per domain routed, where a loop sending and reading on its own
    pays ~33 us (50,000 domains against the loopback server, same machine).
    Here one task sends up to ``limit`` queries, sleeps until *any* reply
    has come (or a resend falls due, or :meth:`wake` is called because more
    work arrived), and takes every reply in at once with :meth:`collect`.
    Replies are matched exactly as for ``exchange`` (ID and question).
    """

    def __init__(self, client: UDPClient, limit: int) -> None:
        self._client = client
        self.limit = limit
        self._open: dict[int, _Sent] = {}  # by query ID: sent, not handed back
        self._answered: list[_Sent] = []  # replies in, not collected yet
        self.task: trio.lowlevel.Task | None = None
        self.wake_at = math.inf

    def __len__(self) -> int:
        return len(self._open)

    def send(self, key: str, question: bytes, deadline: float) -> None:
        """Send a plain query of ``question``; its reply comes back from
        :meth:`collect` with ``key``.  OSError for a local send failure (the
        query is not in the window then); :class:`ClientStopped` when the
        client cannot serve."""
        client = self._client
        if not client._sockets:
            raise ClientStopped()
        qid = client._new_id()
        sent = _Sent(question.lower(), self, key, qid, dns_wire.query(qid, question), deadline)
        client._send_now(client._sockets[0], sent.wire)
        sent.wake_at = min(trio.current_time() + client.timeout, deadline)
        client._pending[qid] = self._open[qid] = sent

    def wake(self) -> None:
        """Wake the collecting task now, if it waits (more work it may take)."""
        _wake(self)

    async def wait(self, until: float = math.inf) -> None:
        """Sleep until a reply is in, a query's resend or deadline is due,
        ``until`` (trio's clock), or :meth:`wake`."""
        if self._answered:
            await trio.lowlevel.checkpoint()
            return
        self.wake_at = min(
            min((sent.wake_at for sent in self._open.values()), default=math.inf), until
        )
        self._client._sweep_by(self.wake_at)
        await _park(self)

    def collect(self) -> tuple[list[tuple[str, bytes, bytes]], list[str], list[str]]:
        """What is settled since the last call: ``(key, question, reply)`` for
        each reply, the keys of queries whose deadline passed with none, and
        of queries the client could no longer serve (ask those some other
        way).  Queries whose ``timeout`` passed are sent again, to the next
        server, on the way."""
        client = self._client
        answered, self._answered = self._answered, []
        replies = []
        for sent in answered:
            if self._open.pop(sent.qid, None) is sent:
                client._forget(sent.qid, sent)
                assert sent.reply is not None
                replies.append((sent.key, sent.question, sent.reply))
        expired: list[str] = []
        stopped: list[str] = []
        now = trio.current_time()
        for qid, sent in list(self._open.items()):
            if sent.stopped or not client._sockets:
                stopped.append(sent.key)
            elif sent.wake_at > now:
                continue
            elif now >= sent.deadline:
                expired.append(sent.key)
            elif self._resend(sent, now):
                continue
            else:
                stopped.append(sent.key)  # the resend was refused
            del self._open[qid]
            client._forget(qid, sent)
        return replies, expired, stopped

    def _resend(self, sent: _Sent, now: float) -> bool:
        """Send ``sent`` again, to the next server; False if refused (an ICMP
        error: the client cannot serve it)."""
        client = self._client
        sent.attempt += 1
        client.retransmits += 1
        sockets = client._sockets
        try:
            client._send_now(sockets[sent.attempt % len(sockets)], sent.wire)
        except ConnectionRefusedError:
            return False
        except OSError:
            pass  # as lost: sent again after another timeout
        sent.wake_at = min(now + client.timeout, sent.deadline)
        return True

    def close(self) -> list[str]:
        """Forget every query still open (the collecting task is done); their keys."""
        keys = []
        for qid, sent in self._open.items():
            self._client._forget(qid, sent)
            keys.append(sent.key)
        self._open.clear()
        self._answered.clear()
        return keys


async def _park(waiting: _Pending | QueryWindow) -> None:
    """Sleep until :func:`_wake` (the receiver, the sweeper, ``_stop_all``)."""
    waiting.task = trio.lowlevel.current_task()

    def abort(_: object) -> trio.lowlevel.Abort:
        waiting.task = None
        return trio.lowlevel.Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)


def _wake(waiting: _Pending | QueryWindow) -> None:
    task = waiting.task
    if task is not None:
        waiting.task = None
        trio.lowlevel.reschedule(task)


class UDPClient:
    """Queries to ``servers`` over one connected UDP socket each.

    The sockets are plain non-blocking ones driven with trio's
    ``wait_readable`` / ``wait_writable``: a send is one system call, and
    one wake-up of the receiver reads every reply that has arrived -- trio's
    socket wrapper would add two scheduler passes to each.
    """

    def __init__(self, servers: tuple[tuple[str, int], ...], timeout: float) -> None:
        if not servers:
            raise ValueError("no nameservers")
        self.servers = servers
        self.timeout = timeout
        self._sockets: list[socket.socket] = []
        self._pending: dict[int, _Pending] = {}
        self._ids = random.Random(os.urandom(16))
        #: datagrams dropped: no such query ID in flight, or not its question
        self.ignored = 0
        #: queries sent again after ``timeout`` without a reply
        self.retransmits = 0
        #: datagrams sent (first sends and resends)
        self.sent = 0
        #: the sweeper's sleep (its deadline: the earliest ``wake_at``)
        self._sweep_scope = trio.CancelScope()
        self._windows: set[QueryWindow] = set()

    @property
    def running(self) -> bool:
        return bool(self._sockets)

    async def run(self, *, task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the sockets and read replies until cancelled.  ``started(False)``
        when a socket cannot be opened (descriptors exhausted): callers then
        use a socket per query, which waits for descriptors on its own."""
        sockets: list[socket.socket] = []
        try:
            for host, port in self.servers:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.setblocking(False)
                # replies to a burst arrive together: room for them in the kernel
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                sock.connect((host, port))  # only the server's datagrams get through
        except OSError:
            for sock in sockets:
                sock.close()
            task_status.started(False)
            return
        self._sockets = sockets
        try:
            async with trio.open_nursery() as nursery:
                for sock in sockets:
                    nursery.start_soon(self._receive, sock)
                nursery.start_soon(self._sweep)
                task_status.started(True)
        finally:
            self._sockets = []
            self._stop_all()
            for sock in sockets:
                trio.lowlevel.notify_closing(sock)  # a send waiting on it gives up
                sock.close()

    async def exchange(
        self, question: bytes, deadline: float, query: bytes | None = None
    ) -> bytes | None:
        """The reply to ``query`` (a whole query message whose first two bytes,
        the ID, are replaced; by default a plain recursive query of
        ``question``, :func:`dns_wire.query`) that carries its ID and
        ``question`` (the question section's bytes), or None if none came by
        ``deadline`` (trio's clock); sent again every ``timeout``, to the next
        server.  OSError for a local send failure; :class:`ClientStopped`
        when the client cannot serve."""
        if not self._sockets:
            raise ClientStopped()
        pending = _Pending(question.lower())
        qid = self._new_id()
        self._pending[qid] = pending
        wire = (
            dns_wire.query(qid, question) if query is None
            else qid.to_bytes(2, "big") + query[2:]
        )
        try:
            attempt = 0
            while True:
                sockets = self._sockets
                if not sockets or pending.stopped:
                    raise ClientStopped()
                await self._send(sockets[attempt % len(sockets)], wire)
                if pending.reply is None and not pending.stopped:
                    # woken by the sweeper at the earlier of the resend time and
                    # the deadline: no cancel scope per attempt (see _sweep)
                    pending.wake_at = min(trio.current_time() + self.timeout, deadline)
                    self._sweep_by(pending.wake_at)
                    await _park(pending)
                if pending.reply is not None:
                    return pending.reply
                if pending.stopped:
                    raise ClientStopped()
                if trio.current_time() >= deadline:
                    return None
                attempt += 1
                self.retransmits += 1
        finally:
            self._forget(qid, pending)

    def _sweep_by(self, wake_at: float) -> None:
        """Have the sweeper awake by ``wake_at``, a new query's resend or deadline."""
        if wake_at < self._sweep_scope.deadline:
            self._sweep_scope.deadline = wake_at

    def _send_now(self, sock: socket.socket, wire: bytes) -> None:
        """One datagram, or BlockingIOError / ConnectionRefusedError / OSError."""
        sock.send(wire)
        self.sent += 1

    def _forget(self, qid: int, pending: _Pending) -> None:
        if self._pending.get(qid) is pending:
            del self._pending[qid]

    def window(self, limit: int) -> QueryWindow:
        """A :class:`QueryWindow` over this client's sockets; the sweeper wakes
        it for resends and deadlines while :meth:`run` runs."""
        window = QueryWindow(self, limit)
        self._windows.add(window)
        return window

    def close_window(self, window: QueryWindow) -> list[str]:
        """:meth:`QueryWindow.close`, and the sweeper forgets it."""
        self._windows.discard(window)
        return window.close()

    async def _send(self, sock: socket.socket, wire: bytes) -> None:
        while True:
            try:
                self._send_now(sock, wire)
                return
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_writable(sock)
                except trio.ClosedResourceError as exc:  # the client stopped meanwhile
                    raise ClientStopped() from exc
            except ConnectionRefusedError as exc:  # an ICMP error from an earlier send
                raise ClientStopped() from exc

    def _new_id(self) -> int:
        pending = self._pending
        while True:
            qid = self._ids.getrandbits(16)
            if qid not in pending:
                return qid

    async def _receive(self, sock: socket.socket) -> None:
        pending = self._pending
        read = 0
        while True:
            try:
                data = sock.recv(MAX_DATAGRAM)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                read = 0
                continue
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:
                    # nobody listens there: the queries waiting on it learn now,
                    # not after their lifetime (dnspython then reports the refusal)
                    self._stop_all()
                await trio.lowlevel.checkpoint()
                continue
            read += 1
            if read % 64 == 0:
                await trio.lowlevel.checkpoint()  # a flood must not starve the rest
            if len(data) < 12 or not data[2] & 0x80:
                self.ignored += 1  # too short for a header, or not a response
                continue
            waiting = pending.get((data[0] << 8) | data[1])
            if (
                waiting is None or waiting.reply is not None
                or data[4:6] != b"\x00\x01"
                or data[12 : 12 + len(waiting.question)].lower() != waiting.question
            ):
                self.ignored += 1
                continue
            waiting.reply = data
            if isinstance(waiting, _Sent):
                waiting.window._answered.append(waiting)
                _wake(waiting.window)
            else:
                _wake(waiting)

    async def _sweep(self) -> None:
        """Wake each waiting query whose ``wake_at`` has come.

        A cancel scope per attempt (``move_on_at``) cost two trio scope
        changes and ~8 us per query (cProfile, 50,000 domains under MTA-STS:
        150,000 scopes, 3 per domain).  Here one task sleeps until the
        earliest ``wake_at`` among the queries in flight (at most the lookup
        limits' worth, so a scan is cheap): as every query waits the same
        ``timeout``, a new query rarely moves that earlier, and in steady
        traffic this task wakes about once per ``timeout``."""
        while True:
            now = trio.current_time()
            earliest = math.inf
            # queries a task of their own waits for, and windows (_wake changes neither)
            for waiting in itertools.chain[_Pending | QueryWindow](
                self._pending.values(), self._windows
            ):
                if waiting.task is None:
                    continue  # answered, stopped, between attempts; a window's own
                if waiting.wake_at <= now:
                    _wake(waiting)
                elif waiting.wake_at < earliest:
                    earliest = waiting.wake_at
            self._sweep_scope = trio.CancelScope(deadline=earliest)
            with self._sweep_scope:
                await trio.sleep_forever()

    def _stop_all(self) -> None:
        for waiting in self._pending.values():
            if waiting.reply is None:
                waiting.stopped = True
                _wake(waiting.window if isinstance(waiting, _Sent) else waiting)


class SharedClient:
    """An owner's :class:`UDPClient` while ``serve`` runs in its nursery: the
    MX router's lookups and the TLS policy lookups each keep one."""

    __slots__ = ("client", "servers", "timeout")

    def __init__(self, servers: tuple[tuple[str, int], ...], timeout: float) -> None:
        self.servers = servers
        self.timeout = timeout
        #: the client while ``serve`` runs; queries fall back to a socket each without it
        self.client: UDPClient | None = None

    async def serve(
        self, *, task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep shared UDP sockets to the nameservers open until cancelled
        (``started(False)``: none to open, or already served)."""
        if self.client is not None or not self.servers:
            task_status.started(False)
            return
        client = self.client = UDPClient(self.servers, self.timeout)
        try:
            await client.run(task_status=task_status)
        finally:
            if self.client is client:
                self.client = None


class SharesSockets:
    """For an owner of a :class:`SharedClient` (``_shared_client``): ``serve``
    in its nursery, and the client while it runs."""

    _shared_client: SharedClient

    async def serve(
        self, *, task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep shared UDP sockets to the nameservers open until cancelled;
        meanwhile plain queries go over them, else each opens a socket."""
        await self._shared_client.serve(task_status=task_status)

    @property
    def client(self) -> UDPClient | None:
        """The shared-socket client while :meth:`serve` runs (for tests and reports)."""
        return self._shared_client.client

