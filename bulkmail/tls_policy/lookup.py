"""DNS lookups for TLS policies: TXT (MTA-STS, TLS-RPT) and TLSA (DANE).

Built on the routing module's :class:`~bulkmail.routing.DNSConfig` (the same
servers, timeouts and trio-clock bound as MX lookups), with one addition:
every query asks for DNSSEC (DO, AD) and the answer says whether the
resolver vouched for it (the AD bit), which DANE needs (RFC 7672 §1.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio

from ..dns_lookup import new_resolver
from ..routing import DNSConfig


class LookupFailed(Exception):
    """SERVFAIL, a timeout or any answer that is neither data nor a denial."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One lookup: records (empty: the name or type does not exist), TTL, AD bit."""

    rdata: tuple[Any, ...]
    ttl: float
    authenticated: bool


class PolicyDNS:
    """Bounded lookups against the configured resolver, AD bit kept."""

    def __init__(self, config: DNSConfig) -> None:
        import dns.asyncbackend
        import dns.flags

        self.config = config
        resolver = new_resolver(config)  # the MX router's, plus DNSSEC below
        # AD in the query asks for the AD bit back (RFC 6840 §5.7); DO for DNSSEC data
        resolver.flags = dns.flags.RD | dns.flags.AD
        resolver.use_edns(0, dns.flags.DO, 1232)
        self._resolver = resolver
        self._backend = dns.asyncbackend.get_backend("trio")

    async def query(self, name: str, rdtype: str) -> Answer:
        import dns.exception
        import dns.flags
        import dns.resolver

        lifetime = self.config.lifetime
        with trio.move_on_after(lifetime):
            try:
                answer = await self._resolver.resolve(
                    name, rdtype, search=False, lifetime=lifetime, backend=self._backend,
                    raise_on_no_answer=False,
                )
            except dns.resolver.NXDOMAIN as exc:
                responses = list(exc.kwargs["responses"].values())
                secure = bool(responses) and all(r.flags & dns.flags.AD for r in responses)
                return Answer((), self.config.negative_ttl, secure)
            except dns.exception.DNSException as exc:
                raise LookupFailed(f"{name} {rdtype}: {exc}") from exc
            secure = bool(answer.response.flags & dns.flags.AD)
            if answer.rrset is None:
                return Answer((), self.config.negative_ttl, secure)
            return Answer(tuple(answer.rrset), float(answer.rrset.ttl), secure)
        raise LookupFailed(f"{name} {rdtype}: no answer within {lifetime:g}s")

    async def txt(self, name: str) -> tuple[list[str], float]:
        """The TXT strings at ``name`` (each record's strings joined), and their TTL."""
        answer = await self.query(name, "TXT")
        texts = [b"".join(r.strings).decode("utf-8", "replace") for r in answer.rdata]
        return texts, answer.ttl
