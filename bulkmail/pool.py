"""Old import path: the pool lives in :mod:`bulkmail.delivery.pool` now."""

from __future__ import annotations

from .delivery.pool import Pool, PoolOwner

__all__ = ["Pool", "PoolOwner"]
