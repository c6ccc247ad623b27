"""The local SMTP sink: a trio server that answers like a real MX, fast.

Built for pipelining clients: each read is parsed completely and every reply
it produces goes out in one write, so a client's pipelined group costs one
round trip -- and ``latency`` (a simulated round trip) is paid once per
group, not per reply.  Memory per connection is bounded: command lines are
capped, message content is capped by SIZE, idle clients are dropped.
"""

from __future__ import annotations

import base64
import binascii
import ssl
from contextlib import suppress
from dataclasses import dataclass, field

import trio

from .faults import ACCEPTED, FaultPolicy, Faults
from .stats import SinkStats

MAX_COMMAND_LINE = 4096
MAX_BAD_COMMANDS = 20


@dataclass(frozen=True)
class SinkConfig:
    host: str = "127.0.0.1"
    port: int = 0
    hostname: str = "sink.bulkmail.test"
    tls_cert: str | None = None
    tls_key: str | None = None
    ssl_context: ssl.SSLContext | None = None
    implicit_tls: bool = False
    auth: tuple[str, str] | None = None
    pipelining: bool = True
    chunking: bool = True
    max_message_size: int = 50 * 1024 * 1024
    idle_timeout: float = 300.0
    #: seconds added once per reply group, as if the client were that far away
    latency: float = 0.0
    defer_rate: float = 0.0
    reject_rate: float = 0.0
    greylist: bool = False
    max_rcpts: int | None = None
    drop_rate: float = 0.0
    seed: int | None = None
    record_messages: bool = False

    def server_context(self) -> ssl.SSLContext | None:
        if self.ssl_context is not None:
            return self.ssl_context
        if self.tls_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.tls_cert, self.tls_key)
            return context
        return None

    def faults(self) -> Faults:
        return Faults(
            self.defer_rate, self.reject_rate, self.greylist, self.max_rcpts, self.drop_rate
        )


@dataclass(slots=True)
class ReceivedMessage:
    peer: str
    mail_from: str
    rcpts: list[str]
    content: bytes


@dataclass(slots=True)
class _State:
    """Per-connection protocol state."""

    peer: str
    tls: bool
    greeted: bool = False
    authenticated: bool = False
    sender: str | None = None
    rcpts: list[str] = field(default_factory=list)
    in_data: bool = False
    bdat: bytearray | None = None
    bdat_failed: bytes | None = None
    bdat_remaining: int = 0
    bdat_last: bool = False
    bdat_active: bool = False
    auth_step: str | None = None
    auth_user: bytes = b""
    bad_commands: int = 0


class _Close(Exception):
    """End the session after flushing what is queued."""


