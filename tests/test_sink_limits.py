"""The sink at its limits: a connection cap answered with 421, a stats file
that survives running out of descriptors, the most sessions per listening
address, and command-line values out of range."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from bulkmail.cli import main
from bulkmail.sink import SinkStats

from .sinkutil import RawClient, start_sink

SINK = [sys.executable, "-m", "bulkmail", "sink", "--port", "0"]


def fd_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def start_cli_sink(*extra: str, limit: int) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [*SINK, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=fd_limit(limit),
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line.startswith("listening on"), line
    return proc, int(line.rsplit(":", 1)[1])


def first_reply(client: socket.socket) -> bytes:
    """The first bytes the sink sends, or b"" if it says nothing within 5 s."""
    client.settimeout(5)
    try:
        return client.recv(100)
    except TimeoutError:
        return b""


async def test_a_client_beyond_max_connections_gets_421_and_the_sink_keeps_serving() -> None:
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, max_connections=3)
        served = [await RawClient.connect(sink.port) for _ in range(3)]
        extra = await RawClient.connect(sink.port, greeting=False)
        refusal = await extra.replies(1)
        with pytest.raises(EOFError):  # closed after the 421
            await extra.replies(1)
        await served.pop().aclose()
        await trio.testing.wait_all_tasks_blocked()
        later = await RawClient.connect(sink.port, greeting=False)
        greeting = await later.replies(1)
        stats = sink.stats.as_dict()
        nursery.cancel_scope.cancel()
    assert refusal[0].startswith(b"421 4.7.0")
    assert greeting[0].startswith(b"220 ")
    assert stats["refused_connections"] == 1
    assert stats["max_active_sessions"] == 3


def test_at_a_low_descriptor_limit_every_client_gets_an_answer_at_once() -> None:
    """Without a cap, a client past the descriptor limit waited in the accept
    queue for its 300 s greeting timeout; the default cap answers it 421."""
    proc, port = start_cli_sink(limit=40)  # room for (40 - 16) // 2 = 12 sessions
    clients: list[socket.socket] = []
    try:
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(30)]
        answers = [first_reply(client)[:3] for client in clients]
        for client in clients:
            client.close()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as late:
            assert first_reply(late).startswith(b"220")
        assert proc.poll() is None
    finally:
        for client in clients:
            client.close()
        proc.kill()
        proc.wait()
    assert answers.count(b"220") == 12
    assert answers.count(b"421") == 18


def test_the_stats_file_survives_running_out_of_descriptors(tmp_path: Path) -> None:
    stats_file = tmp_path / "stats.json"
    # no cap below the limit: every descriptor goes to sessions, none is left
    # for the stats file's rewrite
    proc, port = start_cli_sink("--max-connections", "1000", "--stats-file", str(stats_file),
                                limit=30)
    clients: list[socket.socket] = []
    try:
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(40)]
        time.sleep(2.5)  # two rewrites of the stats file fall while descriptors are out
        assert proc.poll() is None, proc.communicate()[1]
        for client in clients:
            client.close()
        clients.clear()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as late:
            assert first_reply(late).startswith(b"220")
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        for client in clients:
            client.close()
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    counters = json.loads(out)
    assert counters["sessions"] > 1
    assert json.loads(stats_file.read_text()) == counters


async def test_max_sessions_by_address_counts_concurrent_sessions() -> None:
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        first = [await RawClient.connect(sink.port) for _ in range(3)]
        for client in first:
            await client.aclose()
        await trio.testing.wait_all_tasks_blocked()
        second = [await RawClient.connect(sink.port) for _ in range(2)]
        counters = json.loads(sink.stats.to_json())
        for client in second:
            await client.aclose()
        nursery.cancel_scope.cancel()
    assert counters["sessions"] == 5
    assert counters["max_sessions_by_address"] == {"127.0.0.1": 3}


def test_max_sessions_by_address_keeps_each_address_apart() -> None:
    stats = SinkStats()
    for local in ["127.0.0.2", "127.0.0.2", "127.0.0.3"]:
        stats.session_started("127.0.0.1", local)
    stats.session_ended("127.0.0.2")
    stats.session_started("127.0.0.1", "127.0.0.3")
    assert stats.as_dict()["max_sessions_by_address"] == {"127.0.0.2": 2, "127.0.0.3": 2}


@pytest.mark.parametrize(
    ("option", "value"),
    [("--port", "70000"), ("--port", "x"), ("--latency", "-1"), ("--defer-rate", "2"),
     ("--reject-rate", "nan"), ("--drop-rate", "-0.1"), ("--max-rcpts", "0"),
     ("--idle-timeout", "0"), ("--max-message-size", "0"), ("--max-connections", "0")],
)
def test_sink_options_out_of_range_exit_2_naming_the_option(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["sink", option, value])
    assert exit_.value.code == 2
    assert f"argument {option}:" in capsys.readouterr().err
