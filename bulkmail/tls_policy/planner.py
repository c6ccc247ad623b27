"""The TLS plan of a destination: per MX host, DANE, MTA-STS or opportunistic.

For each recipient domain routed to MX hosts, :class:`TLSPolicies` looks up
(and caches) the domain's MTA-STS policy and, with DANE on, each host's
TLSA records, and decides one :class:`HostRule` per host: DANE where the
host has DNSSEC-validated TLSA records (RFC 8461 §2: DANE wins), else the
MTA-STS policy, else opportunistic TLS.  :meth:`HostRule.open` on each
host's rule connects to it and counts the session for TLS-RPT.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import trio

from ..errors import SMTPTLSError, synthetic_reply
from ..routing import Destination, DNSConfig
from .cache import PolicyCache
from .dane import TLSARecord, check_certificate
from .lookup import LookupFailed, PolicyDNS
from .mta_sts import PolicyFetchError, STSPolicy, fetch_policy, parse_txt
from .rules import HostRule, Recorder, unverified_context
from .settings import CACHE_FILE, REPORT_FILE, TLSPolicyConfig
from .tlsrpt import ReportPolicy, TLSReportStore


@dataclass(frozen=True, eq=False)
class TLSPlan:
    """The rules for one domain's MX hosts (hosts without a rule: as configured)."""

    domain: str
    rules: Mapping[str, HostRule]

    def rule(self, host: str) -> HostRule | None:
        return self.rules.get(host)

    def refuse_all(self, destination: Destination) -> SMTPTLSError | None:
        """When the policy excludes every host: the error (each refusal counted
        for TLS-RPT), so the domain's recipients are deferred without a pool."""
        rules = [self.rules.get(host.name) for host in destination.hosts]
        if not all(rule is not None and rule.refusal is not None for rule in rules):
            return None
        errors = [rule.refuse(host.name) for rule, host in zip(rules, destination.hosts,
                                                                strict=True) if rule]
        return errors[0]


@dataclass(frozen=True, slots=True)
class PolicyDestination(Destination):
    """A destination whose hosts have TLS rules (its own pool: ``key`` names the domain)."""

    tls: TLSPlan


def _verify_dane(records: tuple[TLSARecord, ...], stream: trio.SSLStream[trio.abc.Stream]) -> None:
    check_certificate(records, stream.getpeercert(binary_form=True))


