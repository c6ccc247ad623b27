"""What every SASL mechanism module shares: the credentials, the shape of a
mechanism, and the errors.  No mechanism is named here (see ``__init__``)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Literal

#: a mechanism's exchange: first the initial response (``None``: wait for a
#: challenge), then one response per decoded 334 challenge sent into it
Steps = Generator[bytes | None, bytes, None]


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who we are.  Secrets stay out of ``repr`` so a logged config leaks nothing."""

    username: str
    password: str | None = field(default=None, repr=False)
    oauth_token: str | None = field(default=None, repr=False)
    mechanism: str | None = None  # force one mechanism (upper-case name); None = choose
    authzid: str = ""


@dataclass(frozen=True, slots=True)
class Exchange:
    """What a mechanism may need besides the credentials (DIGEST-MD5 does)."""

    digest_uri: str
    cnonce: str


@dataclass(frozen=True, slots=True)
class Mechanism:
    """One SASL mechanism: its name, the secret it needs, and its exchange."""

    name: str
    needs: Literal["password", "token"]
    steps: Callable[[Credentials, Exchange], Steps]

    def secret(self, credentials: Credentials) -> str | None:
        return credentials.password if self.needs == "password" else credentials.oauth_token
