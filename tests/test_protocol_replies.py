"""The sans-IO reply parser and EHLO capabilities: exact cases, and hypothesis
properties -- any input either parses or raises RemoteProtocolError, fed
whole or one byte at a time, with bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkmail.protocol.errors import RemoteProtocolError
from bulkmail.protocol.extensions import parse_ehlo
from bulkmail.protocol.replies import Reply, ReplyParser


def parse_all(data: bytes, **kwargs: int) -> list[Reply]:
    parser = ReplyParser(**kwargs)
    parser.feed(data)
    out = []
    while (reply := parser.next_reply()) is not None:
        out.append(reply)
    return out


def test_single_and_multiline_replies() -> None:
    replies = parse_all(b"220 mx ESMTP\r\n250-mx\r\n250-PIPELINING\r\n250 SIZE 100\r\n")
    assert replies[0] == Reply(220, ("mx ESMTP",))
    assert replies[1].code == 250 and replies[1].lines == ("mx", "PIPELINING", "SIZE 100")


def test_bare_lf_and_code_only_lines_are_tolerated() -> None:
    assert parse_all(b"250 ok\n354\r\n") == [Reply(250, ("ok",)), Reply(354, ("",))]


def test_enhanced_code_parsed_and_stripped_from_text() -> None:
    (reply,) = parse_all(b"550-5.1.1 No such user\r\n550 5.1.1 see the docs\r\n")
    assert reply.enhanced == "5.1.1"
    assert reply.text == "No such user\nsee the docs"
    assert str(reply) == "550 5.1.1 No such user\nsee the docs"


def test_enhanced_code_of_another_class_is_ignored() -> None:
    (reply,) = parse_all(b"250 5.0.0 odd\r\n")
    assert reply.enhanced is None and reply.text == "5.0.0 odd"


@pytest.mark.parametrize(
    "data", [b"25 x\r\n", b"2500 x\r\n", b"600 x\r\n", b"abc\r\n", b"250x\r\n", b"\r\n"]
)
def test_malformed_codes_raise(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_all(data)
    assert info.value.data == data.rstrip(b"\r\n")  # carries what was read


def test_disagreeing_multiline_codes_raise() -> None:
    with pytest.raises(RemoteProtocolError, match="changed code"):
        parse_all(b"250-a\r\n251 b\r\n")


def test_line_cap_applies_before_the_newline_arrives() -> None:
    parser = ReplyParser(max_line_length=1024)
    piece = b"x" * 65536
    parser.feed(b"250 ")
    with pytest.raises(RemoteProtocolError, match="longer than"):
        for _ in range(160):  # 10 MB without a newline
            parser.feed(piece)
            assert parser.buffered <= 1024 + len(piece) + 4
            parser.next_reply()


def test_lines_per_reply_are_capped() -> None:
    with pytest.raises(RemoteProtocolError, match="lines"):
        parse_all(b"250-x\r\n" * 300, max_lines=100)


def test_eof_in_the_middle_of_a_reply_raises() -> None:
    parser = ReplyParser()
    parser.feed(b"250-partial\r\n")
    assert parser.next_reply() is None
    parser.feed(b"")
    with pytest.raises(RemoteProtocolError, match="closed"):
        parser.next_reply()


def test_cap_below_rfc_minimum_is_refused() -> None:
    with pytest.raises(ValueError):
        ReplyParser(max_line_length=100)


def outcome(chunks: list[bytes]) -> tuple[list[Reply], bool]:
    parser = ReplyParser(max_line_length=600, max_lines=20)
    replies: list[Reply] = []
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while (reply := parser.next_reply()) is not None:
                replies.append(reply)
            assert parser.buffered <= 600 + 20 * 600 + len(chunk) + 8
    except RemoteProtocolError:
        return replies, True
    return replies, False


smtpish = st.lists(
    st.one_of(
        st.sampled_from([b"250", b"250-", b"250 ", b"354 ", b"421 ", b"5.1.1 ", b"\r\n", b"\n",
                         b"2500", b"\r", b"-", b" "]),
        st.binary(max_size=20),
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(smtpish)
def test_any_input_parses_or_raises_the_protocol_error(data: bytes) -> None:
    whole = outcome([data])
    bytewise = outcome([data[i : i + 1] for i in range(len(data))])
    # the same replies in both modes; an error in one is an error in the other
    assert whole == bytewise


# -- EHLO capabilities ---------------------------------------------------------------


def ehlo(*lines: str) -> Reply:
    return Reply(250, ("mx.example.com", *lines))


def test_seed_capabilities() -> None:
    ext = parse_ehlo(ehlo("PIPELINING", "SIZE 52428800", "STARTTLS", "AUTH LOGIN PLAIN",
                          "8BITMIME", "SMTPUTF8"))
    assert ext.pipelining and ext.starttls and ext.eightbitmime and ext.smtputf8
    assert ext.size == 52428800
    assert ext.auth_mechanisms == ("LOGIN", "PLAIN")
    assert not ext.chunking and not ext.dsn and not ext.enhancedstatuscodes
    assert "SIZE 52428800" in ext.as_list()


def test_legacy_auth_and_other_extensions() -> None:
    ext = parse_ehlo(ehlo("AUTH=LOGIN", "AUTH CRAM-MD5 LOGIN", "CHUNKING", "DSN",
                          "ENHANCEDSTATUSCODES", "size 0", "X-UNKNOWN foo"))
    assert ext.auth_mechanisms == ("LOGIN", "CRAM-MD5")
    assert ext.chunking and ext.dsn and ext.enhancedstatuscodes
    assert ext.size is None  # 0 or junk: no limit announced
    assert ext.has("x-unknown")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=20))
def test_ehlo_parser_never_raises(lines: list[str]) -> None:
    parse_ehlo(Reply(250, ("mx", *lines)))
