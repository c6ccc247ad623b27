"""Make over-long lines sendable (RFC 5321 §4.5.3.1.6: 998 octets per line).

Newsletter HTML often comes as one enormous line.  Rather than refusing it or
letting a server break it, the offending MIME parts are re-encoded --
quoted-printable for text, base64 otherwise -- which changes the transfer
encoding and nothing a reader sees.
"""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from .protocol.data import MAX_LINE_LENGTH as MAX_LINE
from .protocol.data import PreparedMessage, longest_line, normalize_newlines
from .protocol.errors import MessageError


def _part_too_long(part: EmailMessage) -> bool:
    payload = part.get_payload(decode=False)
    if not isinstance(payload, str):
        return False
    return any(len(line.encode("utf-8", "surrogateescape")) > MAX_LINE
               for line in payload.splitlines())


def reencode_long_lines(message: bytes) -> bytes:
    """The message with every part that has an over-long line re-encoded.

    Raises :class:`MessageError` when that is impossible (an over-long header
    that cannot be folded, or a part whose content cannot be decoded).
    """
    parsed = BytesParser(policy=policy.default).parsebytes(message)
    assert isinstance(parsed, EmailMessage)
    changed = False
    for part in parsed.walk():
        if part.is_multipart() or not _part_too_long(part):
            continue
        raw = part.get_payload(decode=True)
        if not isinstance(raw, bytes):
            raise MessageError("a MIME part with an over-long line could not be decoded")
        maintype, subtype = part.get_content_maintype(), part.get_content_subtype()
        del part["Content-Transfer-Encoding"]
        if maintype == "text":
            charset = part.get_content_charset() or "utf-8"
            try:
                text = raw.decode(charset)
            except (LookupError, UnicodeDecodeError) as exc:
                raise MessageError(f"cannot re-encode a {charset} part: {exc}") from exc
            part.set_content(text, subtype=subtype, charset=charset, cte="quoted-printable")
        else:
            part.set_content(raw, maintype=maintype, subtype=subtype, cte="base64")
        changed = True
    if not changed:
        raise MessageError("a header line exceeds 998 octets and cannot be re-encoded")
    out = parsed.as_bytes(policy=policy.SMTP)
    if longest_line(normalize_newlines(out)) > MAX_LINE:
        raise MessageError("line over 998 octets remains after re-encoding")
    return out


def prepare(message: bytes) -> PreparedMessage:
    """A :class:`PreparedMessage`, re-encoded first if a line is too long."""
    prepared = PreparedMessage.from_bytes(message)
    if prepared.longest_line > MAX_LINE:
        prepared = PreparedMessage.from_bytes(reencode_long_lines(prepared.normalized))
    return prepared
