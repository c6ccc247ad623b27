"""The plain DNS answer in bytes (sans-IO): what it reads itself, what it leaves
to dnspython, and that no input makes it raise."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
from hypothesis import given
from hypothesis import strategies as st

from bulkmail import dns_wire
from bulkmail.testing.dns_server import DNSServer


def response(name: str, rdtype: str, values: list[str], ttl: int = 300,
             qid: int = 4242) -> tuple[bytes, bytes]:
    """(response wire as dnspython renders it, with name compression; our question)."""
    question = dns_wire.question(name, rdtype)
    assert question is not None
    query = dns.message.from_wire(dns_wire.query(qid, question))
    reply = dns.message.make_response(query)
    if values:
        reply.answer.append(dns.rrset.from_text_list(name + ".", ttl, "IN", rdtype, values))
    return reply.to_wire(), question


def test_query_is_a_recursive_question_dnspython_reads() -> None:
    question = dns_wire.question("Mail.Example.test", "MX")
    assert question is not None
    parsed = dns.message.from_wire(dns_wire.query(7, question))
    assert parsed.id == 7 and parsed.flags & dns.flags.RD
    assert parsed.question[0].to_text() == "Mail.Example.test. IN MX"


def test_mx_exchanges_are_read_through_compression_pointers() -> None:
    wire, question = response("d1.test", "MX", ["20 mx2.d1.test.", "10 MX1.d1.test."], ttl=60)
    assert wire.count(b"\xc0") >= 2  # the exchanges point back into the question
    records, ttl = dns_wire.answer(wire, 4242, question, "MX") or ((), 0.0)
    assert sorted(records) == [(10, "mx1.d1.test"), (20, "mx2.d1.test")]  # type: ignore[type-var]
    assert ttl == 60.0


def test_addresses_and_null_mx() -> None:
    wire, question = response("h.test", "AAAA", ["2001:db8::1"])
    assert dns_wire.answer(wire, 4242, question, "AAAA") == (("2001:db8::1",), 300.0)
    wire, question = response("h.test", "A", ["127.0.0.9", "127.0.0.8"])
    records, ttl = dns_wire.answer(wire, 4242, question, "A") or ((), 0.0)
    assert sorted(records) == ["127.0.0.8", "127.0.0.9"] and ttl == 300.0  # type: ignore[type-var]
    wire, question = response("null.test", "MX", ["0 ."])
    assert dns_wire.answer(wire, 4242, question, "MX") == (((0, ""),), 300.0)


def test_anything_but_the_plain_case_is_left_to_dnspython() -> None:
    wire, question = response("h.test", "A", ["127.0.0.1"])
    assert dns_wire.answer(wire, 4243, question, "A") is None  # another query's ID
    other = dns_wire.question("other.test", "A")
    assert other is not None
    assert dns_wire.answer(wire, 4242, other, "A") is None  # another question
    empty, question = response("h.test", "A", [])
    assert dns_wire.answer(empty, 4242, question, "A") is None  # no data: needs the SOA
    query = dns.message.from_wire(dns_wire.query(4242, question))
    for rcode in (dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL):
        failed = dns.message.make_response(query)
        failed.set_rcode(rcode)
        assert dns_wire.answer(failed.to_wire(), 4242, question, "A") is None
    chained = dns.message.make_response(query)
    chained.answer.append(dns.rrset.from_text("h.test.", 300, "IN", "CNAME", "real.test."))
    chained.answer.append(dns.rrset.from_text("real.test.", 300, "IN", "A", "127.0.0.1"))
    assert dns_wire.answer(chained.to_wire(), 4242, question, "A") is None
    cut = dns.message.make_response(query)
    cut.flags |= dns.flags.TC
    assert dns_wire.answer(cut.to_wire(), 4242, question, "A") is None
    assert dns_wire.truncated(cut.to_wire()) and not dns_wire.truncated(wire)


def test_names_we_do_not_spell_ourselves_go_to_dnspython() -> None:
    assert dns_wire.question("bücher.test", "MX") is None
    assert dns_wire.question("a..test", "MX") is None
    assert dns_wire.question("x" * 64 + ".test", "MX") is None
    assert dns_wire.question("under_score.test.", "MX") is not None


def test_a_pointer_loop_is_refused() -> None:
    wire, question = response("loop.test", "MX", ["10 mx.loop.test."])
    at = wire.rindex(b"\x02mx")  # the exchange's first label: make it point at itself
    looped = wire[:at] + bytes([0xC0, at]) + wire[at + 2 :]
    assert dns_wire.answer(looped, 4242, question, "MX") is None


@given(st.binary(max_size=600), st.sampled_from(["A", "AAAA", "MX"]))
def test_any_bytes_parse_or_are_refused_never_raise(data: bytes, rdtype: str) -> None:
    question = dns_wire.question("fuzz.test", rdtype)
    assert question is not None
    for wire in (data, data[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + data):
        result = dns_wire.answer(wire, int.from_bytes(wire[:2] or b"\0\0", "big"), question, rdtype)
        assert result is None or isinstance(result[0], tuple)


def test_dnssec_query_asks_for_the_ad_bit_and_dnssec_records() -> None:
    question = dns_wire.question("_mta-sts.Example.test", "TXT")
    assert question is not None
    parsed = dns.message.from_wire(dns_wire.dnssec_query(9, question))
    assert parsed.id == 9 and parsed.flags == dns.flags.RD | dns.flags.AD
    assert parsed.edns == 0 and parsed.ednsflags & dns.flags.DO and parsed.payload == 1232
    assert parsed.question[0].to_text() == "_mta-sts.Example.test. IN TXT"


def test_txt_records_are_joined_and_denials_read_with_the_ad_bit() -> None:
    wire, question = response("_mta-sts.a.test", "TXT",
                              ['"v=STSv1; " "id=20261130;"', '"other"'], ttl=120)
    texts, ttl, secure = dns_wire.txt_answer(wire, 4242, question) or ((), 0.0, True)
    assert sorted(texts) == [b"other", b"v=STSv1; id=20261130;"] and ttl == 120.0
    assert not secure
    query = dns.message.from_wire(dns_wire.dnssec_query(4242, question))
    for rcode in (dns.rcode.NXDOMAIN, dns.rcode.NOERROR):  # no such name; no data
        denial = dns.message.make_response(query)
        denial.set_rcode(rcode)
        denial.flags |= dns.flags.AD
        denial.authority.append(dns.rrset.from_text(
            "test.", 60, "IN", "SOA", "ns.test. admin.test. 1 3600 600 86400 30"))
        assert dns_wire.txt_answer(denial.to_wire(), 4242, question) == ((), None, True)


def test_txt_answers_other_than_records_or_denials_go_to_dnspython() -> None:
    wire, question = response("_mta-sts.a.test", "TXT", ['"v=STSv1; id=1;"'])
    assert dns_wire.txt_answer(wire, 4243, question) is None  # another query's ID
    query = dns.message.from_wire(dns_wire.dnssec_query(4242, question))
    failed = dns.message.make_response(query)
    failed.set_rcode(dns.rcode.SERVFAIL)
    assert dns_wire.txt_answer(failed.to_wire(), 4242, question) is None
    chained = dns.message.make_response(query)
    chained.answer.append(dns.rrset.from_text("_mta-sts.a.test.", 300, "IN", "CNAME", "b.test."))
    chained.answer.append(dns.rrset.from_text("b.test.", 300, "IN", "TXT", '"v=STSv1; id=1;"'))
    assert dns_wire.txt_answer(chained.to_wire(), 4242, question) is None
    cut = dns.message.make_response(query)
    cut.flags |= dns.flags.TC
    assert dns_wire.txt_answer(cut.to_wire(), 4242, question) is None


@given(st.binary(max_size=600))
def test_any_bytes_as_a_txt_answer_parse_or_are_refused_never_raise(data: bytes) -> None:
    question = dns_wire.question("_mta-sts.fuzz.test", "TXT")
    assert question is not None
    for wire in (data, data[:2] + b"\x81\x83\x00\x01\x00\x01\x00\x00\x00\x00" + question + data):
        result = dns_wire.txt_answer(wire, int.from_bytes(wire[:2] or b"\0\0", "big"), question)
        assert result is None or all(isinstance(text, bytes) for text in result[0])


def test_the_test_servers_denials_from_bytes_match_dnspythons() -> None:
    """The loopback DNS server answers denials from bytes (a benchmark asks
    100,000 of them): the same rcode, flags and SOA as its dnspython build."""
    server = DNSServer()
    server.add("test", "SOA", "ns.test. admin.test. 1 3600 600 86400 30", ttl=60)
    server.add("a.test", "MX", "10 mx.test.")
    for name, rdtype in (("_mta-sts.a.test", "TXT"), ("a.test", "TXT"), ("nowhere.test", "A")):
        question = dns_wire.question(name, rdtype)
        assert question is not None
        wire = dns_wire.dnssec_query(77, question)
        fast = dns.message.from_wire(server.answer(wire, "udp") or b"")
        built = dns.message.from_wire(server._build(wire, "udp") or b"")
        assert fast.rcode() == built.rcode() and fast.flags == built.flags
        assert fast.question == built.question and fast.authority == built.authority
        assert not fast.answer and not built.answer
