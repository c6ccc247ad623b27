"""A batch on a real session against the sink over loopback: what is marked in
doubt is what is in flight, results are handed on as they finish, refill works
in every mode, and ``stopping`` stops new transactions."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio

from bulkmail.config import SessionConfig
from bulkmail.protocol.data import PreparedMessage
from bulkmail.session import Envelope, SMTPSession, TransactionResult
from bulkmail.sink import Sink, SinkConfig

MESSAGE = PreparedMessage.from_bytes(b"Subject: s\r\n\r\nbody\r\n")
#: (sink settings, session settings, transactions that may be in flight at once)
MODES = {
    "lock-step": ({"pipelining": False, "chunking": False}, {}, 1),
    "pipelined DATA": ({"chunking": False}, {}, 2),
    "BDAT": ({}, {"chunking_window": 4}, 4),
}


class Recorder:
    """on_data_end and on_done that log, in order, what happened."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []
        self.marked = 0
        self.done: list[TransactionResult] = []
        self.most_in_doubt = 0

    async def on_data_end(self, envelopes: Sequence[Envelope]) -> None:
        self.marked += len(envelopes)
        self.log.append(("mark", len(envelopes)))
        # marked but not finished: what a kill now would leave in doubt
        self.most_in_doubt = max(self.most_in_doubt, self.marked - len(self.done))
        await trio.sleep(0)

    def on_done(self, result: TransactionResult) -> None:
        self.done.append(result)
        self.log.append(("done", 1))


async def run(mode: str, envelopes: list[Envelope], **batch: object
              ) -> tuple[Recorder, list[TransactionResult], Sink]:
    sink_settings, session_settings, _ = MODES[mode]
    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        sink = Sink(SinkConfig(**sink_settings))  # type: ignore[arg-type]
        port = await nursery.start(sink.serve)
        config = SessionConfig("127.0.0.1", port, secure="none", **session_settings)  # type: ignore[arg-type]
        session = await SMTPSession.connect(config, "127.0.0.1")
        returned = await session.send_batch(
            envelopes, on_data_end=recorder.on_data_end, on_done=recorder.on_done,
            **batch,  # type: ignore[arg-type]
        )
        await session.quit()
        nursery.cancel_scope.cancel()
    return recorder, recorder.done + returned, sink


def messages(n: int) -> list[Envelope]:
    return [Envelope("s@x.test", [f"r{i}@x.test"], MESSAGE) for i in range(n)]


@pytest.mark.parametrize("mode", MODES)
async def test_only_transactions_in_flight_are_in_doubt(mode: str) -> None:
    # 40 messages in one batch: before, all 40 were marked up front and the
    # results came 32 at a time, so a kill could leave 40 in doubt
    recorder, results, _ = await run(mode, messages(40))
    assert len(results) == 40 and all(r.delivered == [0] for r in results)
    assert recorder.marked == 40
    assert recorder.most_in_doubt <= MODES[mode][2]
    assert len(recorder.done) == 40  # every result handed on as it finished


@pytest.mark.parametrize("mode", MODES)
async def test_refill_in_every_mode(mode: str) -> None:
    more = [messages(3), messages(2)]
    recorder, results, _ = await run(
        mode, messages(1), refill=lambda: more.pop() if more else []
    )
    assert len(results) == 6 and all(r.delivered == [0] for r in results)
    assert recorder.marked == 6


@pytest.mark.parametrize("mode", MODES)
async def test_stopping_writes_no_new_mail(mode: str) -> None:
    stop = trio.Event()
    recorder = None

    def stopping() -> bool:
        return stop.is_set()

    envelopes = messages(30)
    sink_settings, session_settings, in_flight = MODES[mode]
    async with trio.open_nursery() as nursery:
        sink = Sink(SinkConfig(**sink_settings))  # type: ignore[arg-type]
        port = await nursery.start(sink.serve)
        config = SessionConfig("127.0.0.1", port, secure="none", **session_settings)  # type: ignore[arg-type]
        session = await SMTPSession.connect(config, "127.0.0.1")
        recorder = Recorder()

        def on_done(result: TransactionResult) -> None:
            recorder.on_done(result)
            stop.set()  # the run stops once the first message is through

        results = await session.send_batch(
            envelopes, on_data_end=recorder.on_data_end, on_done=on_done, stopping=stopping,
        )
        results = recorder.done + results
        assert session.is_usable  # a stop is no failure: the session can QUIT politely
        await session.quit()
        nursery.cancel_scope.cancel()
    sent = [r for r in results if r.attempted]
    assert len(results) == 30 and results[: len(sent)] == sent
    assert 1 <= len(sent) <= 1 + in_flight
    assert all(r.delivered == [0] for r in sent)
    assert all(not r.attempted and r.replies[0].code == 451 for r in results[len(sent):])
    assert sink.stats.transactions == len(sent)  # no MAIL after the stop
