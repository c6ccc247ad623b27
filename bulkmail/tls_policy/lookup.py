"""DNS lookups for TLS policies: TXT (MTA-STS, TLS-RPT) and TLSA (DANE).

Built on the routing module's :class:`~bulkmail.routing.DNSConfig` (the same
servers, timeouts and trio-clock bound as MX lookups), with one addition:
every query asks for DNSSEC (DO, AD) and the answer says whether the
resolver vouched for it (the AD bit), which DANE needs (RFC 7672 §1.3).
While :meth:`PolicyDNS.serve` runs (the policy router's prefetcher runs it
in the engine's nursery), queries go over shared UDP sockets
(:mod:`~bulkmail.dns_client`) instead of a socket each through dnspython's
resolver: MTA-STS asks one TXT per domain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from .. import dns_wire
from ..dns_client import ClientStopped, SharedClient, SharesSockets, UDPClient
from ..dns_lookup import new_resolver, plain_servers
from ..routing import DNSConfig

if TYPE_CHECKING:
    import dns.message


class LookupFailed(Exception):
    """SERVFAIL, a timeout or any answer that is neither data nor a denial."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One lookup: records (empty: the name or type does not exist), TTL, AD bit.

    A TXT record is its strings joined (bytes); other types are dnspython's rdata."""

    rdata: tuple[Any, ...]
    ttl: float
    authenticated: bool


class PolicyDNS(SharesSockets):
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
        self._servers = plain_servers(resolver)
        self._shared_client = SharedClient(self._servers, self.config.timeout)

    async def query(self, name: str, rdtype: str) -> Answer:
        import dns.exception
        import dns.flags
        import dns.resolver

        lifetime = self.config.lifetime
        deadline = trio.current_time() + lifetime
        client = self._shared_client.client
        if client is not None:  # bounded by the deadline itself: no cancel scope
            shared = await self._shared(client, name, rdtype, deadline)
            if shared is not None:
                return shared
        with trio.move_on_at(deadline):
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
            return Answer(_values(answer.rrset), float(answer.rrset.ttl), secure)
        raise LookupFailed(f"{name} {rdtype}: no answer within {lifetime:g}s")

    async def _shared(
        self, client: UDPClient, name: str, rdtype: str, deadline: float
    ) -> Answer | None:
        """The query over the shared sockets (TCP when the reply is truncated);
        None when they cannot carry it and dnspython's resolver should ask.

        A TXT question about a plain host name is built and, in the plain
        cases (a denial, or TXT records), read from bytes (:mod:`dns_wire`):
        dnspython cost ~0.4 ms per lookup, one per recipient domain under
        MTA-STS."""
        import dns.exception
        import dns.flags
        import dns.message
        import dns.name
        import dns.rdatatype

        question = dns_wire.question(name, rdtype) if rdtype == "TXT" else None
        query: dns.message.Message | None = None
        if question is not None:
            wire = dns_wire.dnssec_query(0, question)
        else:
            try:
                qname = dns.name.from_text(name)
                wanted = dns.rdatatype.from_text(rdtype)
            except dns.exception.DNSException:
                return None  # dnspython's resolver says what is wrong with it
            query = dns.message.make_query(
                qname, wanted, use_edns=0, want_dnssec=True, payload=1232
            )
            query.flags = dns.flags.RD | dns.flags.AD  # as the resolver's (see __init__)
            wire = query.to_wire()
            name_wire = qname.to_wire()
            assert name_wire is not None
            question = wire[12 : 12 + len(name_wire) + 4]  # the first name: never compressed
        try:
            data = await client.exchange(question, deadline, wire)
        except (ClientStopped, OSError):
            return None
        if data is None:
            raise LookupFailed(f"{name} {rdtype}: no answer within {self.config.lifetime:g}s")
        if query is None:
            plain = dns_wire.txt_answer(data, (data[0] << 8) | data[1], question)
            if plain is not None:
                texts, ttl, secure = plain
                return Answer(texts, self.config.negative_ttl if ttl is None else ttl, secure)
            query = dns.message.from_wire(dns_wire.dnssec_query(0, question))
        return await self._from_response(data, query, name, rdtype, deadline)

    async def _from_response(
        self, data: bytes, query: dns.message.Message, name: str, rdtype: str, deadline: float
    ) -> Answer:
        """A reply read by dnspython as its resolver would (TCP when truncated)."""
        import dns.asyncquery
        import dns.exception
        import dns.flags
        import dns.message
        import dns.rcode
        import dns.rdataclass
        import dns.resolver

        question = query.question[0]
        try:
            response = dns.message.from_wire(data)
            if response.flags & dns.flags.TC:
                host, port = self._servers[0]
                response = await dns.asyncquery.tcp(
                    query, host, timeout=max(0.0, deadline - trio.current_time()), port=port,
                    backend=self._backend,
                )
            rcode = response.rcode()
            secure = bool(response.flags & dns.flags.AD)
            if rcode == dns.rcode.NXDOMAIN:
                return Answer((), self.config.negative_ttl, secure)
            if rcode != dns.rcode.NOERROR:
                answered = dns.rcode.to_text(rcode)
                raise LookupFailed(f"{name} {rdtype}: the server answered {answered}")
            assert isinstance(response, dns.message.QueryMessage)
            rrset = dns.resolver.Answer(
                question.name, question.rdtype, dns.rdataclass.IN, response
            ).rrset
        except (dns.exception.DNSException, OSError) as exc:
            raise LookupFailed(f"{name} {rdtype}: {exc}") from exc
        if rrset is None:
            return Answer((), self.config.negative_ttl, secure)
        return Answer(_values(rrset), float(rrset.ttl), secure)

    async def txt(self, name: str) -> tuple[list[str], float]:
        """The TXT strings at ``name`` (each record's strings joined), and their TTL."""
        answer = await self.query(name, "TXT")
        texts = [text.decode("utf-8", "replace") for text in answer.rdata]
        return texts, answer.ttl


def _values(rrset: Any) -> tuple[Any, ...]:
    """An rrset's records as :class:`Answer` holds them: a TXT record's strings
    joined into bytes (as :func:`dns_wire.txt_answer` gives them), other
    types as dnspython's rdata."""
    import dns.rdatatype

    if rrset.rdtype == dns.rdatatype.TXT:
        return tuple(b"".join(r.strings) for r in rrset)
    return tuple(rrset)
