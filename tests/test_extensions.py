"""EHLO capability parsing (RFC 5321 §4.1.1.1 and the extension RFCs).

Capabilities only narrow what we send, so a garbled line must never make
parsing fail: the worst a server can do is announce less."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkmail.protocol.extensions import Extensions, parse_ehlo
from bulkmail.protocol.replies import Reply, ReplyParser

SEED = Path(__file__).parent / "data" / "smtp-session-example.txt"


def ehlo(*lines: str) -> Reply:
    return Reply(250, ("mx.example.com", *lines))


def test_seed_ehlo_reply() -> None:
    # the first EHLO answer of the seed session, as bytes on the wire
    assert "250-SIZE 52428800" in SEED.read_text()
    parser = ReplyParser()
    parser.feed(
        b"250-mail.example.com\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-STARTTLS\r\n"
        b"250-AUTH LOGIN PLAIN\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
    )
    reply = parser.next_reply()
    assert reply is not None
    ext = parse_ehlo(reply)
    assert ext.pipelining and ext.starttls and ext.eightbitmime and ext.smtputf8
    assert ext.size == 52428800
    assert ext.auth_mechanisms == ("LOGIN", "PLAIN")
    assert not ext.chunking and not ext.dsn and not ext.enhancedstatuscodes
    assert ext.as_list() == [
        "PIPELINING", "SIZE 52428800", "STARTTLS", "AUTH LOGIN PLAIN", "8BITMIME", "SMTPUTF8"
    ]


def test_seed_ehlo_after_starttls_drops_starttls() -> None:
    ext = parse_ehlo(ehlo("AUTH LOGIN PLAIN", "8BITMIME", "SMTPUTF8"))
    assert not ext.starttls and not ext.pipelining
    assert ext.size is None
    assert ext.auth_mechanisms == ("LOGIN", "PLAIN")


def test_greeting_line_is_not_a_keyword() -> None:
    ext = parse_ehlo(Reply(250, ("PIPELINING",)))
    assert not ext.pipelining and ext.keywords == {}


def test_helo_style_empty_extensions() -> None:
    ext = Extensions()
    assert not ext.pipelining and ext.size is None and ext.auth_mechanisms == ()
    assert ext.as_list() == []


def test_legacy_auth_equals_form_is_merged_without_duplicates() -> None:
    ext = parse_ehlo(ehlo("AUTH=LOGIN PLAIN", "AUTH LOGIN PLAIN CRAM-MD5"))
    assert ext.auth_mechanisms == ("LOGIN", "PLAIN", "CRAM-MD5")
    assert ext.keywords["AUTH"] == "LOGIN PLAIN CRAM-MD5"
    assert parse_ehlo(ehlo("auth=login")).auth_mechanisms == ("LOGIN",)


def test_auth_mechanisms_are_upper_cased() -> None:
    assert parse_ehlo(ehlo("auth plain xoauth2")).auth_mechanisms == ("PLAIN", "XOAUTH2")


def test_chunking_dsn_enhancedstatuscodes() -> None:
    ext = parse_ehlo(ehlo("CHUNKING", "DSN", "ENHANCEDSTATUSCODES", "BINARYMIME"))
    assert ext.chunking and ext.dsn and ext.enhancedstatuscodes
    assert ext.has("binarymime") and ext.has("BINARYMIME")
    assert not ext.has("PIPELINING")


def test_keywords_are_case_insensitive_and_params_kept() -> None:
    ext = parse_ehlo(ehlo("pipelining", "x-unknown foo  bar ", "  8bitmime  "))
    assert ext.pipelining and ext.eightbitmime
    assert ext.keywords["X-UNKNOWN"] == "foo  bar"
    assert ext.has("x-unknown")


@pytest.mark.parametrize(
    "line", ["SIZE", "SIZE 0", "SIZE -5", "SIZE abc", "SIZE 12abc", "SIZE 1.5", "SIZE  "]
)
def test_bad_or_zero_size_means_no_limit(line: str) -> None:
    ext = parse_ehlo(ehlo("PIPELINING", line))
    assert ext.size is None
    assert ext.pipelining  # the rest of the reply still counts


def test_size_with_surrounding_space() -> None:
    assert parse_ehlo(ehlo("SIZE   1000 ")).size == 1000


def test_junk_lines_are_skipped() -> None:
    ext = parse_ehlo(ehlo("", "   ", "!!!", "PIPE LINING?", "-", "CHUNKING"))
    assert ext.chunking
    assert "!!!" not in ext.keywords and "-" not in ext.keywords


@pytest.mark.parametrize("line", ["SIZE ²", "SIZE " + "9" * 5000])
def test_unparseable_size_digits_mean_no_limit(line: str) -> None:
    assert parse_ehlo(ehlo(line)).size is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=40),
            st.tuples(
                st.sampled_from(["SIZE", "AUTH", "AUTH=", "auth=", "PIPELINING", "8BITMIME",
                                 "X-", ""]),
                st.text(alphabet="0123456789 =-abcPLAIN\t", max_size=20),
            ).map(lambda kv: f"{kv[0]} {kv[1]}"),
        ),
        max_size=20,
    )
)
def test_parse_ehlo_never_raises(lines: list[str]) -> None:
    ext = parse_ehlo(Reply(250, ("mx", *lines)))
    assert ext.size is None or ext.size > 0
    assert len(set(ext.auth_mechanisms)) == len(ext.auth_mechanisms)
    assert all(k == k.upper() for k in ext.keywords)
