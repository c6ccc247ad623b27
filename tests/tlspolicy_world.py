"""One loopback world for TLS policy tests: DNS, an MTA-STS policy server,
a TLS sink behind a recording (optionally STARTTLS-stripping) relay."""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

import trio
import trustme

from bulkmail import MailerConfig
from bulkmail.routing import DNSConfig
from bulkmail.sink import Sink, SinkConfig
from bulkmail.tls_policy import FetchConfig, TLSPolicyConfig

from .dnsserver import DNSServer
from .tlspolicy_servers import Interceptor, PolicyServer

DOMAIN = "policy.test"
MX = "mx.policy.test"
MESSAGE = b"From: news@sender.test\r\nSubject: hi\r\n\r\nhello\r\n"
ENFORCE = f"version: STSv1\nmode: enforce\nmx: {MX}\nmax_age: 86400\n"
TESTING = f"version: STSv1\nmode: testing\nmx: {MX}\nmax_age: 86400\n"


@dataclass
class World:
    ca: trustme.CA
    client: ssl.SSLContext
    dns: DNSServer
    policies: PolicyServer
    sink: Sink
    relay: Interceptor
    state: Path
    #: the sink's certificate (DER), for TLSA records
    mx_der: bytes

    def config(self, policy: str = "mta-sts", **overrides: object) -> MailerConfig:
        fetch = FetchConfig(
            timeout=5.0, ssl_context=self.client,
            connect_to={f"mta-sts.{DOMAIN}": ("127.0.0.1", self.policies.port)},
        )
        tls = TLSPolicyConfig(policy=policy, state_dir=str(self.state),  # type: ignore[arg-type]
                              fetch=fetch, ssl_context=self.client)
        return MailerConfig(
            dns=DNSConfig(nameservers=(("127.0.0.1", self.dns.port),), mx_port=self.relay.port),
            tls_policy=tls, retry_for=0.0, client_hostname="client.sender.test",
            **overrides,  # type: ignore[arg-type]
        )

    def sts(self, text: str, policy_id: str = "1") -> None:
        """Publish ``text`` as the domain's policy under TXT id ``policy_id``."""
        self.dns.records.pop((f"_mta-sts.{DOMAIN}.", "TXT"), None)
        self.dns.add(f"_mta-sts.{DOMAIN}", "TXT", f'"v=STSv1; id={policy_id};"')
        self.policies.policy(DOMAIN, text)


def mx_certificate(ca: trustme.CA, name: str, *,
                   expired: bool = False) -> tuple[ssl.SSLContext, bytes]:
    """A server context whose certificate names ``name`` (or expired yesterday),
    and that certificate in DER."""
    kwargs = {}
    if expired:
        now = dt.datetime.now(dt.UTC)
        kwargs = {"not_before": now - dt.timedelta(days=30),
                  "not_after": now - dt.timedelta(days=1)}
    cert = ca.issue_cert(name, **kwargs)  # type: ignore[arg-type]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context, ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


async def build_world(nursery: trio.Nursery, tmp_path: Path, *, cert_name: str = MX,
                      expired: bool = False, strip_starttls: bool = False) -> World:
    ca = trustme.CA()
    client = ssl.create_default_context()
    ca.configure_trust(client)
    dns = DNSServer()
    await nursery.start(dns.serve)
    dns.add(DOMAIN, "MX", f"10 {MX}.")
    dns.add(MX, "A", "127.0.0.1")
    policy_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(f"mta-sts.{DOMAIN}").configure_cert(policy_context)
    policies = PolicyServer(policy_context)
    await nursery.start(policies.serve)
    server_context, der = mx_certificate(ca, cert_name, expired=expired)
    sink = Sink(SinkConfig(ssl_context=server_context, hostname=MX, record_messages=True))
    await nursery.start(sink.serve)
    relay = Interceptor(sink.port, strip_starttls=strip_starttls)
    await nursery.start(relay.serve)
    return World(ca, client, dns, policies, sink, relay, tmp_path / "state", der)
