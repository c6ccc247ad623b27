"""Loopback servers shared by the tests and the benchmarks (never the internet)."""
