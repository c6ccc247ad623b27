"""The sans-IO reply parser (RFC 5321 §4.2, RFC 2034 / RFC 3463).

h11's invariant: any input either parses or raises RemoteProtocolError --
fed whole or one byte at a time, with the same result -- and a hostile server
cannot make the parser hold more than one line's cap plus one read."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkmail.protocol.client import ClientProtocol, Stage
from bulkmail.protocol.errors import RemoteProtocolError
from bulkmail.protocol.replies import (
    DEFAULT_MAX_LINE_LENGTH,
    MAX_KNOWN_REPLIES,
    Reply,
    ReplyParser,
    parse_enhanced,
)


def feed_all(chunks: list[bytes], parser: ReplyParser | None = None) -> list[Reply]:
    """Feed chunks as a session would, collecting every complete reply."""
    parser = parser or ReplyParser()
    out: list[Reply] = []
    for chunk in chunks:
        parser.feed(chunk)
        while (reply := parser.next_reply()) is not None:
            out.append(reply)
    return out


def parse(data: bytes, **kwargs: int) -> list[Reply]:
    return feed_all([data], ReplyParser(**kwargs))


# -- exact cases -----------------------------------------------------------------------


def test_single_line_reply() -> None:
    (reply,) = parse(b"220 mail.example.com ESMTP Postfix\r\n")
    assert reply == Reply(220, ("mail.example.com ESMTP Postfix",), None)
    assert reply.text == "mail.example.com ESMTP Postfix"
    assert reply.is_positive and not reply.is_transient and not reply.is_permanent


def test_multiline_reply_from_the_seed_session() -> None:
    data = (
        b"250-mail.example.com\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-STARTTLS\r\n"
        b"250-AUTH LOGIN PLAIN\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
    )
    (reply,) = parse(data)
    assert reply.code == 250
    assert reply.lines == (
        "mail.example.com", "PIPELINING", "SIZE 52428800", "STARTTLS", "AUTH LOGIN PLAIN",
        "8BITMIME", "SMTPUTF8",
    )


def test_several_replies_in_one_read_come_out_in_order() -> None:
    replies = parse(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n")
    assert [r.code for r in replies] == [250, 250, 354]
    assert [r.enhanced for r in replies] == ["2.1.0", "2.1.5", None]


def test_partial_reply_waits_for_more_data() -> None:
    parser = ReplyParser()
    parser.feed(b"250-first\r\n250 sec")
    assert parser.next_reply() is None
    assert parser.in_progress
    parser.feed(b"ond\r\n")
    assert parser.next_reply() == Reply(250, ("first", "second"))
    assert not parser.in_progress and parser.buffered == 0


def test_bare_lf_is_tolerated() -> None:
    assert parse(b"250-a\n250 b\n") == [Reply(250, ("a", "b"))]
    assert parse(b"250 ok\n354\r\n") == [Reply(250, ("ok",)), Reply(354, ("",))]


def test_code_only_and_empty_text_lines() -> None:
    assert parse(b"250\r\n") == [Reply(250, ("",))]
    assert parse(b"250 \r\n") == [Reply(250, ("",))]


def test_enhanced_code_is_parsed_and_removed_from_text() -> None:
    (reply,) = parse(b"250 2.1.5 Ok\r\n")
    assert reply.enhanced == "2.1.5"
    assert reply.text == "Ok"
    assert str(reply) == "250 2.1.5 Ok"
    (reply,) = parse(b"550-5.1.1 No such user\r\n550 5.1.1 see the docs\r\n")
    assert reply.enhanced == "5.1.1"
    assert reply.text == "No such user\nsee the docs"
    assert reply.is_permanent


def test_enhanced_code_of_another_class_is_ignored() -> None:
    (reply,) = parse(b"250 5.0.0 x\r\n")
    assert reply.enhanced is None
    assert reply.text == "5.0.0 x"
    assert parse_enhanced(451, "4.7.1 greylisted") == "4.7.1"
    assert parse_enhanced(451, "2.0.0 odd") is None


def test_enhanced_code_must_stand_alone() -> None:
    assert parse_enhanced(250, "2.1.5") == "2.1.5"
    assert parse_enhanced(250, "2.1.5ok") is None
    assert parse_enhanced(250, "2.1.5000 x") is None
    assert parse_enhanced(250, "Ok 2.1.5") is None


@pytest.mark.parametrize(
    "data",
    [b"25\r\n", b"25 x\r\n", b"2500 x\r\n", b"600 x\r\n", b"100 x\r\n", b"abc\r\n",
     b"250x\r\n", b"\r\n", b" 250 x\r\n", b"2a0 x\r\n"],
)
def test_malformed_codes_raise_and_carry_what_was_read(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="malformed") as info:
        parse(data)
    assert info.value.data == data.rstrip(b"\r\n")


def test_multiline_reply_with_disagreeing_codes_raises() -> None:
    with pytest.raises(RemoteProtocolError, match="changed code from 250 to 251"):
        parse(b"250-a\r\n251 b\r\n")


def test_line_longer_than_the_cap_raises() -> None:
    assert parse(b"250 " + b"x" * 508 + b"\r\n", max_line_length=512)
    with pytest.raises(RemoteProtocolError, match="longer than 512 octets"):
        parse(b"250 " + b"x" * 509 + b"\r\n", max_line_length=512)


def test_line_cap_applies_before_the_newline_arrives_with_bounded_memory() -> None:
    parser = ReplyParser()
    piece = b"x" * 65536
    parser.feed(b"250 ")
    fed = 0
    with pytest.raises(RemoteProtocolError, match="longer than"):
        for _ in range(160):  # 10 MB without a newline
            parser.feed(piece)
            fed += len(piece)
            assert parser.buffered <= DEFAULT_MAX_LINE_LENGTH + len(piece)
            parser.next_reply()
    assert fed == len(piece)  # the first read past the cap is the last one accepted


def test_line_cap_is_reached_in_small_reads_too() -> None:
    parser = ReplyParser(max_line_length=1024)
    parser.feed(b"250 ")
    with pytest.raises(RemoteProtocolError):
        for _ in range(10_000):
            parser.feed(b"x" * 100)
            assert parser.buffered <= 1024 + 100
            parser.next_reply()


def test_too_many_lines_raise() -> None:
    assert len(parse(b"250-x\r\n" * 99 + b"250 end\r\n", max_lines=100)[0].lines) == 100
    with pytest.raises(RemoteProtocolError, match="longer than 100 lines"):
        parse(b"250-x\r\n" * 100 + b"250 end\r\n", max_lines=100)
    with pytest.raises(RemoteProtocolError, match="lines"):
        parse(b"250-x\r\n" * 300)


@pytest.mark.parametrize("partial", [b"250-partial\r\n", b"250 no newline", b"2"])
def test_eof_in_the_middle_of_a_reply_raises(partial: bytes) -> None:
    parser = ReplyParser()
    parser.feed(partial)
    assert parser.next_reply() is None
    parser.feed(b"")
    with pytest.raises(RemoteProtocolError, match="closed in the middle of a reply"):
        parser.next_reply()


def test_eof_between_replies_is_quiet() -> None:
    parser = ReplyParser()
    parser.feed(b"221 2.0.0 Bye\r\n")
    parser.feed(b"")
    assert parser.next_reply() == Reply(221, ("2.0.0 Bye",), "2.0.0")
    assert parser.next_reply() is None


def test_invalid_utf8_text_is_replaced_not_raised() -> None:
    (reply,) = parse(b"550 caf\xe9\r\n")
    assert reply.text == "caf\ufffd"


def test_cap_below_the_rfc_minimum_is_refused() -> None:
    with pytest.raises(ValueError):
        ReplyParser(max_line_length=511)


def test_a_line_at_the_cap_parses_however_the_reads_split_it() -> None:
    data = b"250 " + b"x" * 508 + b"\r\n"  # exactly 512 octets before CRLF
    assert feed_all([data], ReplyParser(max_line_length=512))
    # a read boundary between CR and LF must not change the outcome
    assert feed_all([data[:-1], data[-1:]], ReplyParser(max_line_length=512))


# -- properties --------------------------------------------------------------------------


def outcome(chunks: list[bytes]) -> tuple[list[Reply], bool]:
    """The replies produced and whether RemoteProtocolError ended the stream.

    Any other exception escapes and fails the test: that is the property.
    """
    parser = ReplyParser(max_line_length=512, max_lines=8)
    replies: list[Reply] = []
    try:
        for chunk in [*chunks, b""]:
            parser.feed(chunk)
            while (reply := parser.next_reply()) is not None:
                replies.append(reply)
            assert parser.buffered <= 512 + 8 * 512 + len(chunk)
    except RemoteProtocolError:
        return replies, True
    return replies, False


smtpish = st.lists(
    st.one_of(
        st.sampled_from(
            [b"250", b"250-", b"250 ", b"354 ", b"421-", b"5.1.1 ", b"2.0.0 ", b"\r\n", b"\n",
             b"2500", b"\r", b"-", b" ", b"\xff", b"\x00"]
        ),
        st.binary(max_size=20),
    ),
    max_size=60,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(smtpish)
def test_any_stream_parses_or_raises_and_both_feeding_modes_agree(data: bytes) -> None:
    whole = outcome([data])
    bytewise = outcome([data[i : i + 1] for i in range(len(data))])
    assert whole == bytewise


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_arbitrary_bytes_in_arbitrary_reads_agree_with_one_read(data: bytes, size: int) -> None:
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    assert outcome(pieces) == outcome([data])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([220, 250, 354, 421, 451, 550, 554]),
            st.lists(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                             max_size=30), min_size=1, max_size=5),
        ),
        max_size=5,
    )
)
def test_well_formed_replies_round_trip(replies: list[tuple[int, list[str]]]) -> None:
    wire = b""
    for code, lines in replies:
        for i, text in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            wire += f"{code}{sep}{text}\r\n".encode()
    parsed, failed = outcome([wire])
    assert not failed
    assert [(r.code, list(r.lines)) for r in parsed] == replies


def test_a_repeated_single_line_reply_is_parsed_once_and_shared() -> None:
    parser = ReplyParser()
    parser.feed(b"250 2.1.0 Ok\r\n250 2.1.0 Ok\r\n250-a\r\n250 b\r\n250-a\r\n250 b\r\n")
    first, second = parser.next_reply(), parser.next_reply()
    assert first is second and first == Reply(250, ("2.1.0 Ok",), "2.1.0")
    multi_1, multi_2 = parser.next_reply(), parser.next_reply()
    assert multi_1 == multi_2 and multi_1 is not multi_2  # multi-line replies are not kept
    for n in range(MAX_KNOWN_REPLIES * 2):  # distinct replies: the memory stays bounded
        parser.feed(b"250 queued as %d\r\n" % n)
        assert parser.next_reply() == Reply(250, (f"queued as {n}",))
    assert len(parser._known) == MAX_KNOWN_REPLIES


def test_repeats_of_the_last_reply_are_consumed_up_to_the_commands_owed() -> None:
    protocol = ClientProtocol()
    protocol.receive_data(b"220 hi\r\n")
    assert protocol.next_reply() is not None  # the greeting
    protocol.expect(Stage.MAIL)
    protocol.expect(Stage.RCPT, 4)
    protocol.expect(Stage.DATA)
    protocol.receive_data(b"250 2.1.0 Ok\r\n" + b"250 2.1.5 Ok\r\n" * 5 + b"354 go\r\n")
    assert protocol.next_reply() == (Stage.MAIL, Reply(250, ("2.1.0 Ok",), "2.1.0"))
    assert protocol.take_repeats(Stage.RCPT, 10) == 0  # MAIL's reply is not an RCPT's
    stage, first = protocol.next_reply()  # type: ignore[misc]
    assert stage is Stage.RCPT and first.code == 250
    # three more RCPTs are owed: the fifth "250" must not be taken as theirs
    assert protocol.take_repeats(Stage.RCPT, 10) == 3
    assert protocol.next_reply() == (Stage.DATA, first)  # the fifth is DATA's to judge


def test_take_repeats_stops_at_a_different_or_partial_line() -> None:
    parser = ReplyParser()
    parser.feed(b"250 ok\r\n250 ok\r\n250 ok\r\n251 moved\r\n250 o")
    assert parser.next_reply() == Reply(250, ("ok",))
    assert parser.take_repeats(10) == 2
    assert parser.next_reply() == Reply(251, ("moved",))
    assert parser.take_repeats(10) == 0 and parser.next_reply() is None
    parser.feed(b"k\r\n")
    assert parser.next_reply() == Reply(250, ("ok",))


def test_a_known_reply_is_recognised_whatever_its_line_ending_and_however_split() -> None:
    parser = ReplyParser()
    ok = Reply(250, ("2.1.5 Ok",), "2.1.5")
    parser.feed(b"250 2.1.5 Ok\r\n250 2.1.5 Ok\n250 2.1.5 Ok\r")
    assert parser.next_reply() == ok and parser.next_reply() == ok
    assert parser.next_reply() is None  # the CR alone does not end the line
    parser.feed(b"\n250 2.1.5 Ok\r\n")  # the repeat's CRLF split across reads
    assert parser.next_reply() == ok and parser.next_reply() == ok
    assert parser.next_reply() is None and not parser.in_progress
    parser.feed(b"250 2.1.5 Ok, and more\r\n")  # the known line as a prefix of another
    assert parser.next_reply() == Reply(250, ("2.1.5 Ok, and more",), "2.1.5")
