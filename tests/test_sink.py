"""The sink as a server: counts exactly, answers pipelined groups in one write,
injects faults deterministically, survives hostile clients -- over real sockets."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys

import pytest
import trio

from bulkmail.sink import Sink, SinkConfig

from .conftest import TLS


async def start(nursery: trio.Nursery, **kwargs: object) -> Sink:
    sink = Sink(SinkConfig(**kwargs))  # type: ignore[arg-type]
    await nursery.start(sink.serve)
    return sink


class Client:
    """A raw client: write bytes, read replies (for pipelining and abuse)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    @classmethod
    async def connect(cls, port: int) -> Client:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await client.replies(1)  # greeting
        return client

    async def replies(self, n: int) -> list[bytes]:
        out: list[bytes] = []
        while len(out) < n:
            while b"\r\n" not in self.buf:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError
                self.buf += data
            line, _, self.buf = self.buf.partition(b"\r\n")
            if line[3:4] != b"-":
                out.append(line)
        return out

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)


def smtplib_send(port: int, rcpts: list[str], body: bytes, **kwargs: object) -> dict:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        return smtp.sendmail("s@x.test", rcpts, body)


async def test_counts_exactly_what_smtplib_sent() -> None:
    async with trio.open_nursery() as nursery:
        sink = await start(nursery, record_messages=True)
        body = b"Subject: x\r\n\r\n.leading dot\r\nend\r\n"
        refused = await trio.to_thread.run_sync(
            smtplib_send, sink.port, ["a@x.test", "b@x.test"], body
        )
        nursery.cancel_scope.cancel()
    assert refused == {}
    s = sink.stats
    assert (s.sessions, s.messages, s.recipients, s.bytes) == (1, 1, 2, len(body))
    assert sink.messages[0].content == body
    assert sink.messages[0].rcpts == ["a@x.test", "b@x.test"]


async def test_pipelined_group_gets_every_reply() -> None:
    async with trio.open_nursery() as nursery:
        sink = await start(nursery)
        c = await Client.connect(sink.port)
        await c.send(b"EHLO me\r\n")
        (ehlo,) = await c.replies(1)
        group = b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
        await c.send(group)
        codes = [r[:3] for r in await c.replies(4)]
        await c.send(b"hello\r\n.\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n")
        codes += [r[:3] for r in await c.replies(4)]
        await c.send(b".\r\nQUIT\r\n")
        codes += [r[:3] for r in await c.replies(2)]
        nursery.cancel_scope.cancel()
    assert ehlo.startswith(b"250 ")
    assert codes == [b"250", b"250", b"250", b"354", b"250", b"250", b"250", b"354",
                     b"250", b"221"]
    assert (sink.stats.messages, sink.stats.recipients) == (2, 3)


async def test_bdat_chunks() -> None:
    async with trio.open_nursery() as nursery:
        sink = await start(nursery, record_messages=True)
        c = await Client.connect(sink.port)
        await c.send(b"EHLO me\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<a@x.test>\r\n"
                     b"BDAT 6\r\nhello BDAT 7 LAST\r\nworld\r\n")
        codes = [r[:3] for r in await c.replies(5)]
        nursery.cancel_scope.cancel()
    assert codes == [b"250"] * 5
    assert sink.messages[0].content == b"hello world\r\n"


