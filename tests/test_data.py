"""Message data (RFC 5321 §4.5.2, RFC 3030): whatever bytes a message holds,
only CRLF line ends and exactly one terminator reach the wire (no SMTP
smuggling), and the receiver's un-stuffing gives the normalised message back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkmail.protocol.data import (
    PreparedMessage,
    bdat_chunks,
    dot_stuff,
    encode_data,
    has_8bit,
    longest_line,
    normalize_newlines,
    unstuff,
)
from bulkmail.protocol.errors import LocalProtocolError, MessageError

#: Random bytes rarely hit the interesting shapes; these pieces do.
messages = st.binary(max_size=400) | st.lists(
    st.sampled_from(
        [b"\r", b"\n", b".", b"\r\n", b"x", b"\r\n.\r\n", b"\n.\n", b"\r.\r", b"..", b"\xff"]
    ),
    max_size=40,
).map(b"".join)


def has_bare_cr_or_lf(data: bytes) -> bool:
    rest = data.replace(b"\r\n", b"")
    return b"\r" in rest or b"\n" in rest


@settings(max_examples=500, deadline=None)
@given(messages)
def test_encoded_data_has_crlf_line_ends_only(message: bytes) -> None:
    assert not has_bare_cr_or_lf(encode_data(message))


@settings(max_examples=500, deadline=None)
@given(messages)
def test_encoded_data_has_exactly_one_terminator_at_the_end(message: bytes) -> None:
    wire = encode_data(message)
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    assert (b"\r\n" + wire).count(b"\r\n.\r\n") == 1
    lines = wire.split(b"\r\n")[:-2]  # drop the terminator line and the final empty piece
    assert b"." not in lines  # no line but the terminator is a lone dot
    assert all(not line.startswith(b".") or line.startswith(b"..") for line in lines)


@settings(max_examples=500, deadline=None)
@given(messages)
def test_unstuff_inverts_encode_data(message: bytes) -> None:
    assert unstuff(encode_data(message)) == normalize_newlines(message)


@settings(max_examples=500, deadline=None)
@given(messages)
def test_normalisation_is_idempotent_and_keeps_content(message: bytes) -> None:
    normalized = normalize_newlines(message)
    assert normalize_newlines(normalized) == normalized
    assert not has_bare_cr_or_lf(normalized)
    assert normalized.replace(b"\r\n", b"") == message.replace(b"\r", b"").replace(b"\n", b"")
    assert normalized == b"" or normalized.endswith(b"\r\n")


@settings(max_examples=300, deadline=None)
@given(messages, st.integers(min_value=1, max_value=50))
def test_bdat_chunks_reassemble_to_the_normalised_message(message: bytes, size: int) -> None:
    normalized = normalize_newlines(message)
    chunks = bdat_chunks(normalized, chunk_size=size)
    assert b"".join(chunks) == normalized
    assert chunks and all(len(c) <= size for c in chunks)
    assert all(chunks) or chunks == [b""]


@settings(max_examples=300, deadline=None)
@given(messages)
def test_prepared_message_agrees_with_the_functions(message: bytes) -> None:
    prepared = PreparedMessage.from_bytes(message)
    assert prepared.normalized == normalize_newlines(message)
    assert prepared.data_payload == encode_data(message)
    assert prepared.size == len(prepared.normalized)
    assert prepared.eightbit == has_8bit(message)
    lines = prepared.normalized.split(b"\r\n")
    assert prepared.longest_line == max(map(len, lines))


@pytest.mark.parametrize(
    "message, wire",
    [
        (b"\n.\n", b"\r\n..\r\n.\r\n"),
        (b"\r.\r", b"\r\n..\r\n.\r\n"),
        (b"\r\n.\n", b"\r\n..\r\n.\r\n"),
        (b"\r\r\n.\r\r\n", b"\r\n\r\n..\r\n\r\n.\r\n"),
        (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r.\rb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r\n.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"\n\r", b"\r\n\r\n.\r\n"),  # LF then CR is two line ends, not one
        (b".starts", b"..starts\r\n.\r\n"),
        (b".\r\n..\r\n", b"..\r\n...\r\n.\r\n"),
        (b"a\r\n.\r\n..\r\nb\r\n", b"a\r\n..\r\n...\r\nb\r\n.\r\n"),
        (b"no final crlf", b"no final crlf\r\n.\r\n"),
        (b"ends in cr\r", b"ends in cr\r\n.\r\n"),
        (b"", b".\r\n"),
        (b"\r\n", b"\r\n.\r\n"),
    ],
)
def test_smuggling_shapes_reach_the_wire_safely(message: bytes, wire: bytes) -> None:
    assert encode_data(message) == wire
    assert unstuff(wire) == normalize_newlines(message)


def test_normalize_newlines() -> None:
    assert normalize_newlines(b"") == b""
    assert normalize_newlines(b"a") == b"a\r\n"
    assert normalize_newlines(b"a\nb\rc\r\nd") == b"a\r\nb\r\nc\r\nd\r\n"
    already = b"a\r\nb\r\n"
    assert normalize_newlines(already) is already  # the common case copies nothing
    # counts that balance but are not CRLF pairs must still be rewritten
    assert normalize_newlines(b"\n\r") == b"\r\n\r\n"
    assert normalize_newlines(b"a\rb\nc\r\n") == b"a\r\nb\r\nc\r\n"


def test_dot_stuff_doubles_every_leading_dot_only() -> None:
    assert dot_stuff(b".a\r\n") == b"..a\r\n"
    assert dot_stuff(b"a.b\r\n.\r\n..\r\n") == b"a.b\r\n..\r\n...\r\n"
    assert dot_stuff(b"") == b""


def test_unstuff_removes_the_first_dot_of_any_dotted_line() -> None:
    # RFC 5321 §4.5.2: a receiver deletes the first dot even if it was not doubled
    assert unstuff(b".a\r\n..b\r\n.\r\n") == b"a\r\n.b\r\n"


@pytest.mark.parametrize("wire", [b"", b"abc", b"abc\r\n", b"abc.\r\n", b"abc\n.\n"])
def test_unstuff_refuses_data_without_the_terminator(wire: bytes) -> None:
    with pytest.raises(ValueError, match=r"CRLF \. CRLF"):
        unstuff(wire)


def test_has_8bit() -> None:
    assert not has_8bit(b"plain ascii\r\n")
    assert has_8bit("café".encode())
    assert has_8bit(b"\x80")
    assert not has_8bit(b"")


def test_longest_line_excludes_crlf() -> None:
    assert longest_line(b"") == 0
    assert longest_line(b"abc\r\n") == 3
    assert longest_line(b"a\r\n" + b"x" * 1000 + b"\r\nbb\r\n") == 1000
    assert longest_line(b"no crlf") == 7


def test_bdat_chunks() -> None:
    normalized = normalize_newlines(b"abc\n" * 1000)
    chunks = bdat_chunks(normalized, chunk_size=333)
    assert b"".join(chunks) == normalized
    assert [len(c) for c in chunks] == [333] * 15 + [5]
    assert bdat_chunks(b"") == [b""]
    assert bdat_chunks(b".\r\n") == [b".\r\n"]  # no stuffing in BDAT
    assert bdat_chunks(normalized) == [normalized]
    with pytest.raises(ValueError):
        bdat_chunks(normalized, chunk_size=0)


def test_prepared_message_fields() -> None:
    prepared = PreparedMessage.from_bytes(b"Subject: x\n\n.hi\n")
    assert prepared.normalized == b"Subject: x\r\n\r\n.hi\r\n"
    assert prepared.data_payload == b"Subject: x\r\n\r\n..hi\r\n.\r\n"
    assert prepared.size == len(prepared.normalized) == 19
    assert prepared.eightbit is False
    assert prepared.longest_line == 10
    with pytest.raises(AttributeError):
        prepared.size = 1  # type: ignore[misc]


def test_check_sendable_refuses_a_line_over_998_octets() -> None:
    PreparedMessage.from_bytes(b"x" * 998 + b"\r\n").check_sendable(
        eightbitmime=False, max_size=None
    )
    too_long = PreparedMessage.from_bytes(b"x" * 999 + b"\r\n")
    with pytest.raises(MessageError) as info:
        too_long.check_sendable(eightbitmime=True, max_size=None)
    assert str(info.value) == "line of 999 octets exceeds 998"


def test_check_sendable_applies_a_smaller_line_limit_to_short_messages() -> None:
    short = PreparedMessage.from_bytes(b"x" * 100 + b"\r\n")
    with pytest.raises(MessageError, match="line of 100 octets exceeds 80"):
        short.check_sendable(eightbitmime=True, max_size=None, max_line_length=80)


def test_check_sendable_refuses_8bit_without_8bitmime() -> None:
    eight = PreparedMessage.from_bytes("café\n".encode())
    with pytest.raises(MessageError) as info:
        eight.check_sendable(eightbitmime=False, max_size=None)
    assert str(info.value) == "8-bit content but server lacks 8BITMIME"
    eight.check_sendable(eightbitmime=True, max_size=None)


def test_check_sendable_refuses_a_message_over_the_server_size() -> None:
    message = PreparedMessage.from_bytes(b"0123456789")  # 12 octets once terminated
    message.check_sendable(eightbitmime=False, max_size=12)
    with pytest.raises(MessageError) as info:
        message.check_sendable(eightbitmime=False, max_size=11)
    assert str(info.value) == "message of 12 octets exceeds server SIZE 11"
    message.check_sendable(eightbitmime=False, max_size=0)  # RFC 1870: 0 means no limit


def test_message_error_is_a_local_protocol_error() -> None:
    with pytest.raises(LocalProtocolError):
        PreparedMessage.from_bytes(b"\xff").check_sendable(eightbitmime=False, max_size=None)
