"""The sink over real sockets on 127.0.0.1 (smtplib in a thread, raw trio
streams) and, for what sockets cannot show, its sans-IO core: counts exactly,
answers a pipelined group in one write, injects each fault on request,
survives hostile clients."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from bulkmail.protocol.data import encode_data, normalize_newlines
from bulkmail.sink import FaultPolicy, SinkConfig, SinkConnection, SinkStats
from bulkmail.sink.protocol import MAX_ERRORS, MAX_LINE

from .sinkutil import CERT_FILE, KEY_FILE, RawClient, make_tls, start_sink

MAIL = b"EHLO client.test\r\nMAIL FROM:<s@x.test>\r\n"


def send_with_smtplib(port: int, rcpts: list[str], body: bytes) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        return smtp.sendmail("s@x.test", rcpts, body)


def connection(**config: object) -> tuple[SinkConnection, SinkStats]:
    """A sans-IO connection, greeted with EHLO."""
    sink_config = SinkConfig(**config)  # type: ignore[arg-type]
    stats = SinkStats()
    conn = SinkConnection(sink_config, FaultPolicy(sink_config), stats, "127.0.0.1",
                          tls_available=False)
    assert conn.receive_data(b"EHLO client.test\r\n").startswith(b"250-")
    return conn, stats


def codes(batch: bytes) -> list[int]:
    return [int(line[:3]) for line in batch.split(b"\r\n") if line and line[3:4] != b"-"]


# -- counting ------------------------------------------------------------------


async def test_smtplib_message_is_counted_exactly() -> None:
    body = b"Subject: x\r\n\r\n.leading dot\r\n..two dots\r\nend\r\n"
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True)
        refused = await trio.to_thread.run_sync(
            send_with_smtplib, sink.port, ["a@x.test", "b@x.test"], body
        )
        nursery.cancel_scope.cancel()
    s = sink.stats
    assert refused == {}
    assert (s.sessions, s.messages, s.recipients, s.transactions) == (1, 1, 2, 1)
    assert s.bytes == len(body)
    assert s.peers == {"127.0.0.1": 1}
    assert sink.messages[0] == ("127.0.0.1", "s@x.test", ["a@x.test", "b@x.test"], body)


@given(
    content=st.binary(max_size=300).map(
        lambda b: normalize_newlines(b.replace(b"\r", b"\n").replace(b"x", b"\n."))
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_data_is_unstuffed_and_counted_however_it_is_split(
    content: bytes, cuts: list[int]
) -> None:
    conn, _ = connection(record_messages=True)
    conn.receive_data(b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n")
    wire = encode_data(content) + b"NOOP\r\n"
    replies = b""
    for start, end in zip([0, *sorted(cuts)], [*sorted(cuts), len(wire)], strict=True):
        replies += conn.receive_data(wire[start:end])
    accepted = conn.take_accepted()
    assert codes(replies) == [250, 250]
    assert accepted is not None
    assert (accepted.messages, accepted.recipients, accepted.octets) == (1, 1, len(content))
    assert accepted.records[0].content == content


# -- pipelining ------------------------------------------------------------------


def test_a_pipelined_group_is_answered_in_one_write() -> None:
    conn, _ = connection()
    batch = conn.receive_data(
        b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
        b"hello\r\n.\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n"
    )
    assert codes(batch) == [250, 250, 250, 354, 250, 250, 250, 354]
    assert conn.take_accepted() is not None


async def test_pipelined_groups_over_a_socket_get_every_reply() -> None:
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        c = await RawClient.connect(sink.port)
        await c.send(MAIL + b"RCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        first = await c.codes(5)
        await c.send(b"hello\r\n.\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n")
        second = await c.codes(4)
        await c.send(b"bye\r\n.\r\nQUIT\r\n")
        third = await c.codes(2)
        nursery.cancel_scope.cancel()
    assert (first, second, third) == ([250, 250, 250, 250, 354], [250, 250, 250, 354], [250, 221])
    assert (sink.stats.messages, sink.stats.recipients, sink.stats.bytes) == (2, 3, 12)


async def test_bdat_chunks_make_one_message() -> None:
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, record_messages=True)
        c = await RawClient.connect(sink.port)
        await c.send(MAIL + b"RCPT TO:<a@x.test>\r\nBDAT 6\r\nhello BDAT 9\r\nworld\r\n.\r"
                     b"BDAT 1 LAST\r\n\n" + b"MAIL FROM:<s@x.test>\r\nRCPT TO:<b@x.test>\r\n"
                     b"BDAT 0 LAST\r\n")
        replies = await c.replies(9)
        nursery.cancel_scope.cancel()
    assert [r[:3] for r in replies] == [b"250"] * 9
    assert replies[4] == b"250 2.0.0 9 octets received"
    assert [m.content for m in sink.messages] == [b"hello world\r\n.\r\n", b""]
    assert (sink.stats.messages, sink.stats.bytes) == (2, 16)


def test_bdat_out_of_sequence_is_read_and_refused() -> None:
    conn, stats = connection()
    batch = conn.receive_data(b"BDAT 5 LAST\r\nQUIT!NOOP\r\n")
    assert codes(batch) == [503, 250]  # the chunk was consumed: NOOP still parses
    no_chunking, _ = connection(chunking=False)
    batch = no_chunking.receive_data(
        b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@x.test>\r\nBDAT 3 LAST\r\nabcNOOP\r\n"
    )
    assert codes(batch) == [250, 250, 502, 250]
    assert stats.messages == 0


# -- sequencing, syntax, limits ------------------------------------------------


def test_sequence_and_syntax_errors() -> None:
    conn, _ = connection()
    script = [
        (b"RCPT TO:<a@x.test>", 503), (b"DATA", 503), (b"MAIL FROM:s@x.test", 501),
        (b"MAIL FROM:<s@x.test> FOO=BAR", 555), (b"MAIL FROM:<s@x.test> SIZE=10", 250),
        (b"MAIL FROM:<s@x.test>", 503), (b"DATA", 554), (b"RCPT TO:<>", 501),
        (b"RCPT TO:<a@x.test> NOTIFY=NEVER", 250), (b"VRFY a", 252), (b"EXPN list", 502),
        (b"XYZZY", 500), (b"RSET", 250), (b"NOOP", 250), (b"EHLO", 501), (b"HELO h", 250),
        (b"STARTTLS", 502), (b"AUTH PLAIN", 502), (b"QUIT", 221),
    ]
    batch = conn.receive_data(b"".join(line + b"\r\n" for line, _ in script))
    assert codes(batch) == [code for _, code in script]
    assert conn.closing


def test_mail_before_ehlo_is_refused() -> None:
    config = SinkConfig()
    conn = SinkConnection(config, FaultPolicy(config), SinkStats(), "127.0.0.1",
                          tls_available=False)
    reply = conn.receive_data(b"MAIL FROM:<s@x.test>\r\n")
    assert reply == b"503 5.5.1 Error: send HELO/EHLO first\r\n"


def test_size_limit_gives_552_and_counts_nothing() -> None:
    conn, _ = connection(max_message_size=10)
    batch = conn.receive_data(
        b"MAIL FROM:<s@x.test> SIZE=11\r\n"
        b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n" + b"x" * 20 + b"\r\n.\r\n"
        b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@x.test>\r\nBDAT 11 LAST\r\n" + b"y" * 11
        + b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n" + b"x" * 8 + b"\r\n.\r\n"
    )
    assert codes(batch) == [552, 250, 250, 354, 552, 250, 250, 552, 250, 250, 354, 250]
    accepted = conn.take_accepted()
    assert accepted is not None and (accepted.messages, accepted.octets) == (1, 10)


def test_long_lines_are_refused_and_repeated_errors_end_the_session() -> None:
    conn, _ = connection()
    assert codes(conn.receive_data(b"N" * (MAX_LINE + 1) + b"\r\nNOOP\r\n")) == [500, 250]
    batch = conn.receive_data(b"BOGUS\r\n" * (MAX_ERRORS + 5))
    assert codes(batch) == [500] * (MAX_ERRORS - 1) + [421]
    assert batch.endswith(b"421 4.7.0 Try again later, closing connection.\r\n")
    assert conn.closing


def test_refusals_a_pipelining_client_meets_do_not_end_the_session() -> None:
    conn, _ = connection(reject_rate=1.0)
    transaction = b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@x.test>\r\n"
    batch = conn.receive_data(
        (transaction + b"DATA\r\nRSET\r\n" + transaction + b"BDAT 2 LAST\r\nhiRSET\r\n")
        * MAX_ERRORS
    )
    assert codes(batch) == [250, 550, 554, 250] * MAX_ERRORS * 2
    assert not conn.closing


def test_an_endless_line_costs_bounded_memory() -> None:
    conn, _ = connection()
    chunk = b"x" * 65536
    tracemalloc.start()
    try:
        first = conn.receive_data(chunk)
        for _ in range(160):  # 10 MiB without a newline
            assert conn.receive_data(chunk) == b""
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert codes(first) == [500]
    assert peak < 512 * 1024
    assert codes(conn.receive_data(b"\r\nNOOP\r\n")) == [250]  # back in sync


async def test_a_10mb_line_keeps_the_sink_up_for_others() -> None:
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        abuser = await RawClient.connect(sink.port)
        chunk = b"x" * 65536
        for _ in range(160):
            await abuser.send(chunk)
        other = await RawClient.connect(sink.port)
        await other.send(b"NOOP\r\n")
        other_codes = await other.codes(1)
        await abuser.send(b"\r\nNOOP\r\n")
        abuser_codes = await abuser.codes(2)
        nursery.cancel_scope.cancel()
    assert other_codes == [250]
    assert abuser_codes == [500, 250]


async def test_many_concurrent_connections() -> None:
    clients = 300
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        connected = trio.Event()
        count = [0]

        async def one(n: int) -> None:
            c = await RawClient.connect(sink.port)
            count[0] += 1
            if count[0] == clients:
                connected.set()
            await connected.wait()
            await c.send(MAIL + b"RCPT TO:<r%d@x.test>\r\nBDAT 2 LAST\r\nhiQUIT\r\n" % n)
            assert await c.codes(5) == [250, 250, 250, 250, 221]

        async with trio.open_nursery() as client_nursery:
            for n in range(clients):
                client_nursery.start_soon(one, n)
        nursery.cancel_scope.cancel()
    assert sink.stats.max_active_sessions == clients
    assert (sink.stats.messages, sink.stats.sessions) == (clients, clients)


async def test_idle_client_gets_421_after_the_timeout(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, idle_timeout=60)
        c = await RawClient.connect(sink.port)
        started = trio.current_time()
        (reply,) = await c.replies(1)
        waited = trio.current_time() - started
        with pytest.raises(EOFError):
            await c.replies(1)
        nursery.cancel_scope.cancel()
    assert reply.startswith(b"421 4.4.2")
    assert waited == pytest.approx(60)


# -- TLS and AUTH ---------------------------------------------------------------


async def test_starttls_then_auth_with_smtplib(tmp_path: Path) -> None:
    _, server, client = make_tls(tmp_path)
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, ssl_context=server, auth=("user", "secret"))

        def session() -> tuple[bool, bool, bool, int]:
            with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as smtp:
                smtp.ehlo()
                plain_auth, plain_tls = smtp.has_extn("auth"), smtp.has_extn("starttls")
                smtp.starttls(context=client)
                smtp.ehlo()
                tls_tls = smtp.has_extn("starttls")
                code, _ = smtp.login("user", "secret")
                smtp.sendmail("s@x.test", ["a@x.test"], b"Subject: t\r\n\r\nx\r\n")
                return plain_auth, plain_tls, tls_tls, code

        outcome = await trio.to_thread.run_sync(session)
        nursery.cancel_scope.cancel()
    assert outcome == (False, True, False, 235)
    assert sink.stats.messages == 1


async def test_auth_is_refused_before_tls_and_pipelined_commands_die_with_starttls(
    tmp_path: Path,
) -> None:
    _, server, client = make_tls(tmp_path)
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, ssl_context=server, auth=("u", "p"))
        c = await RawClient.connect(sink.port)
        await c.send(b"EHLO c\r\nAUTH PLAIN AHUAcA==\r\nMAIL FROM:<s@x.test>\r\n")
        before = await c.codes(3)
        await c.send(b"STARTTLS\r\nRSET\r\n")  # RSET must not survive into TLS
        starttls = await c.codes(1)
        await c.start_tls(client)
        await c.send(b"MAIL FROM:<s@x.test>\r\nEHLO c\r\nAUTH PLAIN AHUAcA==\r\nNOOP\r\n")
        after = await c.codes(4)
        nursery.cancel_scope.cancel()
    assert before == [250, 538, 530]
    assert starttls == [220]
    assert after == [503, 250, 235, 250]


async def test_implicit_tls(tmp_path: Path) -> None:
    _, server, client = make_tls(tmp_path)
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, ssl_context=server, implicit_tls=True)

        def session() -> bool:
            with smtplib.SMTP_SSL("127.0.0.1", sink.port, timeout=10, context=client) as smtp:
                smtp.ehlo()
                offers_starttls = smtp.has_extn("starttls")
                smtp.sendmail("s@x.test", ["a@x.test"], b"Subject: t\r\n\r\nx\r\n")
                return offers_starttls

        offers_starttls = await trio.to_thread.run_sync(session)
        nursery.cancel_scope.cancel()
    assert offers_starttls is False
    assert sink.stats.messages == 1


async def test_auth_plain_and_login_with_smtplib() -> None:
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, auth=("user", "secret"))

        def session(mechanism: str, password: str) -> int:
            with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as smtp:
                smtp.ehlo()
                smtp.user, smtp.password = "user", password
                authobject = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
                try:
                    code, _ = smtp.auth(mechanism, authobject, initial_response_ok=False)
                except smtplib.SMTPAuthenticationError as exc:
                    return exc.smtp_code
                smtp.sendmail("s@x.test", ["a@x.test"], b"Subject: t\r\n\r\nx\r\n")
                return code

        results = [await trio.to_thread.run_sync(session, mechanism, password)
                   for mechanism in ("PLAIN", "LOGIN") for password in ("secret", "wrong")]
        nursery.cancel_scope.cancel()
    assert results == [235, 535, 235, 535]
    assert sink.stats.messages == 2


def test_mail_needs_auth_when_auth_is_configured() -> None:
    conn, _ = connection(auth=("u", "p"))
    batch = conn.receive_data(b"MAIL FROM:<s@x.test>\r\nAUTH LOGIN dQ==\r\ncA==\r\n"
                              b"MAIL FROM:<s@x.test>\r\n")
    assert codes(batch) == [530, 334, 235, 250]


# -- faults ----------------------------------------------------------------------


async def test_latency_is_one_round_trip_per_pipelined_batch(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.25)
        t0 = trio.current_time()
        c = await RawClient.connect(sink.port)
        t1 = trio.current_time()
        await c.send(MAIL + b"RCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        await c.replies(5)
        t2 = trio.current_time()
        await c.send(b"x\r\n.\r\nQUIT\r\n")
        await c.replies(2)
        t3 = trio.current_time()
        nursery.cancel_scope.cancel()
    assert (t1 - t0, t2 - t1, t3 - t2) == (0.25, 0.25, 0.25)  # not 5 x 0.25


async def test_greylist_defers_the_first_attempt_and_accepts_the_next() -> None:
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, greylist=True)
        first = await RawClient.connect(sink.port)
        await first.send(MAIL + b"RCPT TO:<a@x.test>\r\nRCPT TO:<a@x.test>\r\n")
        replies = await first.replies(4)
        later = await RawClient.connect(sink.port)  # a retry, on a new connection
        await later.send(MAIL + b"RCPT TO:<A@x.test>\r\nRCPT TO:<b@x.test>\r\n")
        later_codes = await later.codes(4)
        nursery.cancel_scope.cancel()
    assert replies[2] == b"451 4.7.1 Greylisted, please try again later"
    assert replies[3].startswith(b"250")
    assert later_codes == [250, 250, 250, 451]
    assert sink.stats.deferred == 2


def test_max_rcpts_gives_452_past_k_accepted() -> None:
    conn, _ = connection(max_rcpts=2)
    batch = conn.receive_data(
        b"MAIL FROM:<s@x.test>\r\n"
        + b"".join(b"RCPT TO:<%s@x.test>\r\n" % n for n in (b"a", b"tempfail", b"b", b"c", b"d"))
        + b"RSET\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<e@x.test>\r\n"
    )
    assert codes(batch) == [250, 250, 451, 250, 452, 452, 250, 250, 250]
    assert b"452 4.5.3 Too many recipients\r\n" in batch


def test_tempfail_and_permfail_local_parts_always_fail() -> None:
    conn, stats = connection()
    batch = conn.receive_data(b"MAIL FROM:<s@x.test>\r\nRCPT TO:<TempFail@x.test>\r\n"
                              b"RCPT TO:<permfail@y.test>\r\nRCPT TO:<ok@x.test>\r\n")
    assert codes(batch) == [250, 451, 550, 250]
    assert (stats.deferred, stats.rejected) == (1, 1)


def test_defer_and_reject_rates_sound_like_big_providers_and_repeat_with_a_seed() -> None:
    rcpts = b"MAIL FROM:<s@x.test>\r\n" + b"RCPT TO:<a@x.test>\r\n" * 40
    deferring, _ = connection(defer_rate=1.0)
    assert deferring.receive_data(rcpts).count(
        b"450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents"
    ) == 40
    rejecting, _ = connection(reject_rate=1.0)
    assert rejecting.receive_data(rcpts).count(
        b"550 5.1.1 The email account that you tried to reach does not exist."
    ) == 40
    runs = [codes(connection(defer_rate=0.3, reject_rate=0.3, seed=7)[0].receive_data(rcpts))
            for _ in range(2)]
    assert runs[0] == runs[1]
    assert {250, 450, 550} <= set(runs[0])


async def test_drop_disconnects_after_the_content_before_the_reply() -> None:
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, drop_rate=1.0)
        c = await RawClient.connect(sink.port)
        await c.send(MAIL + b"RCPT TO:<a@x.test>\r\nDATA\r\n")
        await c.replies(4)
        await c.send(b"x\r\n.\r\n")
        with pytest.raises(EOFError):
            await c.replies(1)
        nursery.cancel_scope.cancel()
    assert (sink.stats.dropped, sink.stats.messages, sink.stats.transactions) == (1, 0, 1)


def test_drop_rate_is_chosen_per_transaction() -> None:
    dropped = 0
    for seed in range(40):
        conn, stats = connection(drop_rate=0.5, seed=seed)
        conn.receive_data(b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\nx\r\n.\r\n")
        dropped += stats.dropped
        assert conn.closing == bool(stats.dropped)
    assert 5 < dropped < 35


# -- stats and the command -------------------------------------------------------


def test_stats_json_has_the_counters() -> None:
    stats = SinkStats()
    stats.session_started("127.0.0.1", "127.0.0.1")
    counters = json.loads(stats.to_json())
    assert {"sessions", "messages", "recipients", "bytes", "peers"} <= counters.keys()
    assert counters["sessions"] == 1 and counters["peers"] == {"127.0.0.1": 1}


def test_cli_serves_until_sigterm_and_prints_json(tmp_path: Path) -> None:
    _, _, client = make_tls(tmp_path)
    stats_file = tmp_path / "stats.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulkmail", "sink", "--port", "0", "--stats-file", str(stats_file),
         "--tls-cert", str(tmp_path / CERT_FILE), "--tls-key", str(tmp_path / KEY_FILE)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    body = b"Subject: t\r\n\r\nbody\r\n"
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.starttls(context=client)
            smtp.sendmail("s@x.test", ["a@x.test", "b@x.test"], body)
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0
    (json_line,) = out.splitlines()
    counters = json.loads(json_line)
    expected = {"sessions": 1, "messages": 1, "recipients": 2, "bytes": len(body)}
    assert {k: counters[k] for k in expected} == expected
    assert json.loads(stats_file.read_text()) == counters


def test_cli_refuses_inconsistent_options() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bulkmail", "sink", "--port", "0", "--implicit-tls"],
        capture_output=True, text=True, timeout=20, check=False,
    )
    assert proc.returncode == 2
    assert "implicit_tls" in proc.stderr


def test_cli_reports_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "bulkmail", "sink", "--port", str(port)],
            capture_output=True, text=True, timeout=20, check=False,
        )
    assert proc.returncode == 2
    assert proc.stderr.startswith("bulkmail sink: ") and "in use" in proc.stderr


async def test_implicit_tls_from_pem_files(tmp_path: Path) -> None:
    _, _, client = make_tls(tmp_path)
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, implicit_tls=True, tls_cert=str(tmp_path / CERT_FILE),
                                tls_key=str(tmp_path / KEY_FILE))
        c = await RawClient.connect(sink.port, greeting=False)
        await c.start_tls(client, "sink.bulkmail.test")
        greeting = await c.replies(1)
        await c.send(b"EHLO c\r\nSTARTTLS\r\n")
        after = await c.codes(2)
        nursery.cancel_scope.cancel()
    assert greeting[0].startswith(b"220 sink.bulkmail.test")
    assert after == [250, 503]


@pytest.mark.parametrize("limit", [30, 31])  # either parity: accept or dup takes the last one
def test_running_out_of_descriptors_never_takes_the_listener_down(limit: int) -> None:
    """Each plaintext session holds a second descriptor for the lean stream;
    at the process's limit the session falls back to trio's stream (or trio
    retries the accept) -- the sink keeps serving once descriptors free up."""
    import resource

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    proc = subprocess.Popen(
        # a cap above the limit: this is about the sink's own descriptor fallbacks
        [sys.executable, "-m", "bulkmail", "sink", "--port", "0", "--max-connections", "1000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=low_fd_limit,
    )
    clients: list[socket.socket] = []
    try:
        assert proc.stderr is not None
        port = int(proc.stderr.readline().rsplit(":", 1)[1])
        for _ in range(40):  # more sessions than the sink has descriptors for
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        greeted = 0
        for client in clients:  # until the first session the sink could not take
            client.settimeout(2)
            try:
                if not client.recv(100).startswith(b"220"):
                    break
            except TimeoutError:
                break
            greeted += 1
        assert 0 < greeted < 40
        for client in clients:
            client.close()
        clients.clear()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as late:
            late.settimeout(10)
            assert late.recv(100).startswith(b"220")  # the listener is still there
        assert proc.poll() is None
    finally:
        for client in clients:
            client.close()
        proc.kill()
        proc.wait()
