"""MTA-STS (RFC 8461): the TXT record, the policy file, MX patterns, the fetch.

Parsing and matching are pure; :func:`fetch_policy` is the one network call
(httpx on trio), held to the RFC's rules: a verified certificate for
``mta-sts.<domain>``, HTTP 200 only, no redirects (§3.3), a size cap and a
deadline.  Every way a fetch can fail is one :class:`PolicyFetchError`, which
TLS-RPT reports as ``sts-policy-fetch-error``.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from typing import Literal

import trio

from .settings import MAX_POLICY_SIZE, FetchConfig

__all__ = [
    "MAX_POLICY_SIZE", "FetchConfig", "PolicyError", "PolicyFetchError", "STSPolicy",
    "fetch_policy", "mx_matches", "parse_policy", "parse_txt",
]

Mode = Literal["enforce", "testing", "none"]
#: RFC 8461 §3.2: max_age is at most a year
MAX_AGE_LIMIT = 31_557_600
WELL_KNOWN = "/.well-known/mta-sts.txt"
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


class PolicyError(ValueError):
    """A TXT record or policy file that does not follow RFC 8461."""


class PolicyFetchError(Exception):
    """The policy could not be fetched (network, TLS, status, redirect, size, type)."""


@dataclass(frozen=True, slots=True)
class STSPolicy:
    """One parsed policy file; ``text`` is kept verbatim for the cache and TLS-RPT."""

    mode: Mode
    mx: tuple[str, ...]
    max_age: int
    text: str = field(compare=False, default="")

    def matches(self, host: str) -> bool:
        return any(mx_matches(pattern, host) for pattern in self.mx)

    @property
    def lines(self) -> list[str]:
        """The policy as TLS-RPT's ``policy-string`` (one entry per line)."""
        return [line.strip() for line in self.text.splitlines() if line.strip()]


def parse_txt(records: list[str]) -> str | None:
    """The policy id from the ``_mta-sts`` TXT strings, or None (no valid record).

    §3.1: records not starting ``v=STSv1;`` are ignored; anything but exactly
    one remaining valid record means the domain does not use MTA-STS."""
    found = [r for r in records if r.replace(" ", "").startswith("v=STSv1;")]
    if len(found) != 1:
        return None
    fields: dict[str, str] = {}
    for part in found[0].split(";"):
        key, eq, value = part.strip().partition("=")
        if eq:
            fields.setdefault(key.strip(), value.strip())
    policy_id = fields.get("id", "")
    return policy_id if _ID.match(policy_id) else None


def parse_policy(text: str) -> STSPolicy:
    """The policy file's fields (§3.2); PolicyError when it is not a valid STSv1 policy."""
    values: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise PolicyError(f"policy line without ':': {line[:80]!r}")
        values.setdefault(key.strip(), []).append(value.strip())
    if values.get("version") != ["STSv1"]:
        raise PolicyError("policy version is not STSv1")
    mode = (values.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"policy mode {mode!r} is not enforce, testing or none")
    age = (values.get("max_age") or [""])[0]
    if not age.isdigit() or int(age) > MAX_AGE_LIMIT:
        raise PolicyError(f"policy max_age {age!r} is not 0..{MAX_AGE_LIMIT}")
    patterns = tuple(p.lower().rstrip(".") for p in values.get("mx", ()))
    for pattern in patterns:
        if "*" in pattern and (not pattern.startswith("*.") or "*" in pattern[2:]):
            raise PolicyError(f"mx pattern {pattern!r}: a wildcard only as the leftmost label")
    if mode != "none" and not patterns:
        raise PolicyError(f"a {mode} policy needs mx patterns")
    return STSPolicy(mode, patterns, int(age), text)  # type: ignore[arg-type]


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: exact, or ``*.`` standing for exactly one leftmost label."""
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return host == pattern


async def fetch_policy(domain: str, config: FetchConfig) -> STSPolicy:
    """GET ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` and parse it."""
    import httpx  # only direct delivery with MTA-STS pays for its import

    host = f"mta-sts.{domain}"
    override = config.connect_to.get(host)
    url = f"https://{host}{WELL_KNOWN}"
    extensions: dict[str, str] = {}
    if override is not None:
        ip, port = override
        url = f"https://{ip}:{port}{WELL_KNOWN}"
        extensions["sni_hostname"] = host  # verified against the policy host, not the IP
    verify: ssl.SSLContext | bool = config.ssl_context or True
    body = bytearray()
    try:
        with trio.fail_after(config.timeout):
            async with httpx.AsyncClient(
                verify=verify, follow_redirects=False, trust_env=False, timeout=config.timeout,
            ) as client, client.stream(
                "GET", url, headers={"Host": host}, extensions=extensions
            ) as response:
                if response.status_code != 200:  # redirects included (§3.3)
                    raise PolicyFetchError(f"{host}: HTTP {response.status_code}")
                media = response.headers.get("content-type", "").split(";")[0].strip()
                if media.lower() != "text/plain":
                    raise PolicyFetchError(f"{host}: content type {media!r}, not text/plain")
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > config.max_size:
                        raise PolicyFetchError(f"{host}: policy larger than {config.max_size} B")
    except trio.TooSlowError as exc:
        raise PolicyFetchError(f"{host}: no policy within {config.timeout:g}s") from exc
    except httpx.HTTPError as exc:
        raise PolicyFetchError(f"{host}: {type(exc).__name__}: {exc}") from exc
    try:
        return parse_policy(body.decode("utf-8"))
    except (UnicodeDecodeError, PolicyError) as exc:
        raise PolicyFetchError(f"{host}: {exc}") from exc