class TLSPolicies:
    """Looks up, caches and decides the TLS policy of each recipient domain."""

    def __init__(self, config: TLSPolicyConfig, dns: DNSConfig) -> None:
        self.config = config
        self.dns = PolicyDNS(dns)
        state = Path(config.state_dir) if config.state_dir is not None else None
        self.cache = PolicyCache(state / CACHE_FILE if state is not None else None)
        self.reports = TLSReportStore(state / REPORT_FILE if state is not None else None)
        self.recorder = Recorder(self.reports)

    def close(self) -> None:
        self.reports.close()

    async def plan(self, domain: str, destination: Destination) -> TLSPlan | None:
        """The rules for ``domain``'s hosts, or None when every host is opportunistic."""
        if self.config.policy == "opportunistic" or domain.startswith("["):
            return None
        policy = await self.sts_policy(domain)
        dane: dict[str, HostRule | None] = {}
        if self.config.policy == "dane":
            async with trio.open_nursery() as nursery:
                for host in destination.hosts:
                    nursery.start_soon(self._dane_rule, domain, host.name, host.port, dane)
        rules: dict[str, HostRule] = {}
        for host in destination.hosts:
            rule = dane.get(host.name) or self._sts_rule(domain, policy, host.name)
            if rule is not None:
                rules[host.name] = rule
        return TLSPlan(domain, rules) if rules else None

    # -- MTA-STS -------------------------------------------------------------------

    async def sts_policy(self, domain: str) -> STSPolicy | None:
        """The domain's policy by RFC 8461 §5.1: cached while its id is unchanged,
        kept (unexpired) when the TXT record or a fetch fails."""
        cached = self.cache.get(domain)
        try:
            texts, _ttl = await self.dns.txt(f"_mta-sts.{domain}")
        except LookupFailed:
            texts = []
        policy_id = parse_txt(texts)
        if policy_id is None or (cached is not None and cached.policy_id == policy_id):
            return _active(cached.policy if cached is not None else None)
        try:
            policy = await fetch_policy(domain, self.config.fetch)
        except PolicyFetchError as exc:
            report = ReportPolicy(domain, "sts") if cached is None else _sts_report(
                domain, cached.policy)
            self.recorder.fetch_failed(report, domain, str(exc))
            return _active(cached.policy if cached is not None else None)
        self.cache.put(domain, policy_id, policy)
        return _active(policy)

    def _sts_rule(self, domain: str, policy: STSPolicy | None, host: str) -> HostRule | None:
        if policy is None:
            return None
        report = _sts_report(domain, policy)
        context = self.config.ssl_context or _verifying_context()
        if policy.matches(host):
            if policy.mode == "testing":
                return HostRule("mta-sts-testing", ssl_context=context, testing=True,
                                report=report, recorder=self.recorder)
            return HostRule("mta-sts", required=True, ssl_context=context, report=report,
                            recorder=self.recorder)
        reason = f"MTA-STS: MX host {host} is not in {domain}'s policy ({policy.mode})"
        if policy.mode == "testing":
            return HostRule("mta-sts-testing", testing=True, report=report,
                            known_failure=("validation-failure", reason), recorder=self.recorder)
        return HostRule("mta-sts", required=True, report=report,
                        refusal=synthetic_reply(451, "4.7.5", reason),
                        known_failure=("validation-failure", reason), recorder=self.recorder)

    # -- DANE ----------------------------------------------------------------------

    async def _dane_rule(self, domain: str, host: str, port: int,
                         out: dict[str, HostRule | None]) -> None:
        name = f"_{port}._tcp.{host}"
        try:
            answer = await self.dns.query(name, "TLSA")
        except LookupFailed as exc:
            # RFC 7672 §2.2: a failed TLSA lookup in a signed zone defers, never downgrades
            if await self._signed(host):
                reason = f"DANE: TLSA lookup for {name} failed: {exc}"
                out[host] = HostRule(
                    "dane", required=True, refusal=synthetic_reply(451, "4.7.5", reason),
                    report=ReportPolicy(domain, "tlsa", (), (host,)),
                    known_failure=("dnssec-invalid", reason), recorder=self.recorder,
                )
            return
        if not answer.authenticated or not answer.rdata:
            return  # insecure or no records: DANE does not apply to this host
        records = tuple(TLSARecord.from_rdata(r) for r in answer.rdata)
        report = ReportPolicy(domain, "tlsa", tuple(str(r) for r in records), (host,))
        usable = tuple(r for r in records if r.usable)
        # all records unusable: TLS stays mandatory, unauthenticated (RFC 7672 §2.2)
        verify = functools.partial(_verify_dane, usable) if usable else None
        out[host] = HostRule("dane", required=True, ssl_context=unverified_context(),
                             verify=verify, report=report, recorder=self.recorder)

    async def _signed(self, host: str) -> bool:
        """Whether ``host``'s address records validate (its zone is signed)."""
        try:
            return (await self.dns.query(host, "A")).authenticated
        except LookupFailed:
            return True  # cannot tell: do not downgrade


def _active(policy: STSPolicy | None) -> STSPolicy | None:
    return policy if policy is not None and policy.mode != "none" else None


def _sts_report(domain: str, policy: STSPolicy) -> ReportPolicy:
    return ReportPolicy(domain, "sts", tuple(policy.lines), policy.mx)


@functools.lru_cache(maxsize=1)
def _verifying_context() -> ssl.SSLContext:
    return ssl.create_default_context()
