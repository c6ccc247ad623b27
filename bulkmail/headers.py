"""Header additions a bulk sender needs: Message-ID, Date, one-click unsubscribe.

They operate on raw RFC 5322 bytes -- the header block is found, added to,
and the body left byte-for-byte untouched -- so nothing else about the
message (its MIME structure, its encodings) can change on the way.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid
from functools import lru_cache

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FORBIDDEN = re.compile(r"[\r\n\x00]")


def split_message(message: bytes) -> tuple[bytes, bytes]:
    """(header block including its final line break, rest); a bodiless message is all header."""
    m = _HEADER_END.search(message)
    if m is None:
        head = message if message.endswith(b"\n") else message + b"\r\n"
        return head, b"\r\n"
    cut = m.start() + (2 if message[m.start() : m.start() + 2] == b"\r\n" else 1)
    return message[:cut], message[cut:]


@lru_cache(maxsize=64)
def _header_pattern(name: str) -> re.Pattern[bytes]:
    return re.compile(rb"^" + re.escape(name.encode()) + rb"[ \t]*:", re.I | re.M)


def has_header(head: bytes, name: str) -> bool:
    return _header_pattern(name).search(head) is not None


@lru_cache(maxsize=4)
def _date_header(second: int) -> str:
    """RFC 5322 date for a whole second (cached: a run formats the same few)."""
    return format_datetime(datetime.fromtimestamp(second, UTC))


def header_line(name: str, value: str) -> bytes:
    if _FORBIDDEN.search(value) or _FORBIDDEN.search(name):
        raise ValueError(f"header {name} would contain a line break")
    return f"{name}: {value}\r\n".encode()


def add_headers(message: bytes, headers: list[tuple[str, str]], *, replace: bool = False) -> bytes:
    """Prepend headers (those already present are kept unless ``replace``)."""
    head, body = split_message(message)
    new = b""
    for name, value in headers:
        if has_header(head, name):
            if not replace:
                continue
            head = re.sub(
                rb"^" + re.escape(name.encode()) + rb"[ \t]*:.*(?:\r?\n[ \t].*)*\r?\n",
                b"",
                head,
                flags=re.I | re.M,
            )
        new += header_line(name, value)
    return new + head + body


def message_id(domain: str, seed: bytes | None = None) -> str:
    """A Message-ID in ``domain``: random, or derived from ``seed``.

    A seeded id is the same every time the same message is rendered for the
    same recipient -- so a resend after a crash (the duplicate window) carries
    the Message-ID of the copy that may already have arrived, and receivers
    can drop it.
    """
    if seed is None:
        return make_msgid(idstring=secrets.token_hex(6), domain=domain)
    return f"<{hashlib.sha256(seed).hexdigest()[:32]}@{domain}>"


def ensure_identity(
    message: bytes, domain: str, *, seed: bytes | None = None, now: float | None = None
) -> bytes:
    """Add ``Message-ID`` and ``Date`` when the message lacks them."""
    return add_headers(message, identity_headers(domain, seed=seed, now=now))


@lru_cache(maxsize=4)
def _date_line(second: int) -> bytes:
    return f"Date: {_date_header(second)}\r\n".encode()


def identity_lines(domain: str, seed: bytes, *, message_id_line: bool, date_line: bool) -> bytes:
    """The ``Message-ID``/``Date`` header lines themselves, for a caller that
    already knows which the message lacks (``domain`` checked by the caller)."""
    out = b""
    if message_id_line:
        out = f"Message-ID: {message_id(domain, seed)}\r\n".encode()
    if date_line:
        out += _date_line(int(time.time()))
    return out


def identity_headers(
    domain: str, *, seed: bytes | None = None, now: float | None = None
) -> list[tuple[str, str]]:
    """``Message-ID`` and ``Date`` values for a message (see :func:`message_id`)."""
    date = _date_header(int(now if now is not None else time.time()))
    return [("Message-ID", message_id(domain, seed)), ("Date", date)]


# what may stand in a URI (RFC 3986 reserved + unreserved + "%"), except ","
# (RFC 2369 §2: a literal comma in a List-* URL must be encoded)
_URI_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+;=%]*")


def _check_uri(uri: str, what: str) -> None:
    if not _URI_CHARS.fullmatch(uri):
        raise ValueError(
            f"{what} {uri!r} has characters a URL must percent-encode"
            " (spaces, <, >, commas, quotes, non-ASCII)"
        )


def unsubscribe_headers(url: str | None, mailto: str | None = None) -> list[tuple[str, str]]:
    """RFC 2369 List-Unsubscribe; with an https URL also RFC 8058 one-click.

    ``mailto`` alone gives the RFC 2369 mailto form alone (no one-click: RFC 8058
    needs an HTTPS URI).  Every target is checked to be one URI, so nothing in it
    can close the ``<...>`` and add a second target.
    """
    if url is None and mailto is None:
        raise ValueError("List-Unsubscribe needs an https URL or a mailto address")
    targets: list[str] = []
    if url is not None:
        if not url.startswith("https://"):
            raise ValueError("one-click unsubscribe (RFC 8058) needs an https:// URL")
        _check_uri(url, "unsubscribe URL")
        targets.append(f"<{url}>")
    if mailto is not None:
        mailto = mailto.removeprefix("mailto:")
        _check_uri(mailto, "unsubscribe mailto")
        if "@" not in mailto:
            raise ValueError(f"unsubscribe mailto {mailto!r} is not an address")
        targets.append(f"<mailto:{mailto}>")
    headers = [("List-Unsubscribe", ", ".join(targets))]
    if url is not None:
        headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    return headers