async def test_latency_is_one_round_trip_per_pipelined_group(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with trio.open_nursery() as nursery:
        sink = await start(nursery, latency=0.02)
        start_time = trio.current_time()
        c = await Client.connect(sink.port)
        assert trio.current_time() - start_time == pytest.approx(0.02)
        await c.send(b"EHLO me\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<a@x.test>\r\n"
                     b"RCPT TO:<b@x.test>\r\nDATA\r\n")
        t0 = trio.current_time()
        await c.replies(5)
        nursery.cancel_scope.cancel()
    assert trio.current_time() - t0 == pytest.approx(0.02)  # not 5 x 0.02


async def test_starttls_and_auth(tls: TLS) -> None:
    async with trio.open_nursery() as nursery:
        sink = await start(nursery, ssl_context=tls.server, auth=("u", "p"))

        def client() -> tuple[int, int]:
            with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as smtp:
                smtp.ehlo()
                assert not smtp.has_extn("auth")  # no AUTH before TLS
                smtp.starttls(context=tls.client)
                smtp.ehlo()
                code, _ = smtp.login("u", "p")
                smtp.sendmail("s@x.test", ["a@x.test"], b"Subject: t\r\n\r\nx\r\n")
                return code, len(smtp.esmtp_features)

        code, _ = await trio.to_thread.run_sync(client)
        nursery.cancel_scope.cancel()
    assert code == 235
    assert sink.stats.messages == 1


async def test_implicit_tls(tls: TLS) -> None:
    async with trio.open_nursery() as nursery:
        sink = await start(nursery, ssl_context=tls.server, implicit_tls=True)

        def client() -> None:
            with smtplib.SMTP_SSL("127.0.0.1", sink.port, timeout=10, context=tls.client,
                                  ) as smtp:
                smtp.sendmail("s@x.test", ["a@x.test"], b"Subject: t\r\n\r\nx\r\n")

        await trio.to_thread.run_sync(client)
        nursery.cancel_scope.cancel()
    assert sink.stats.messages == 1


async def test_faults_greylist_cap_and_local_parts() -> None:
    async with trio.open_nursery() as nursery:
        sink = await start(nursery, greylist=True, max_rcpts=2)
        c = await Client.connect(sink.port)
        await c.send(b"EHLO me\r\nMAIL FROM:<s@x.test>\r\n" + b"".join(
            b"RCPT TO:<%s>\r\n" % a for a in
            [b"a@x.test", b"a@x.test", b"b@x.test", b"b@x.test", b"c@x.test",
             b"tempfail@x.test", b"permfail@x.test"]
        ))
        replies = await c.replies(9)
        nursery.cancel_scope.cancel()
    codes = [r[:3] for r in replies[2:]]
    assert codes == [b"451", b"250", b"451", b"250", b"452", b"451", b"550"]


async def test_drop_rate_one_disconnects_before_the_reply() -> None:
    async with trio.open_nursery() as nursery:
        sink = await start(nursery, drop_rate=1.0)
        c = await Client.connect(sink.port)
        await c.send(b"EHLO me\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n")
        await c.replies(4)
        await c.send(b"x\r\n.\r\n")
        with pytest.raises(EOFError):
            await c.replies(1)
        nursery.cancel_scope.cancel()
    assert sink.stats.dropped == 1 and sink.stats.messages == 0


async def test_a_10mb_line_does_not_take_the_sink_down() -> None:
    async with trio.open_nursery() as nursery:
        sink = await start(nursery)
        abuser = await Client.connect(sink.port)
        with pytest.raises((EOFError, trio.BrokenResourceError)):
            for _ in range(160):  # 10 MB without a newline, 64 KiB at a time
                await abuser.send(b"x" * 65536)
            await abuser.replies(1)
        c = await Client.connect(sink.port)
        await c.send(b"NOOP\r\n")
        (reply,) = await c.replies(1)
        nursery.cancel_scope.cancel()
    assert reply.startswith(b"250")


async def test_idle_client_is_dropped(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        sink = await start(nursery, idle_timeout=60)
        c = await Client.connect(sink.port)
        (reply,) = await c.replies(1)
        nursery.cancel_scope.cancel()
    assert reply.startswith(b"421")


def test_cli_prints_json_counters_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulkmail", "sink", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stderr.readline() if proc.stderr else ""
        port = int(line.rsplit(":", 1)[1])
        smtplib_send(port, ["a@x.test", "b@x.test"], b"Subject: t\r\n\r\nbody\r\n")
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    counters = json.loads(out.strip().splitlines()[-1])
    assert proc.returncode == 0
    assert {k: counters[k] for k in ("sessions", "messages", "recipients")} == {
        "sessions": 1, "messages": 1, "recipients": 2
    }
    assert counters["bytes"] == len(b"Subject: t\r\n\r\nbody\r\n")
