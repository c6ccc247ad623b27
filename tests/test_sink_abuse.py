"""The sink as a server under abuse: 5,000 connections at once, and any byte
stream fed to its command parser, whole or a byte at a time."""

from __future__ import annotations

import resource

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkmail.sink import SinkConfig, SinkStats
from bulkmail.sink.faults import FaultPolicy
from bulkmail.sink.protocol import SinkConnection

from .sinkutil import RawClient, start_sink


async def test_5000_connections_leave_the_sink_up_with_bounded_memory() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 12_000 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        streams: list[trio.SocketStream] = []
        for _ in range(5000):
            streams.append(await trio.open_tcp_stream("127.0.0.1", sink.port))
        while sink.stats.active_sessions < 5000:  # every one of them was accepted
            await trio.sleep(0.01)
        # ...and the sink still serves a real client meanwhile
        client = await RawClient.connect(sink.port)
        await client.send(b"EHLO me\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<a@x.test>\r\n"
                          b"BDAT 2 LAST\r\nhiQUIT\r\n")
        assert await client.codes(5) == [250, 250, 250, 250, 221]
        for stream in streams:
            await stream.aclose()
        while sink.stats.active_sessions:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert sink.stats.max_active_sessions >= 5001
    assert sink.stats.messages == 1
    assert grown_mb < 300  # both ends of 5,000 connections in this one process


def connection() -> SinkConnection:
    config = SinkConfig(auth=("u", "p"), max_rcpts=3, greylist=True)
    return SinkConnection(config, FaultPolicy(config), SinkStats(), "127.0.0.1",
                          tls_available=False)


smtp_bytes = st.lists(
    st.one_of(
        st.sampled_from([b"EHLO x\r\n", b"MAIL FROM:<a@b>\r\n", b"RCPT TO:<c@d>\r\n",
                         b"DATA\r\n", b".\r\n", b"BDAT 3\r\n", b"BDAT 2 LAST\r\n",
                         b"AUTH PLAIN\r\n", b"AUTH LOGIN\r\n", b"*\r\n", b"RSET\r\n",
                         b"QUIT\r\n", b"\r\n", b"\n", b"\r", b"\x00", b"STARTTLS\r\n"]),
        st.binary(max_size=40),
    ),
    max_size=30,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(smtp_bytes)
def test_any_bytes_get_replies_never_an_exception(data: bytes) -> None:
    for pieces in ([data], [data[i : i + 1] for i in range(len(data))]):
        conn = connection()
        for piece in pieces:
            if conn.closing:
                break
            out = conn.receive_data(piece)
            assert isinstance(out, bytes)
            assert all(line[:3].isdigit() for line in out.split(b"\r\n") if line)
