"""DKIM signatures (RFC 6376): rsa-sha256, and ed25519-sha256 (RFC 8463).

Signing is dkimpy's; this module decides what is signed and loads keys once.
Identical content is signed once per run; a personalised message once per
recipient (the engine renders, then signs).
"""

from __future__ import annotations

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


class DKIMError(ValueError):
    """The key or the message cannot be signed as configured."""


@dataclass(frozen=True)
class DKIMSigner:
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
        algorithm: str = "rsa-sha256",
        headers: tuple[str, ...] = DEFAULT_HEADERS,
    ) -> DKIMSigner:
        """Load a PEM RSA key, or a base64 ed25519 seed for ``ed25519-sha256``."""
        if algorithm not in ("rsa-sha256", "ed25519-sha256"):
            raise DKIMError(f"unsupported DKIM algorithm {algorithm!r}")
        try:
            key = Path(key_file).read_bytes().strip()
        except OSError as exc:
            raise DKIMError(f"cannot read DKIM key {key_file}: {exc.strerror}") from exc
        return cls(selector, domain, key, algorithm, headers)

    def sign(self, message: bytes) -> bytes:
        """The message with a ``DKIM-Signature`` header prepended."""
        import dkim  # dkimpy (and dnspython with it) only for runs that sign

        present = [h for h in self.headers if _has(message, h)]
        if "From" not in present:
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
        except dkim.DKIMException as exc:
            raise DKIMError(f"DKIM signing failed: {exc}") from exc
        return bytes(signature) + message


def _has(message: bytes, name: str) -> bool:
    head = message.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    needle = name.lower().encode() + b":"
    return any(line.lower().startswith(needle) for line in head.splitlines())
