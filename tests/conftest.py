"""Shared fixtures: everything listens on 127.0.0.1 with port 0, TLS from trustme."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import pytest
import trio
import trustme

from .dnsserver import DNSServer


@dataclass
class TLS:
    ca: trustme.CA
    server: ssl.SSLContext
    client: ssl.SSLContext
    hostname: str


def make_tls(hostname: str = "mx.bulkmail.test") -> TLS:
    ca = trustme.CA()
    cert = ca.issue_cert(hostname, "localhost", "127.0.0.1")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return TLS(ca, server, client, hostname)


@pytest.fixture(scope="session")
def tls() -> TLS:
    return make_tls()


@pytest.fixture
async def server(nursery: trio.Nursery) -> DNSServer:
    """The loopback DNS server (``tests/dnsserver.py``), serving in the test's nursery."""
    dns_server = DNSServer()
    await nursery.start(dns_server.serve)
    return dns_server
