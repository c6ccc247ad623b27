"""The plaintext stream the session uses: a real socket pair on loopback."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from bulkmail.lean_stream import LeanSocketStream


async def connected_pair() -> tuple[LeanSocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return LeanSocketStream(client), server


async def test_large_writes_wait_for_the_reader_and_arrive_whole() -> None:
    lean, server = await connected_pair()
    payload = bytes(range(256)) * 40_000  # 10 MB: far beyond the socket buffers
    received = bytearray()

    async def slow_reader() -> None:
        while len(received) < len(payload):
            received.extend(await server.receive_some(65536))
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_reader)
        await lean.send_all(payload)
    assert bytes(received) == payload
    await server.send_all(b"250 ok\r\n")
    assert await lean.receive_some() == b"250 ok\r\n"
    await server.aclose()
    assert await lean.receive_some() == b""  # EOF
    await lean.aclose()


async def test_a_deadline_cancels_a_receive_that_waits() -> None:
    lean, server = await connected_pair()
    with trio.move_on_after(0.05) as scope:
        await lean.receive_some()
    assert scope.cancelled_caught
    await server.send_all(b"still usable\r\n")
    assert await lean.receive_some() == b"still usable\r\n"
    await lean.aclose()
    await server.aclose()


async def test_a_cancelled_scope_is_honoured_even_when_data_is_ready() -> None:
    lean, server = await connected_pair()
    await server.send_all(b"ready")
    await trio.sleep(0.01)
    with trio.CancelScope() as scope:
        scope.cancel()
        await lean.receive_some()
    assert scope.cancelled_caught
    await lean.aclose()
    await server.aclose()


async def test_a_connection_that_never_waits_still_lets_others_run() -> None:
    lean, server = await connected_pair()
    await server.send_all(b"x" * 100_000)
    await trio.sleep(0.01)
    other_ran = False

    async def other() -> None:
        nonlocal other_ran
        other_ran = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        for _ in range(200):  # each read finds data waiting, none has to block
            await lean.receive_some(1)
            if other_ran:
                break
        assert other_ran
    await lean.aclose()
    await server.aclose()


async def test_a_reset_peer_is_a_broken_resource_and_detach_keeps_trios_stream() -> None:
    lean, server = await connected_pair()
    server.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    await server.aclose()  # linger 0: RST
    await trio.sleep(0.01)
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(10):
            await lean.send_all(b"MAIL FROM:<a@b.test>\r\n" * 1000)
    inner = lean.detach()
    assert isinstance(inner, trio.SocketStream)
    with pytest.raises(trio.ClosedResourceError):
        await lean.receive_some()
    await inner.aclose()
