"""LOGIN (draft-murchison-sasl-login): user name and password, each answering a
prompt.  The prompts are fixed, so their text is not checked."""

from __future__ import annotations

from .base import Credentials, Exchange, Mechanism, Steps


def _steps(credentials: Credentials, exchange: Exchange) -> Steps:
    yield None
    yield credentials.username.encode()
    yield (credentials.password or "").encode()


MECHANISM = Mechanism("LOGIN", "password", _steps)
