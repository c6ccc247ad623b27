"""The loopback DNS server for tests; it lives in :mod:`bulkmail.testing.dns_server`
so the benchmarks can start it without importing the test suite."""

from bulkmail.testing.dns_server import MAX_CNAME_HOPS, DNSServer

__all__ = ["MAX_CNAME_HOPS", "DNSServer"]
