"""Signed one-click unsubscribe links: nobody can unsubscribe someone else.

The List-Unsubscribe URL carries the address, the list and a token: an
HMAC-SHA256 over both, keyed by a secret only the sender and the unsubscribe
server know (an environment variable, never a command-line argument that shows
in ``ps``), urlsafe base64 without padding.  Changing the address or the list
breaks the token; the server compares tokens in constant time.

The canonical URL form (what :func:`unsubscribe_url` builds and
``bulkmail.unsubscribe`` reads)::

    https://news.example/unsubscribe?u=alice%40example.com&l=november&t=TOKEN
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from urllib.parse import quote, urlencode

__all__ = [
    "MIN_SECRET_LENGTH", "SecretError", "key_from_env", "sign", "unsubscribe_url", "verify",
]

#: a shorter secret is refused: the token is only as strong as the key
MIN_SECRET_LENGTH = 16
#: domain separation: a token for this purpose is never valid for another
_CONTEXT = b"bulkmail one-click unsubscribe v1\x00"


class SecretError(ValueError):
    """The secret is missing or too short (the message names the variable)."""


def key_from_env(variable: str, environ: dict[str, str] | None = None) -> bytes:
    """The secret in environment variable ``variable``, as bytes."""
    value = (os.environ if environ is None else environ).get(variable)
    if not value:
        raise SecretError(f"environment variable {variable} (the unsubscribe secret) is not set")
    if len(value) < MIN_SECRET_LENGTH:
        raise SecretError(
            f"environment variable {variable} holds {len(value)} characters; "
            f"an unsubscribe secret needs at least {MIN_SECRET_LENGTH}")
    return value.encode()


def sign(key: bytes, address: str, list_id: str) -> str:
    """The token for ``address`` on ``list_id``."""
    mac = hmac.new(key, _message(address, list_id), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def verify(key: bytes, address: str, list_id: str, token: str) -> bool:
    """Whether ``token`` was made by :func:`sign` with this key (constant time)."""
    expected = sign(key, address, list_id)
    return hmac.compare_digest(expected.encode(), token.encode("utf-8", "surrogateescape"))


def unsubscribe_url(base: str, key: bytes, address: str, list_id: str) -> str:
    """``base`` with the ``u``/``l``/``t`` query the server verifies (RFC 3986 encoded)."""
    query = urlencode({"u": address, "l": list_id, "t": sign(key, address, list_id)},
                      quote_via=quote, safe="@")
    return f"{base}{'&' if '?' in base else '?'}{query}"


def _message(address: str, list_id: str) -> bytes:
    # the list's length first: no (list, address) pair reads as another
    list_bytes = list_id.encode("utf-8", "surrogateescape")
    address_bytes = address.encode("utf-8", "surrogateescape")
    return _CONTEXT + len(list_bytes).to_bytes(4, "big") + list_bytes + address_bytes
