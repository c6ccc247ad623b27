"""The session against the project's sink: PIPELINING on and off, BDAT with
CHUNKING, and the exact groups that go out in one write."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from bulkmail.config import SessionConfig
from bulkmail.protocol.data import PreparedMessage
from bulkmail.session import Envelope, SMTPSession
from bulkmail.sink import Sink, SinkConfig

MESSAGE = PreparedMessage.from_bytes(b"Subject: s\r\n\r\n.dot line\r\nbody\r\n")


async def deliver(sink_config: SinkConfig, **session: object) -> tuple[Sink, SMTPSession, list]:
    async with trio.open_nursery() as nursery:
        sink = Sink(sink_config)
        port = await nursery.start(sink.serve)
        config = SessionConfig("127.0.0.1", port, secure="none", trace=True, **session)  # type: ignore[arg-type]
        s = await SMTPSession.connect(config, "127.0.0.1")
        envelopes = [Envelope("s@x.test", [f"r{i}@x.test", f"q{i}@x.test"], MESSAGE)
                     for i in range(3)]
        results = await s.send_batch(envelopes)
        await s.quit()
        nursery.cancel_scope.cancel()
    return sink, s, results


def client_lines(session: SMTPSession) -> list[str]:
    assert session.trace is not None
    return session.trace.client_lines()


async def test_bdat_when_chunking_is_offered() -> None:
    sink, session, results = await deliver(SinkConfig(record_messages=True))
    assert session.extensions.chunking and session.extensions.pipelining
    assert all(r.replies[0].code == 250 for r in results)
    assert sum(line.startswith("BDAT ") for line in client_lines(session)) == 3
    assert [m.content for m in sink.messages] == [MESSAGE.normalized] * 3
    assert sink.stats.messages == 3 and sink.stats.recipients == 6


async def test_data_pipelined_when_chunking_is_not_offered() -> None:
    sink, session, results = await deliver(SinkConfig(chunking=False, record_messages=True))
    assert all(r.replies[1].code == 250 for r in results)
    lines = client_lines(session)
    assert not any(line.startswith("BDAT") for line in lines)
    assert lines.count("DATA") == 3
    assert [m.content for m in sink.messages] == [MESSAGE.normalized] * 3  # un-stuffed intact


async def test_lock_step_without_pipelining() -> None:
    sink, session, results = await deliver(SinkConfig(pipelining=False, chunking=False))
    assert not session.extensions.pipelining
    assert sink.stats.messages == 3
    assert all(code == 250 for r in results for code in (x.code for x in r.replies))


async def test_client_can_turn_pipelining_and_chunking_off() -> None:
    sink, session, _ = await deliver(SinkConfig(), use_pipelining=False, use_chunking=False)
    assert session.extensions.pipelining  # offered...
    assert not any(line.startswith("BDAT") for line in client_lines(session))  # ...not used
    assert sink.stats.messages == 3


SMTP_SOURCE = "/usr/sbin/smtp-source"


# .ci/run installs Debian's postfix, so in CI (CI=true) this always runs; on a
# developer machine without Postfix it is skipped, saying why.
@pytest.mark.skipif(
    not os.path.exists(SMTP_SOURCE) and os.environ.get("CI") != "true",
    reason="Postfix's smtp-source is not installed (apt-get install postfix)",
)
async def test_sink_counts_exactly_what_postfix_smtp_source_sent() -> None:
    async with trio.open_nursery() as nursery:
        sink = Sink(SinkConfig())
        port = await nursery.start(sink.serve)
        proc = await trio.run_process(
            [SMTP_SOURCE, "-d", "-s", "20", "-m", "20000", "-r", "5",
             f"127.0.0.1:{port}"], capture_stdout=True, capture_stderr=True, check=False,
        )
        nursery.cancel_scope.cancel()
    assert proc.returncode == 0, proc.stderr
    assert sink.stats.messages == 20000
    assert sink.stats.recipients == 100000



async def test_each_batch_s_deadline_watchdog_ends_with_the_batch() -> None:
    async with trio.open_nursery() as nursery:
        sink = Sink(SinkConfig(chunking=False))
        await nursery.start(sink.serve)
        config = SessionConfig(host="127.0.0.1", port=sink.port, secure="none")
        session = await SMTPSession.connect(config, "127.0.0.1")
        message = PreparedMessage.from_bytes(b"Subject: x\r\n\r\nhi\r\n")
        await trio.testing.wait_all_tasks_blocked()
        living = trio.lowlevel.current_statistics().tasks_living
        for _ in range(5):
            results = await session.send_batch([Envelope("s@x.test", ["a@x.test"], message)])
            assert results[0].replies[0].code == 250
        await trio.testing.wait_all_tasks_blocked()
        assert trio.lowlevel.current_statistics().tasks_living == living  # none left behind
        await session.quit()
        nursery.cancel_scope.cancel()
