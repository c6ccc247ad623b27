"""CRAM-MD5 (RFC 2195): ``user`` and the hex HMAC-MD5 of the challenge keyed by
the password."""

from __future__ import annotations

import hashlib
import hmac

from ..errors import RemoteProtocolError
from .base import Credentials, Exchange, Mechanism, Steps


def _steps(credentials: Credentials, exchange: Exchange) -> Steps:
    challenge = yield None
    if not challenge:
        raise RemoteProtocolError("CRAM-MD5 challenge is empty")
    password = (credentials.password or "").encode()
    digest = hmac.new(password, challenge, hashlib.md5).hexdigest()
    yield f"{credentials.username} {digest}".encode()


MECHANISM = Mechanism("CRAM-MD5", "password", _steps)
