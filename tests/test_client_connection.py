"""The sans-IO client against the sink's own sans-IO server, in memory (h11's
``ConnectionPair`` style): no sockets, no trio, every transaction mode.

Each scenario runs in lock-step, pipelined DATA and BDAT; the three must give
every recipient the same reply code and the same stage (the end of data is
DATA's ``.`` in two modes and BDAT LAST in the third: compared as "end").
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bulkmail.protocol
from bulkmail.protocol.client import Stage
from bulkmail.protocol.connection import ClientConnection, Event, Failure, Mode
from bulkmail.protocol.data import PreparedMessage
from bulkmail.protocol.transaction import Envelope, TransactionResult
from bulkmail.sink import replies as sink_replies
from bulkmail.sink.config import SinkConfig
from bulkmail.sink.faults import FaultPolicy
from bulkmail.sink.protocol import SinkConnection
from bulkmail.sink.stats import SinkStats

MESSAGE = PreparedMessage.from_bytes(b"Subject: pair\r\n\r\n.dot\r\nbody\r\n")
MODES = [Mode.LOCKSTEP, Mode.PIPELINED, Mode.CHUNKING]
CLOSING = b"421 4.7.0 Closing now\r\n"
SEQUENCE = b"503 5.5.1 Error: bad sequence of commands\r\n"


class FaultySink(SinkConnection):
    """The sink, except that the ``nth`` command of ``verb`` gets ``reply``
    (a 421 then closes, as a server going away does)."""

    def __init__(self, config: SinkConfig, fault: tuple[bytes, int, bytes] | None) -> None:
        super().__init__(config, FaultPolicy(config), SinkStats(), "pair", tls_available=False)
        self.seen: Counter[bytes] = Counter()
        self.fault = fault

    def _command(self, line: bytes) -> None:
        verb = line.split(b" ", 1)[0].upper()
        self.seen[verb] += 1
        if self.fault is None or (verb, self.seen[verb]) != self.fault[:2]:
            super()._command(line)
        elif verb == b"BDAT":
            super()._command(line)  # the chunk is read (and discarded) ...
            self._chunk_error = self.fault[2]  # ... and answered with the fault
        else:
            self._out.append(self.fault[2])
            self.closing = self.fault[2].startswith(b"421")


class Pair:
    """A ClientConnection and a sink, bytes carried by hand; the server's
    replies reach the client only when it asks to read, as over a socket."""

    def __init__(self, mode: Mode, fault: tuple[bytes, int, bytes] | None = None,
                 **sink: object) -> None:
        config = SinkConfig(chunking=mode is Mode.CHUNKING, **sink)  # type: ignore[arg-type]
        self.server = FaultySink(config, fault)
        self.client = ClientConnection(client_hostname="client.test", host="sink.test")
        self.mode = mode
        self.incoming = self.server.greeting()
        self.marks: list[list[Envelope]] = []
        self.results: list[TransactionResult] = []
        self.writes: list[bytes] = []
        #: messages the server answered 250 at their end
        self.delivered = 0
        assert self.drive() is Event.READY

    def drive(self, refill: Callable[[], Sequence[Envelope]] | None = None,
              stop_after: int | None = None) -> Event:
        client = self.client
        while True:
            if stop_after is not None and len(self.results) >= stop_after:
                client.stop()
            event = client.next_event()
            if event is Event.SEND:
                data = client.data_to_send()
                self.writes.append(data)
                if not self.server.closing:
                    self.incoming += self.server.receive_data(data)
                    accepted = self.server.take_accepted()
                    self.delivered += accepted.messages if accepted is not None else 0
            elif event is Event.NEED_DATA:
                if self.incoming:
                    data, self.incoming = self.incoming, b""
                    client.receive_data(data)
                else:
                    assert self.server.closing, "deadlock: nothing to read"
                    client.receive_data(b"")
            elif event is Event.MARK:
                self.marks.append(client.take_marks())
                client.marked()
            elif event is Event.FINISHED:
                self.results.extend(client.take_finished())
            elif event is Event.WANT_MORE:
                client.extend(refill() if refill is not None else ())
            else:
                return event

    def send(self, envelopes: Sequence[Envelope], **kwargs: object) -> list[TransactionResult]:
        self.client.start_in_mode(envelopes, self.mode, window=4, mark=True)
        assert self.drive(**kwargs) is Event.BATCH_DONE  # type: ignore[arg-type]
        return self.results


def envelopes(*recipients: Sequence[str]) -> list[Envelope]:
    return [Envelope(f"s{i}@x.test", list(r), MESSAGE) for i, r in enumerate(recipients)]


def outcome(results: list[TransactionResult]) -> list[list[tuple[int, str | None]]]:
    """Per recipient: (code, stage), with both ends of data called "end"."""
    def name(stage: Stage | None) -> str | None:
        if stage in (Stage.DATA_END, Stage.BDAT):
            return "end"
        return None if stage is None else stage.value

    return [[(r.code, name(s)) for r, s in zip(t.replies, t.stages, strict=True)]
            for t in results]


def run_all(recipients: list[list[str]], fault: tuple[bytes, int, bytes] | None = None,
            **sink: object) -> dict[Mode, Pair]:
    pairs = {}
    for mode in MODES:
        pair = Pair(mode, fault, **sink)
        pair.send(envelopes(*recipients))
        pairs[mode] = pair
    return pairs


def same_in_every_mode(pairs: dict[Mode, Pair]) -> list[list[tuple[int, str | None]]]:
    outcomes = {mode: outcome(pair.results) for mode, pair in pairs.items()}
    first = outcomes[Mode.LOCKSTEP]
    assert outcomes[Mode.PIPELINED] == first
    assert outcomes[Mode.CHUNKING] == first
    return first


THREE = [["a0@x.test", "b0@x.test"], ["a1@x.test", "b1@x.test"], ["a2@x.test", "b2@x.test"]]


def test_all_accepted() -> None:
    pairs = run_all(THREE)
    assert same_in_every_mode(pairs) == [[(250, "end")] * 2] * 3
    for pair in pairs.values():
        assert pair.delivered == 3 and not pair.client.failure
        assert pair.client.transactions == 3
        assert all(not r.in_doubt and r.attempted for r in pair.results)


def test_some_refused() -> None:
    pairs = run_all([["a0@x.test", "permfail@x.test"], ["tempfail@x.test", "b1@x.test"]])
    assert same_in_every_mode(pairs) == [
        [(250, "end"), (550, "rcpt")], [(451, "rcpt"), (250, "end")],
    ]
    for pair in pairs.values():
        assert pair.delivered == 2


def test_all_refused_keeps_each_rcpt_refusal_and_the_session_goes_on() -> None:
    pairs = run_all([["a0@x.test"], ["permfail@x.test", "tempfail@x.test"], ["a2@x.test"]])
    assert same_in_every_mode(pairs) == [
        [(250, "end")], [(550, "rcpt"), (451, "rcpt")], [(250, "end")],
    ]
    for pair in pairs.values():
        assert pair.delivered == 2
    # lock-step sends no DATA for nobody; a DATA written ahead is sent anyway
    assert pairs[Mode.LOCKSTEP].server.seen[b"DATA"] == 2
    assert pairs[Mode.PIPELINED].server.seen[b"DATA"] == 3
    # RSET before the next MAIL wherever the server may still hold the transaction
    assert pairs[Mode.LOCKSTEP].server.seen[b"RSET"] == 1
    assert pairs[Mode.PIPELINED].server.seen[b"RSET"] == 1


def test_452_mid_batch_defers_the_rest_of_each_transaction() -> None:
    pairs = run_all(THREE, max_rcpts=1)
    assert same_in_every_mode(pairs) == [[(250, "end"), (452, "rcpt")]] * 3


def test_421_mid_pipeline_ends_the_session_and_nobody_is_in_doubt() -> None:
    pairs = run_all(THREE, fault=(b"RCPT", 3, CLOSING))
    assert same_in_every_mode(pairs) == [
        [(250, "end")] * 2, [(421, "rcpt"), (421, None)], [(421, None)] * 2,
    ]
    for pair in pairs.values():
        _, second, third = pair.results
        assert pair.client.failure is not None
        assert pair.client.failure[0] is Failure.UNAVAILABLE
        assert second.attempted and not second.in_doubt
        assert not third.attempted and not third.in_doubt  # retried at once, no attempt spent
        assert pair.delivered == 1


def test_503_to_data_is_no_recipients_answer() -> None:
    # the last transaction's DATA (BDAT) is answered 503: its recipients are
    # deferred with a local reply that says so, never bounced
    pairs = {}
    for mode in MODES:
        verb = b"BDAT" if mode is Mode.CHUNKING else b"DATA"
        pair = Pair(mode, (verb, 2, SEQUENCE))
        pair.send(envelopes(["a0@x.test"], ["a1@x.test", "b1@x.test"]))
        pairs[mode] = pair
    assert same_in_every_mode(pairs) == [[(250, "end")], [(451, None)] * 2]
    for pair in pairs.values():
        result = pair.results[1]
        assert all("out of sequence" in r.text and r.enhanced == "4.5.0" for r in result.replies)


def test_503_to_data_then_rset_before_the_next_transaction() -> None:
    for mode in (Mode.LOCKSTEP, Mode.PIPELINED):
        pair = Pair(mode, (b"DATA", 1, SEQUENCE))
        pair.send(envelopes(["a0@x.test"], ["a1@x.test"]))
        assert outcome(pair.results) == [[(451, None)], [(250, "end")]]
        assert pair.server.seen[b"RSET"] == 1


def test_503_to_rcpt_after_mail_means_pipelining_is_broken() -> None:
    pair = Pair(Mode.PIPELINED, (b"RCPT", 1, b"503 5.5.1 Error: need MAIL command\r\n"))
    results = pair.send(envelopes(["a0@x.test", "b0@x.test"], ["a1@x.test"], ["a2@x.test"]))
    assert pair.client.pipelining_broken
    assert [r.code for r in results[0].replies] == [451, 250]
    # no new MAIL after it: the rest come back not attempted, for a session without PIPELINING
    assert [r.attempted for r in results[1:]] == [False, False]
    assert pair.server.seen[b"MAIL"] == 1


def test_repeated_replies_are_taken_in_one_step() -> None:
    pair = Pair(Mode.CHUNKING)
    rcpts = [f"r{i}@x.test" for i in range(50)]
    (result,) = pair.send(envelopes(rcpts))
    assert result.delivered == list(range(50))
    # MAIL, 50 RCPTs, BDAT; the RCPTs after the first were consumed together
    assert pair.client.replies == 1 + 50 + 1 + 2  # + greeting and EHLO


@pytest.mark.parametrize("mode", MODES)
def test_only_transactions_in_flight_are_marked_in_doubt(mode: Mode) -> None:
    pair = Pair(mode)
    batch = envelopes(*[[f"r{i}@x.test"] for i in range(12)])
    pair.send(batch)
    assert [e for group in pair.marks for e in group] == batch  # each once, in order
    window = 4 if mode is Mode.CHUNKING else 1
    assert max(len(group) for group in pair.marks) <= window
    assert pair.delivered == 12


@pytest.mark.parametrize("mode", MODES)
def test_refill_is_asked_in_every_mode(mode: Mode) -> None:
    pair = Pair(mode)
    more = [envelopes(["x@x.test"]), envelopes(["y@x.test"])]
    results = pair.send(envelopes(["a@x.test"]), refill=lambda: more.pop() if more else [])
    assert len(results) == 3 and all(r.delivered == [0] for r in results)


@pytest.mark.parametrize("mode", MODES)
def test_stop_writes_no_new_mail_and_returns_the_rest_unattempted(mode: Mode) -> None:
    pair = Pair(mode)
    results = pair.send(envelopes(*[[f"r{i}@x.test"] for i in range(12)]), stop_after=1)
    sent = [r for r in results if r.attempted]
    assert len(results) == 12 and sent == results[: len(sent)]
    assert all(r.delivered == [0] for r in sent)
    assert all(r.replies[0].code == 451 and r.stages == [None] for r in results[len(sent):])
    assert pair.server.seen[b"MAIL"] == len(sent) == pair.delivered
    assert len(sent) <= (4 if mode is Mode.CHUNKING else 2)


def test_content_over_the_servers_size_is_refused_with_552_before_sending() -> None:
    pair = Pair(Mode.PIPELINED, max_message_size=10)
    (big,) = pair.send([Envelope("s@x.test", ["a@x.test", "b@x.test"], MESSAGE)])
    assert [(r.code, r.enhanced) for r in big.replies] == [(552, "5.3.4")] * 2
    assert big.stages == [None, None] and not big.attempted
    assert pair.server.seen[b"MAIL"] == 0


def test_address_needing_smtputf8_gets_5_6_7_when_the_server_lacks_it() -> None:
    pair = Pair(Mode.PIPELINED)
    pair.client.extensions = type(pair.client.extensions)()  # an old server: nothing offered
    (result,) = pair.send([Envelope("s@x.test", ["ü@x.test", "b@x.test"], MESSAGE)])
    assert (result.replies[0].code, result.replies[0].enhanced) == (553, "5.6.7")
    assert result.replies[1].code == 250


def test_a_transaction_written_behind_a_refused_bdat_is_reported_as_the_server_took_it() -> None:
    # RFC 3030 leaves the state after a refused BDAT indeterminate; the
    # transaction already written behind it meets "nested MAIL" (503), and the
    # sink then takes its RCPTs and content.  It is reported as the server
    # answered -- delivered -- never retried (that would deliver it twice);
    # the transaction written after that starts with RSET.
    pair = Pair(Mode.CHUNKING)
    results = pair.send(envelopes(["permfail@x.test"], ["a1@x.test"]))
    assert outcome(results) == [[(550, "rcpt")], [(250, "end")]]
    assert pair.delivered == 1
    more = pair.send(envelopes(["a2@x.test"]))
    assert pair.server.seen[b"RSET"] == 1 and outcome(more[2:]) == [[(250, "end")]]
    assert sink_replies.NESTED_MAIL.startswith(b"503")


@settings(max_examples=200, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    replies=st.lists(
        st.sampled_from([
            b"250 2.1.0 Ok\r\n", b"250 2.1.5 Ok\r\n", b"354 go\r\n", b"550 5.1.1 no\r\n",
            b"452 4.5.3 too many\r\n", b"421 4.7.0 bye\r\n", b"503 5.5.1 sequence\r\n",
            b"250-multi\r\n", b"221 bye\r\n", b"garbage\r\n", b"25", b"\r\n",
        ]),
        max_size=30,
    ),
    cut=st.integers(min_value=1, max_value=7),
)
def test_any_server_bytes_end_with_one_result_per_recipient(
    mode: Mode, replies: list[bytes], cut: int
) -> None:
    # h11's invariant for the whole client: whatever the server sends, in
    # whatever pieces, then closing, nothing raises and every recipient of
    # every transaction gets exactly one result
    client = ClientConnection(client_hostname="client.test", host="sink.test")
    client.receive_data(b"220 hi\r\n")
    assert client.next_event() is Event.SEND
    client.data_to_send()
    assert client.next_event() is Event.NEED_DATA
    client.receive_data(b"250-sink\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
    assert client.next_event() is Event.READY
    batch = envelopes(["a@x.test", "b@x.test"], ["c@x.test"])
    client.start_in_mode(batch, mode, window=4, mark=True)
    stream = b"".join(replies)
    pieces = [stream[i : i + cut] for i in range(0, len(stream), cut)] + [b""]
    results: list[TransactionResult] = []
    for _ in range(1000):
        event = client.next_event()
        if event is Event.NEED_DATA:
            client.receive_data(pieces.pop(0))
        elif event is Event.SEND:
            client.data_to_send()
        elif event is Event.MARK:
            client.take_marks()
            client.marked()
        elif event is Event.FINISHED:
            results.extend(client.take_finished())
        elif event is Event.WANT_MORE:
            client.extend(())
        else:
            assert event is Event.BATCH_DONE
            break
    else:
        raise AssertionError("no end")
    assert [len(r.replies) for r in results] == [2, 1]
    assert all(len(r.stages) == len(r.replies) for r in results)


def test_the_protocol_package_does_no_io() -> None:
    # sans-IO by construction: no module of bulkmail.protocol imports an I/O
    # library or the clock (an import is the first step to using one)
    forbidden = {"trio", "socket", "ssl", "asyncio", "time", "selectors"}
    package = Path(bulkmail.protocol.__file__).parent
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            assert not {n.split(".")[0] for n in names} & forbidden, (module.name, names)
