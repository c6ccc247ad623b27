"""DKIM signatures (RFC 6376): rsa-sha256, and ed25519-sha256 (RFC 8463).

Signing is dkimpy's; this module decides what is signed and loads keys once.
A key is read, recognised and test-signed when the signer is built, so a bad
key is a start-up error (the CLI's exit 2), never a bounce per recipient.
The caller signs the bytes that go on the wire (``newsletter`` re-encodes
long lines first): anything changed after signing breaks the body hash.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from pathlib import Path

#: what large mailbox providers expect to be covered, when present
DEFAULT_HEADERS: tuple[str, ...] = (
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
)

ALGORITHMS = ("rsa-sha256", "ed25519-sha256")

# DER object identifiers of the two key types (RFC 8017, RFC 8410)
_RSA_OID = bytes.fromhex("2a864886f70d010101")
_ED25519_OID = bytes.fromhex("2b6570")
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)
_KEY_FORMATS = (
    "PEM PKCS#8 (BEGIN PRIVATE KEY, as `openssl genpkey` writes) for rsa or ed25519, "
    "PEM PKCS#1 (BEGIN RSA PRIVATE KEY), or a base64 32-byte Ed25519 seed"
)
_PROBE = b"From: probe@example.invalid\r\nSubject: key check\r\n\r\nprobe\r\n"


class DKIMError(ValueError):
    """The key or the message cannot be signed as configured."""


@dataclass(frozen=True)
class DKIMSigner:
    """``private_key`` in dkimpy's form: PEM for RSA, the base64 seed for Ed25519
    (:meth:`from_file` and :func:`load_private_key` convert what people have)."""

    selector: str
    domain: str
    private_key: bytes = field(repr=False)
    algorithm: str = "rsa-sha256"
    headers: tuple[str, ...] = DEFAULT_HEADERS

    @classmethod
    def from_file(
        cls,
        selector: str,
        domain: str,
        key_file: str | Path,
        *,
        algorithm: str | None = None,
        headers: tuple[str, ...] = DEFAULT_HEADERS,
    ) -> DKIMSigner:
        """Load, recognise and test-sign a key; ``algorithm`` defaults to the key's type."""
        try:
            data = Path(key_file).read_bytes()
        except OSError as exc:
            raise DKIMError(f"cannot read DKIM key {key_file}: {exc.strerror}") from exc
        kind, key = load_private_key(data, source=str(key_file))
        wanted = f"{kind}-sha256"
        if algorithm is None:
            algorithm = wanted
        elif algorithm not in ALGORITHMS:
            raise DKIMError(f"unsupported DKIM algorithm {algorithm!r}")
        elif algorithm != wanted:
            raise DKIMError(
                f"DKIM key {key_file} is an {kind} key but the algorithm is {algorithm}"
            )
        signer = cls(selector, domain, key, algorithm, headers)
        signer.check()
        return signer

    def check(self) -> None:
        """Sign a probe message now: a key or option dkimpy refuses fails here, at start."""
        if not self.selector or not self.domain:
            raise DKIMError("DKIM needs a selector and a domain")
        try:
            self.sign(_PROBE)
        except DKIMError as exc:
            raise DKIMError(f"DKIM key does not sign: {exc}") from exc

    def sign(self, message: bytes) -> bytes:
        """The message with a ``DKIM-Signature`` header prepended.

        ``message`` must already be what goes on the wire (CRLF, re-encoded).
        """
        import dkim  # dkimpy (and dnspython with it) only for runs that sign

        present = [h for h in self.headers if _has(message, h)]
        if "from" not in (h.lower() for h in present):
            raise DKIMError("DKIM needs a From header to sign (RFC 6376 §5.4)")
        try:
            signature = dkim.sign(
                message,
                self.selector.encode(),
                self.domain.encode(),
                self.private_key,
                canonicalize=(b"relaxed", b"relaxed"),
                signature_algorithm=self.algorithm.encode(),
                include_headers=[h.encode() for h in present],
            )
        except Exception as exc:  # dkimpy raises more than DKIMException on odd keys
            raise DKIMError(f"DKIM signing failed: {exc}") from exc
        return bytes(signature) + message

    def covering(self, names: tuple[str, ...]) -> DKIMSigner:
        """This signer, also signing ``names`` (those not yet listed, compared by case)."""
        have = {h.lower() for h in self.headers}
        extra = tuple(n for n in names if n.lower() not in have)
        if not extra:
            return self
        return DKIMSigner(
            self.selector, self.domain, self.private_key, self.algorithm, self.headers + extra
        )


