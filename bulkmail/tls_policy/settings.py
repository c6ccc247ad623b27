"""The TLS policy settings, apart from the machinery: a relay-only run (and
``import bulkmail``) reads them without importing what MX delivery needs."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

#: the policy file cap (RFC 8461 §3.3 suggests 64 KiB)
MAX_POLICY_SIZE = 64 * 1024

@dataclass(frozen=True)
class FetchConfig:
    """How policies are fetched.  ``connect_to`` maps a policy host
    (``mta-sts.example.org``) to the ``(ip, port)`` really contacted -- the
    certificate is still checked against the policy host: tests point it at
    a loopback server, with ``ssl_context`` trusting their CA."""

    timeout: float = 10.0
    max_size: int = MAX_POLICY_SIZE
    ssl_context: ssl.SSLContext | None = None
    connect_to: Mapping[str, tuple[str, int]] = field(default_factory=dict)


PolicyName = Literal["opportunistic", "mta-sts", "dane"]
POLICY_NAMES: tuple[PolicyName, ...] = ("opportunistic", "mta-sts", "dane")
CACHE_FILE = "mta-sts-cache.json"
REPORT_FILE = "tlsrpt.sqlite"


@dataclass(frozen=True)
class TLSPolicyConfig:
    """Which policies apply to MX delivery, and where their state lives."""

    policy: PolicyName = "mta-sts"
    #: the policy cache and the TLS-RPT counts go here (None: memory only)
    state_dir: str | None = None
    fetch: FetchConfig = field(default_factory=FetchConfig)
    #: verifies MX certificates under MTA-STS (None: the system's CAs)
    ssl_context: ssl.SSLContext | None = None
    #: seconds a domain's decided plan is reused before its records are looked at again
    refresh: float = 3600.0


