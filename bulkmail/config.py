"""Frozen configuration for one SMTP session (mirrors the seed session schema)."""

from __future__ import annotations

import math
import re
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import trio

from .protocol.auth import Credentials
from .records import SessionRecords

#: none: plaintext only; may: STARTTLS when offered, unverified (Postfix's
#: ``may``); starttls: STARTTLS required and verified; tls: implicit TLS (465).
Security = Literal["none", "may", "starttls", "tls"]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-stage deadlines in seconds; defaults are RFC 5321 §4.5.3.2's minimums."""

    connect: float = 30.0
    greeting: float = 300.0
    ehlo: float = 300.0
    tls: float = 60.0
    mail: float = 300.0
    rcpt: float = 300.0
    data_init: float = 120.0
    data_block: float = 180.0
    data_done: float = 600.0
    command: float = 300.0
    quit: float = 10.0

    def __post_init__(self) -> None:
        for stage in fields(self):
            value = getattr(self, stage.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 < value < math.inf:
                raise ValueError(f"timeout {stage.name} must be a positive number of seconds,"
                                 f" not {value!r}")

    @classmethod
    def stages(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def updated(self, changes: Mapping[str, str | float]) -> Timeouts:
        """A copy with some stages changed; ``changes`` maps a stage (``data_done``
        or ``data-done``) to seconds or a duration (``"2m"``).  ValueError names
        a stage that does not exist or a value that is not a positive duration."""
        checked: dict[str, float] = {}
        for name, value in changes.items():
            stage = name.strip().replace("-", "_")
            if stage not in self.stages():
                raise ValueError(f"no timeout stage {name!r} (stages: {', '.join(self.stages())})")
            checked[stage] = parse_duration(value)
        return replace(self, **checked)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|min|h|d)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | float) -> float:
    """``90``, ``"90"``, ``"30s"``, ``"500ms"``, ``"5m"``, ``"2h"``, ``"1d"`` -> seconds.

    One parser for the command line and the shaping file, so both accept
    the same spellings; negative, infinite and NaN values are refused.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"not a duration: {value!r} (e.g. 30s, 5m, 2h)")
    if isinstance(value, (int, float)):
        if not 0 <= value < math.inf:
            raise ValueError(f"not a duration: {value!r} (must be >= 0 and finite)")
        return float(value)
    m = _DURATION.match(value)
    if m is None:
        raise ValueError(f"not a duration: {value!r} (e.g. 30s, 5m, 2h)")
    return float(m.group(1)) * _UNIT_SECONDS[(m.group(2) or "s").lower()]


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """How to talk to one server.  ``host`` is the name TLS verifies against."""

    host: str
    port: int = 25
    secure: Security = "may"
    ssl_context: ssl.SSLContext | None = None
    credentials: Credentials | None = None
    allow_plaintext_auth: bool = False
    client_hostname: str = field(default_factory=socket.gethostname)
    timeouts: Timeouts = field(default_factory=Timeouts)
    use_pipelining: bool = True
    use_chunking: bool = True
    #: transactions written ahead of their replies when BDAT pipelining is on
    chunking_window: int = 32
    source_address: str | None = None
    trace: bool = False
    max_reply_line: int = 4096
    #: the TLS policy this session follows, for results and reports (bulkmail.tls_policy)
    tls_policy: str = "opportunistic"
    #: checks the peer after the TLS handshake (DANE), raising to refuse it;
    #: SNI is sent whenever this is set, even though the context checks no name
    tls_verify: Callable[[trio.SSLStream[trio.abc.Stream]], None] | None = None
    #: where this session's record goes (``bulkmail.records``); None: none is built
    records: SessionRecords | None = None

    @classmethod
    def from_record(
        cls, record: Mapping[str, Any], *, password: str | None = None, **overrides: Any
    ) -> SessionConfig:
        """A config from an object in the seed's SMTP Session shape: ``host``,
        ``port``, ``secure`` (none/tls/starttls), ``authentication``
        (``username``, ``mechanism``; the secret is ``password``, never in the
        record) and ``clientHostname``; other fields are ignored.  ``overrides``
        are further fields (``ssl_context``, ``timeouts``...)."""
        host = record.get("host")
        if not isinstance(host, str) or not host:
            raise ValueError("a session record needs a host")
        port = record.get("port", 25)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port must be 1-65535, not {port!r}")
        secure = record.get("secure", "none")
        if secure not in ("none", "tls", "starttls"):
            raise ValueError(f"secure must be none, tls or starttls, not {secure!r}")
        fields_: dict[str, Any] = {"host": host, "port": port, "secure": secure}
        if "clientHostname" in record:
            fields_["client_hostname"] = str(record["clientHostname"])
        auth = record.get("authentication")
        if isinstance(auth, Mapping) and auth.get("username"):
            mechanism = auth.get("mechanism")
            fields_["credentials"] = Credentials(
                str(auth["username"]), password,
                mechanism=str(mechanism).upper() if mechanism else None,
            )
        return cls(**(fields_ | overrides))

    def tls_context(self) -> ssl.SSLContext:
        """The context for this session; opportunistic TLS does not verify."""
        if self.ssl_context is not None:
            return self.ssl_context
        return _default_context(verify=self.secure != "may")


@lru_cache(maxsize=2)
def _default_context(*, verify: bool) -> ssl.SSLContext:
    """Built once per process, not per connection: loading the system CA store
    costs milliseconds, and a context is safe to share between sessions."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