class Sink:
    def __init__(self, config: SinkConfig | None = None) -> None:
        self.config = config or SinkConfig()
        self.stats = SinkStats()
        self.messages: list[ReceivedMessage] = []
        self.port = 0
        self._faults = FaultPolicy(self.config.faults(), self.config.seed)
        self._ssl = self.config.server_context()
        self._ehlo_plain = self._ehlo(tls=False)
        self._ehlo_tls = self._ehlo(tls=True)

    def _ehlo(self, *, tls: bool) -> bytes:
        c = self.config
        lines = [c.hostname]
        if c.pipelining:
            lines.append("PIPELINING")
        lines += [f"SIZE {c.max_message_size}", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
        lines.append("DSN")
        if c.chunking:
            lines.append("CHUNKING")
        if self._ssl is not None and not tls and not c.implicit_tls:
            lines.append("STARTTLS")
        if c.auth is not None and (tls or self._ssl is None):
            lines.append("AUTH PLAIN LOGIN")
        out = "".join(f"250-{line}\r\n" for line in lines[:-1]) + f"250 {lines[-1]}\r\n"
        return out.encode()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            peer = stream.socket.getpeername()[0]
        except OSError:
            return
        stats = self.stats
        stats.session_started(peer)
        try:
            if self.config.implicit_tls and self._ssl is not None:
                tls_stream = trio.SSLStream(stream, self._ssl, server_side=True)
                with trio.move_on_after(30):
                    await tls_stream.do_handshake()
                    await self._session(tls_stream, _State(peer, tls=True))
            else:
                await self._session(stream, _State(peer, tls=False))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, _Close):
            pass
        finally:
            stats.session_ended()
            errors = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
            with trio.CancelScope(shield=True), trio.move_on_after(1), suppress(*errors):
                await stream.aclose()

    async def _session(self, stream: trio.abc.Stream, state: _State) -> None:
        config = self.config
        latency = config.latency
        if latency:
            await trio.sleep(latency)
        await stream.send_all(f"220 {config.hostname} ESMTP bulkmail sink\r\n".encode())
        buf = bytearray()
        out: list[bytes] = []
        while True:
            with trio.move_on_after(config.idle_timeout) as idle:
                data = await stream.receive_some(65536)
            if idle.cancelled_caught:
                await stream.send_all(b"421 4.4.2 idle timeout, closing\r\n")
                return
            if not data:
                return
            buf += data
            try:
                starttls = self._process(buf, state, out)
            except _Close:
                if out:
                    if latency:
                        await trio.sleep(latency)
                    await stream.send_all(b"".join(out))
                return
            if out:
                if latency:
                    await trio.sleep(latency)
                await stream.send_all(b"".join(out))
                out.clear()
            if starttls:
                # RFC 3207 §4: anything pipelined after STARTTLS is discarded
                buf.clear()
                assert self._ssl is not None
                tls_stream = trio.SSLStream(stream, self._ssl, server_side=True)
                with trio.fail_after(30):
                    await tls_stream.do_handshake()
                stream = tls_stream
                state.tls = True
                state.greeted = False
                state.sender = None
                state.rcpts = []

    # -- parsing ---------------------------------------------------------------

    def _process(self, buf: bytearray, state: _State, out: list[bytes]) -> bool:
        """Handle every complete unit in ``buf``; True when STARTTLS must begin."""
        pos = 0
        n = len(buf)
        while pos < n:
            if state.bdat_active:
                pos = self._bdat_bytes(buf, pos, state, out)
                if state.bdat_active:
                    break
                continue
            if state.in_data:
                if buf.startswith(b".\r\n", pos):  # empty content
                    content, pos = b"", pos + 3
                else:
                    end = buf.find(b"\r\n.\r\n", pos)
                    if end < 0:
                        if n - pos > self.config.max_message_size + 8:
                            out.append(b"552 5.3.4 Message too big\r\n")
                            raise _Close
                        break
                    content, pos = bytes(buf[pos : end + 2]), end + 5
                state.in_data = False
                self._message_done(state, content, stuffed=True, out=out)
                continue
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                if n - pos > MAX_COMMAND_LINE:
                    out.append(b"500 5.5.2 Line too long\r\n")
                    raise _Close
                break
            line = bytes(buf[pos:nl])
            pos = nl + 2
            if len(line) > MAX_COMMAND_LINE:
                out.append(b"500 5.5.2 Line too long\r\n")
                self._bad(state)
                continue
            if self._command(line, state, out):
                del buf[:pos]
                return True
        del buf[:pos]
        return False

    def _bad(self, state: _State) -> None:
        state.bad_commands += 1
        if state.bad_commands > MAX_BAD_COMMANDS:
            raise _Close

    def _command(self, line: bytes, state: _State, out: list[bytes]) -> bool:
        verb = line[:4].upper()
        if state.auth_step is not None:
            self._auth_continue(line, state, out)
            return False
        if verb == b"MAIL":
            self._mail(line, state, out)
        elif verb == b"RCPT":
            self._rcpt(line, state, out)
        elif verb == b"DATA":
            if state.sender is None:
                out.append(b"503 5.5.1 Error: need MAIL command\r\n")
            elif not state.rcpts:
                out.append(b"554 5.5.1 Error: no valid recipients\r\n")
            else:
                out.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                state.in_data = True
        elif verb == b"BDAT":
            self._bdat_command(line, state, out)
        elif verb == b"EHLO":
            state.greeted = True
            state.sender, state.rcpts = None, []
            out.append(self._ehlo_tls if state.tls else self._ehlo_plain)
        elif verb == b"HELO":
            state.greeted = True
            state.sender, state.rcpts = None, []
            out.append(f"250 {self.config.hostname}\r\n".encode())
        elif verb == b"RSET":
            state.sender, state.rcpts = None, []
            out.append(b"250 2.0.0 Ok\r\n")
        elif verb == b"NOOP":
            out.append(b"250 2.0.0 Ok\r\n")
        elif verb == b"QUIT":
            out.append(b"221 2.0.0 Bye\r\n")
            raise _Close
        elif verb == b"VRFY":
            out.append(b"252 2.0.0 Cannot VRFY user, but will accept message\r\n")
        elif verb == b"STAR" and line.upper() == b"STARTTLS":
            if self._ssl is None or state.tls:
                out.append(b"502 5.5.1 STARTTLS not available\r\n")
                return False
            out.append(b"220 2.0.0 Ready to start TLS\r\n")
            return True
        elif verb == b"AUTH":
            self._auth_start(line, state, out)
        else:
            out.append(b"500 5.5.2 Error: command not recognized\r\n")
            self._bad(state)
        return False

    def _mail(self, line: bytes, state: _State, out: list[bytes]) -> None:
        if not state.greeted:
            out.append(b"503 5.5.1 Error: send HELO/EHLO first\r\n")
            return
        if state.sender is not None:
            out.append(b"503 5.5.1 Error: nested MAIL command\r\n")
            return
        if self.config.auth is not None and not state.authenticated:
            out.append(b"530 5.7.0 Authentication required\r\n")
            return
        upper = line.upper()
        if not upper.startswith(b"MAIL FROM:"):
            out.append(b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n")
            return
        lt, gt = line.find(b"<"), line.find(b">")
        if lt < 0 or gt < lt:
            out.append(b"501 5.1.7 Bad sender address syntax\r\n")
            return
        size_at = upper.find(b" SIZE=", gt)
        if size_at >= 0:
            digits = upper[size_at + 6 :].split(b" ", 1)[0]
            if digits.isdigit() and int(digits) > self.config.max_message_size:
                out.append(b"552 5.3.4 Message size exceeds fixed limit\r\n")
                return
        state.sender = line[lt + 1 : gt].decode("utf-8", "replace")
        state.rcpts = []
        self.stats.transactions += 1
        out.append(b"250 2.1.0 Ok\r\n")

    def _rcpt(self, line: bytes, state: _State, out: list[bytes]) -> None:
        if state.sender is None:
            out.append(b"503 5.5.1 Error: need MAIL command\r\n")
            return
        lt, gt = line.find(b"<"), line.find(b">")
        if lt < 0 or gt < lt or not line.upper().startswith(b"RCPT TO:"):
            out.append(b"501 5.1.3 Bad recipient address syntax\r\n")
            return
        address = line[lt + 1 : gt].decode("utf-8", "replace")
        reply = self._faults.rcpt_reply(address, len(state.rcpts))
        if reply is ACCEPTED:
            state.rcpts.append(address)
        elif reply[0] == 0x34:  # '4'
            self.stats.deferred += 1
        else:
            self.stats.rejected += 1
        out.append(reply)

    def _message_done(
        self, state: _State, content: bytes, *, stuffed: bool, out: list[bytes]
    ) -> None:
        if self._faults.drop_now():
            self.stats.dropped += 1
            raise _Close
        size = len(content)
        if stuffed:
            dots = content.count(b"\r\n..") + (1 if content.startswith(b"..") else 0)
            size -= dots
        if size > self.config.max_message_size:
            out.append(b"552 5.3.4 Message too big\r\n")
        else:
            stats = self.stats
            stats.messages += 1
            stats.recipients += len(state.rcpts)
            stats.bytes += size
            if self.config.record_messages:
                if stuffed:
                    body = content[1:] if content.startswith(b"..") else content
                    content = body.replace(b"\r\n..", b"\r\n.")
                self.messages.append(
                    ReceivedMessage(state.peer, state.sender or "", list(state.rcpts), content)
                )
            out.append(b"250 2.0.0 Ok: queued\r\n")
        state.sender, state.rcpts = None, []

    # -- BDAT (RFC 3030) -------------------------------------------------------

    def _bdat_command(self, line: bytes, state: _State, out: list[bytes]) -> None:
        parts = line.split()
        well_formed = (
            2 <= len(parts) <= 3
            and parts[1].isdigit()
            and (len(parts) == 2 or parts[2].upper() == b"LAST")
        )
        if not well_formed:
            out.append(b"501 5.5.4 Syntax: BDAT size [LAST]\r\n")
            raise _Close  # the chunk's length is unknown: we cannot resynchronise
        state.bdat_remaining = int(parts[1])
        state.bdat_last = len(parts) == 3
        state.bdat_active = True
        if state.bdat is None:
            state.bdat = bytearray()
            if state.sender is None:
                state.bdat_failed = b"503 5.5.1 Error: need MAIL command\r\n"
            elif not state.rcpts:
                state.bdat_failed = b"554 5.5.1 Error: no valid recipients\r\n"

    def _bdat_bytes(self, buf: bytearray, pos: int, state: _State, out: list[bytes]) -> int:
        """Consume chunk octets; at the chunk's end, reply (and finish on LAST)."""
        message = state.bdat
        assert message is not None
        take = min(state.bdat_remaining, len(buf) - pos)
        if state.bdat_failed is None:
            if len(message) + take <= self.config.max_message_size:
                message += buf[pos : pos + take]
            else:
                state.bdat_failed = b"552 5.3.4 Message too big\r\n"
        pos += take
        state.bdat_remaining -= take
        if state.bdat_remaining:
            return pos
        state.bdat_active = False
        if not state.bdat_last:
            out.append(state.bdat_failed or b"250 2.0.0 chunk received\r\n")
            return pos
        failed = state.bdat_failed
        state.bdat, state.bdat_failed = None, None
        if failed is not None:
            out.append(failed)
            state.sender, state.rcpts = None, []
        else:
            self._message_done(state, bytes(message), stuffed=False, out=out)
        return pos

    # -- AUTH ------------------------------------------------------------------

    def _auth_start(self, line: bytes, state: _State, out: list[bytes]) -> None:
        if self.config.auth is None:
            out.append(b"502 5.5.1 AUTH not available\r\n")
            return
        if self._ssl is not None and not state.tls:
            out.append(b"538 5.7.11 Encryption required for requested authentication mechanism\r\n")
            return
        parts = line.split()
        mechanism = parts[1].upper() if len(parts) > 1 else b""
        if mechanism == b"PLAIN":
            if len(parts) > 2:
                self._auth_plain(parts[2], state, out)
            else:
                state.auth_step = "plain"
                out.append(b"334 \r\n")
        elif mechanism == b"LOGIN":
            if len(parts) > 2:
                state.auth_step, state.auth_user = "login-pass", _b64decode(parts[2])
                out.append(b"334 UGFzc3dvcmQ6\r\n")
            else:
                state.auth_step = "login-user"
                out.append(b"334 VXNlcm5hbWU6\r\n")
        else:
            out.append(b"504 5.5.4 Unrecognized authentication type\r\n")

    def _auth_continue(self, line: bytes, state: _State, out: list[bytes]) -> None:
        step, user = state.auth_step, state.auth_user
        state.auth_step = None
        if line == b"*":
            out.append(b"501 5.7.0 Authentication cancelled\r\n")
        elif step == "plain":
            self._auth_plain(line, state, out)
        elif step == "login-user":
            state.auth_step, state.auth_user = "login-pass", _b64decode(line)
            out.append(b"334 UGFzc3dvcmQ6\r\n")
        else:
            self._auth_check(user, _b64decode(line), state, out)

    def _auth_plain(self, token: bytes, state: _State, out: list[bytes]) -> None:
        decoded = _b64decode(token)
        parts = decoded.split(b"\0")
        if len(parts) != 3:
            out.append(b"501 5.5.2 Malformed AUTH PLAIN\r\n")
            return
        self._auth_check(parts[1], parts[2], state, out)

    def _auth_check(self, user: bytes, password: bytes, state: _State, out: list[bytes]) -> None:
        assert self.config.auth is not None
        expected_user, expected_password = self.config.auth
        if user == expected_user.encode() and password == expected_password.encode():
            state.authenticated = True
            out.append(b"235 2.7.0 Authentication successful\r\n")
        else:
            out.append(b"535 5.7.8 Authentication credentials invalid\r\n")


def _b64decode(data: bytes) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return b""
