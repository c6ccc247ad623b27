"""XOAUTH2 (Google, Microsoft): the user and the bearer token in one initial
response.  A 334 after it carries a JSON error; the client acknowledges it
with an empty line and the server then answers 5xx."""

from __future__ import annotations

from .base import Credentials, Exchange, Mechanism, Steps


def _steps(credentials: Credentials, exchange: Exchange) -> Steps:
    token = credentials.oauth_token or ""
    yield f"user={credentials.username}\x01auth=Bearer {token}\x01\x01".encode()
    yield b""


MECHANISM = Mechanism("XOAUTH2", "token", _steps)
