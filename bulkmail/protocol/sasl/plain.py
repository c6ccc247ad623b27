"""PLAIN (RFC 4616): one message, ``authzid NUL authcid NUL passwd``, sent as
the initial response."""

from __future__ import annotations

from .base import Credentials, Exchange, Mechanism, Steps


def _steps(credentials: Credentials, exchange: Exchange) -> Steps:
    c = credentials
    yield f"{c.authzid}\0{c.username}\0{c.password or ''}".encode()


MECHANISM = Mechanism("PLAIN", "password", _steps)
