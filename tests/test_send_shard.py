"""The pure parts of ``send --processes N`` (issue 17.5): which shard an
address belongs to, and how each destination's caps are divided so that the
children's parts add up to the cap (the CLI tests check it at the sink)."""

from __future__ import annotations

from bulkmail.api import MailerConfig
from bulkmail.cli.send_shard import Shard, smallest_cap
from bulkmail.shaping import PoolLimits, Shaping


def test_every_address_has_one_shard_and_the_domain_case_does_not_move_it() -> None:
    addresses = [f"User{i}@Example{i % 7}.TEST" for i in range(2000)]
    for n in (2, 3, 5):
        shards = [Shard(k, n) for k in range(n)]
        owners = [[s.index for s in shards if s.owns(a)] for a in addresses]
        assert all(len(o) == 1 for o in owners)
        for address, owner in zip(addresses, owners, strict=True):
            local, _, domain = address.rpartition("@")
            assert shards[owner[0]].owns(f" {local}@{domain.lower()}\n")  # the dedupe key
        sizes = [sum(1 for o in owners if o[0] == k) for k in range(n)]
        assert min(sizes) > len(addresses) / n * 0.8  # spread evenly enough


def test_caps_and_rates_are_divided_so_the_parts_add_up() -> None:
    shaping = Shaping.from_mapping(
        {"default": {"connections": 10, "rate": "90/s"},
         "domains": {"*.slow.test": {"connections": 3, "rate": "6/min"}}},
        PoolLimits(connections=10),
    )
    config = MailerConfig(limits=PoolLimits(connections=10), shaping=shaping,
                          total_connections=200)
    assert smallest_cap(config) == 3
    parts = [Shard(k, 3).divide(config) for k in range(3)]
    assert sum(p.limits.connections for p in parts) == 10
    assert sorted(p.limits.connections for p in parts) == [3, 3, 4]
    assert sum(p.total_connections for p in parts) == 200
    for p in parts:
        assert p.shaping is not None
        slow = p.shaping.limits_for("mx.slow.test")
        assert slow.connections == 1 and slow.rate == 0.1 / 3
        assert p.shaping.default.rate == 30.0
    assert sum(p.shaping.default.connections for p in parts if p.shaping) == 10