def load_private_key(data: bytes, *, source: str = "key") -> tuple[str, bytes]:
    """``("rsa" | "ed25519", key in dkimpy's form)`` from the formats people have."""
    text = data.strip()
    match = _PEM.search(text)
    if match is None:
        if b"-----BEGIN" in text:
            raise DKIMError(f"DKIM key {source}: damaged PEM; use {_KEY_FORMATS}")
        return "ed25519", _ed25519_seed(text, source)
    label = match.group(1).decode()
    try:
        der = base64.b64decode(b"".join(match.group(2).split()), validate=True)
    except binascii.Error:
        raise DKIMError(f"DKIM key {source}: the PEM body is not base64") from None
    if label == "RSA PRIVATE KEY":
        return "rsa", _pem("RSA PRIVATE KEY", der)
    if label == "PRIVATE KEY":
        oid, private = _pkcs8(der, source)
        if oid == _RSA_OID:
            return "rsa", _pem("PRIVATE KEY", der)
        if oid == _ED25519_OID:
            # the private key is itself an OCTET STRING holding the 32-byte seed
            if len(private) != 34 or private[:2] != b"\x04\x20":
                raise DKIMError(f"DKIM key {source}: malformed Ed25519 private key")
            return "ed25519", base64.b64encode(private[2:])
        raise DKIMError(f"DKIM key {source}: neither an RSA nor an Ed25519 key")
    if "ENCRYPTED" in label:
        raise DKIMError(
            f"DKIM key {source} is encrypted; decrypt it (openssl pkey -in KEY -out PLAIN)"
        )
    raise DKIMError(f"DKIM key {source}: PEM {label!r} is not a private key; use {_KEY_FORMATS}")


def _ed25519_seed(text: bytes, source: str) -> bytes:
    try:
        raw = base64.b64decode(b"".join(text.split()), validate=True)
    except binascii.Error:
        raise DKIMError(f"DKIM key {source} is not a key; use {_KEY_FORMATS}") from None
    if len(raw) == 64:  # libsodium's secret key: the seed followed by the public key
        raw = raw[:32]
    if len(raw) != 32:
        raise DKIMError(
            f"DKIM key {source}: base64 of {len(raw)} bytes, an Ed25519 seed has 32;"
            f" use {_KEY_FORMATS}"
        )
    return base64.b64encode(raw)


def _pem(label: str, der: bytes) -> bytes:
    body = base64.b64encode(der)
    lines = b"\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return b"-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label.encode(), lines, label.encode())


def _der(data: bytes, pos: int, source: str) -> tuple[int, bytes, int]:
    """One DER TLV at ``pos``: (tag, content, position after it)."""
    try:
        tag, length = data[pos], data[pos + 1]
        pos += 2
        if length & 0x80:
            n = length & 0x7F
            if not 0 < n <= 4:
                raise IndexError
            length = int.from_bytes(data[pos : pos + n], "big")
            pos += n
        if pos + length > len(data):
            raise IndexError
    except IndexError:
        raise DKIMError(f"DKIM key {source}: truncated or malformed DER") from None
    return tag, data[pos : pos + length], pos + length


def _pkcs8(der: bytes, source: str) -> tuple[bytes, bytes]:
    """(algorithm OID, privateKey octets) of a PKCS#8 PrivateKeyInfo (RFC 5958)."""
    tag, info, _ = _der(der, 0, source)
    if tag != 0x30:
        raise DKIMError(f"DKIM key {source}: not a PKCS#8 structure")
    tag, _version, pos = _der(info, 0, source)
    tag2, algorithm, pos = _der(info, pos, source)
    tag3, private, _ = _der(info, pos, source)
    if (tag, tag2, tag3) != (0x02, 0x30, 0x04):
        raise DKIMError(f"DKIM key {source}: not a PKCS#8 structure")
    tag, oid, _ = _der(algorithm, 0, source)
    if tag != 0x06:
        raise DKIMError(f"DKIM key {source}: not a PKCS#8 structure")
    return oid, private


def _has(message: bytes, name: str) -> bool:
    head = message.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    needle = name.lower().encode() + b":"
    return any(line.lower().startswith(needle) for line in head.splitlines())
