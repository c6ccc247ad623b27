"""DANE (RFC 7672): TLSA matching alone, and delivery with TLSA records served
by the loopback DNS server with and without the AD bit."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

import dns.rcode
import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bulkmail import Mailer, Status
from bulkmail.results import Result
from bulkmail.tls_policy.dane import DANEMismatch, TLSARecord, check_certificate, spki

from .tlspolicy_world import DOMAIN, ENFORCE, MESSAGE, MX, World, build_world

RCPTS = [f"u{i}@{DOMAIN}" for i in range(2)]


def leaf_der(ca: trustme.CA, name: str) -> tuple[bytes, trustme.LeafCert]:
    cert = ca.issue_cert(name)
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode()), cert


def test_spki_is_the_subject_public_key_info() -> None:
    der, _ = leaf_der(trustme.CA(), "mx.example.test")
    expected = x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki(der) == expected


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("mtype", [0, 1, 2])
def test_dane_ee_matches_each_selector_and_matching_type(selector: int, mtype: int) -> None:
    der, _ = leaf_der(trustme.CA(), "mx.example.test")
    other, _ = leaf_der(trustme.CA(), "mx.example.test")
    selected = der if selector == 0 else spki(der)
    data = {0: selected, 1: hashlib.sha256(selected).digest(),
            2: hashlib.sha512(selected).digest()}[mtype]
    record = TLSARecord(3, selector, mtype, data)
    check_certificate((record,), der)
    with pytest.raises(DANEMismatch):
        check_certificate((record,), other)


def test_unusable_records_never_match() -> None:
    der, _ = leaf_der(trustme.CA(), "mx.example.test")
    digest = hashlib.sha256(spki(der)).digest()
    for usage in (0, 1, 2):  # PKIX-TA, PKIX-EE (not for SMTP); DANE-TA (no chain in 3.11)
        record = TLSARecord(usage, 1, 1, digest)
        assert not record.usable
        with pytest.raises(DANEMismatch):
            check_certificate((record,), der)
    assert not TLSARecord(3, 1, 9, digest).usable


def tlsa_for(der: bytes) -> str:
    return f"3 1 1 {hashlib.sha256(spki(der)).hexdigest()}"


async def run(world: World) -> list[Result]:
    results: list[Result] = []
    async with Mailer(world.config("dane")) as mailer:
        await mailer.send("news@sender.test", MESSAGE, RCPTS, on_result=results.append)
    return results


async def dane_world(nursery: trio.Nursery, tmp_path: Path, *, records: list[str] | None = None,
                     ad: bool = True, **kwargs: object) -> World:
    """A sink whose certificate names ``other.test``, not its MX name: the web
    PKI would refuse it, only a DANE-EE record can vouch for it."""
    world = await build_world(nursery, tmp_path, cert_name="other.test", **kwargs)  # type: ignore[arg-type]
    owner = f"_{world.relay.port}._tcp.{MX}"
    for record in records if records is not None else [tlsa_for(world.mx_der)]:
        world.dns.add(owner, "TLSA", record)
    if ad:
        world.dns.authenticate(owner)
        world.dns.authenticate(MX)
    return world


def report_rows(world: World) -> list[tuple[object, ...]]:
    import sqlite3

    with sqlite3.connect(world.state / "tlsrpt.sqlite") as db:
        return db.execute("SELECT policy_type, result_type, count FROM sessions").fetchall()


async def test_a_matching_dane_ee_record_authenticates_the_server(tmp_path: Path) -> None:
    server_names: list[str | None] = []
    async with trio.open_nursery() as nursery:
        world = await dane_world(nursery, tmp_path)
        context = world.sink.config.ssl_context
        assert context is not None
        context.sni_callback = lambda _obj, name, _ctx: server_names.append(name)  # type: ignore[assignment,misc]
        results = await run(world)
        nursery.cancel_scope.cancel()
    assert server_names == [MX]  # SNI sent, though no name is checked
    assert [r.status for r in results] == [Status.DELIVERED] * 2
    assert str(results[0].tls) == "dane verified"
    assert len(world.sink.messages) == 1
    assert report_rows(world) == [("tlsa", "", 1)]


async def test_a_certificate_matching_no_record_is_refused(tmp_path: Path) -> None:
    other, _ = leaf_der(trustme.CA(), MX)
    async with trio.open_nursery() as nursery:
        world = await dane_world(nursery, tmp_path, records=[tlsa_for(other)])
        results = await run(world)
        nursery.cancel_scope.cancel()
    assert {r.status for r in results} == {Status.DEFERRED}
    assert results[0].enhanced == "4.7.5"
    assert b"MAIL FROM" not in bytes(world.relay.sent).upper() and world.sink.messages == []
    assert report_rows(world) == [("tlsa", "tlsa-invalid", 1)]


async def test_records_without_the_ad_bit_are_not_trusted(tmp_path: Path) -> None:
    other, _ = leaf_der(trustme.CA(), MX)
    async with trio.open_nursery() as nursery:
        world = await dane_world(nursery, tmp_path, records=[tlsa_for(other)], ad=False)
        results = await run(world)
        nursery.cancel_scope.cancel()
    # unauthenticated TLSA is no policy: delivered as without DANE (opportunistic)
    assert [r.status for r in results] == [Status.DELIVERED] * 2
    assert str(results[0].tls) == "opportunistic unverified"


async def test_a_failed_tlsa_lookup_in_a_signed_zone_defers(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await dane_world(nursery, tmp_path)
        world.dns.set_rcode(f"_{world.relay.port}._tcp.{MX}", dns.rcode.SERVFAIL)
        results = await run(world)
        nursery.cancel_scope.cancel()
    assert {r.status for r in results} == {Status.DEFERRED}
    assert results[0].code == 451 and results[0].enhanced == "4.7.5"
    assert "TLSA lookup" in (results[0].text or "")
    assert world.relay.connections == 0  # never downgraded to an unchecked session
    assert report_rows(world) == [("tlsa", "dnssec-invalid", 1)]


async def test_only_unusable_records_still_require_tls(tmp_path: Path) -> None:
    digest = hashlib.sha256(spki(leaf_der(trustme.CA(), MX)[0])).hexdigest()
    async with trio.open_nursery() as nursery:
        world = await dane_world(nursery, tmp_path, records=[f"2 1 1 {digest}"],
                                 strip_starttls=True)
        results = await run(world)
        nursery.cancel_scope.cancel()
    assert {r.status for r in results} == {Status.DEFERRED}
    assert b"MAIL FROM" not in bytes(world.relay.sent).upper()
    assert report_rows(world) == [("tlsa", "starttls-not-supported", 1)]


async def test_dane_takes_precedence_over_mta_sts(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        world = await dane_world(nursery, tmp_path)
        # an enforce policy that would refuse this MX and its certificate
        world.sts(ENFORCE.replace(f"mx: {MX}", "mx: *.elsewhere.test"))
        results = await run(world)
        nursery.cancel_scope.cancel()
    assert world.policies.requests  # the policy was there, and fetched
    assert [r.status for r in results] == [Status.DELIVERED] * 2
    assert str(results[0].tls) == "dane verified"
