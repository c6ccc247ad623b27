"""The loopback DNS server for tests; it lives in :mod:`bulkmail.testing.dns_server`
so the benchmarks can start it without importing the test suite.  And the
routing failure a router gives for a domain, for the tests that ask it."""

import pytest

from bulkmail.routing import MXRouter, RoutingError
from bulkmail.testing.dns_server import MAX_CNAME_HOPS, DNSServer

__all__ = ["MAX_CNAME_HOPS", "DNSServer", "route_error"]


async def route_error(router: MXRouter, domain: str) -> RoutingError:
    """The RoutingError ``router.route(domain)`` raises (the test fails if none)."""
    with pytest.raises(RoutingError) as info:
        await router.route(domain)
    return info.value
