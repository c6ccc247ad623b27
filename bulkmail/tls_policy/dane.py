"""DANE for SMTP (RFC 7672): which TLSA records are usable, and matching them.

Only DANE-EE(3) records are usable here: Python 3.11's ``ssl`` module gives
the peer's leaf certificate but not the chain it sent, so a DANE-TA(2)
record cannot be checked; RFC 7672 §2.2 says what to do with records a
client cannot use -- they are "unusable", and a host whose records are all
unusable still gets mandatory (unauthenticated) TLS, never plaintext.
PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP by RFC 7672 §3.1.3.
DANE-EE matches the key or certificate alone: no name check, no expiry
(RFC 7672 §3.1.1).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

DANE_TA, DANE_EE = 2, 3
SELECTOR_CERT, SELECTOR_SPKI = 0, 1
_DIGESTS = {0: None, 1: "sha256", 2: "sha512"}


class DANEMismatch(Exception):
    """The server's certificate matches none of the host's usable TLSA records."""


@dataclass(frozen=True, slots=True)
class TLSARecord:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @classmethod
    def from_rdata(cls, rdata: Any) -> TLSARecord:
        return cls(int(rdata.usage), int(rdata.selector), int(rdata.mtype), bytes(rdata.cert))

    @property
    def usable(self) -> bool:
        return self.usage == DANE_EE and self.selector in (0, 1) and self.mtype in _DIGESTS

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"

    def matches(self, certificate_der: bytes) -> bool:
        selected = certificate_der if self.selector == SELECTOR_CERT else spki(certificate_der)
        digest = _DIGESTS[self.mtype]
        value = selected if digest is None else hashlib.new(digest, selected).digest()
        return value == self.data


def check_certificate(records: tuple[TLSARecord, ...], certificate_der: bytes | None) -> None:
    """Raise :class:`DANEMismatch` unless a usable record matches the certificate."""
    if certificate_der is None:
        raise DANEMismatch("the server presented no certificate")
    usable = [r for r in records if r.usable]
    try:
        if any(r.matches(certificate_der) for r in usable):
            return
    except ValueError as exc:
        raise DANEMismatch(f"unreadable server certificate: {exc}") from exc
    raise DANEMismatch(f"the certificate matches none of {len(usable)} TLSA record(s)")


# -- the SubjectPublicKeyInfo of a DER certificate (selector 1) -----------------


def _element(der: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at ``offset``."""
    if offset + 2 > len(der):
        raise ValueError("truncated DER")
    tag, length = der[offset], der[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or start + count > len(der):
            raise ValueError("bad DER length")
        length = int.from_bytes(der[start : start + count], "big")
        start += count
    end = start + length
    if end > len(der):
        raise ValueError("truncated DER")
    return tag, start, end


def spki(certificate_der: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of an X.509 certificate (RFC 5280 §4.1).

    A few lines of DER walking instead of a dependency: Certificate ->
    tbsCertificate -> [version] serial signature issuer validity subject SPKI."""
    tag, start, _end = _element(certificate_der, 0)
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, position, _tbs_end = _element(certificate_der, start)
    if tag != 0x30:
        raise ValueError("no tbsCertificate")
    if certificate_der[position] == 0xA0:  # explicit version
        position = _element(certificate_der, position)[2]
    for _field in range(5):  # serial, signature, issuer, validity, subject
        position = _element(certificate_der, position)[2]
    tag, start, end = _element(certificate_der, position)
    if tag != 0x30:
        raise ValueError("no subjectPublicKeyInfo")
    return certificate_der[position:end]
