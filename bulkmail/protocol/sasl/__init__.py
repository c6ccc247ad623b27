"""The SASL mechanisms the client speaks: one table, name -> implementation.

Adding a mechanism is a module here with a ``MECHANISM`` and one line in
:data:`MECHANISMS`; its place in the table is its preference.  A name not in
the table is refused (:func:`mechanism`) -- it can never fall through to
another mechanism's exchange.
"""

from __future__ import annotations

from types import MappingProxyType

from ..errors import LocalProtocolError
from . import cram_md5, digest_md5, login, plain, xoauth2
from .base import Credentials, Exchange, Mechanism, Steps

__all__ = ["MECHANISMS", "Credentials", "Exchange", "Mechanism", "Steps", "mechanism"]

#: every mechanism, most preferred first.  A token prefers XOAUTH2; a password
#: CRAM-MD5 (the secret never crosses the wire), then PLAIN and LOGIN (over
#: TLS), and DIGEST-MD5 last: historic (RFC 6331), used only when nothing else
#: is offered, or when forced.
MECHANISMS = MappingProxyType({
    m.name: m
    for m in (
        xoauth2.MECHANISM,
        cram_md5.MECHANISM,
        plain.MECHANISM,
        login.MECHANISM,
        digest_md5.MECHANISM,
    )
})


def mechanism(name: str) -> Mechanism:
    """The registered mechanism called ``name`` (any case); refuses any other."""
    found = MECHANISMS.get(name.upper())
    if found is None:
        known = " ".join(MECHANISMS)
        raise LocalProtocolError(f"unsupported SASL mechanism {name!r} (known: {known})")
    return found
