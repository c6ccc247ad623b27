"""The worker's in-doubt hook on a real Mailer and PostgreSQL: recipients are
committed as in doubt before their end of data, and a window holding one that
another worker took over is refused (LeaseLost) before anything is marked
for it -- the end of data does not leave."""

from __future__ import annotations

import pytest
import trio

from bulkmail import Mailer
from bulkmail.journal import Status
from bulkmail.store import PgStore
from bulkmail.store.aio import AsyncStore, StoreWriter
from bulkmail.store.worker_hooks import InFlight, LeaseLost, install_store_hooks
from tests.pgutil import column, pg_url, store_url, travel

__all__ = ["pg_url", "store_url"]  # fixtures, imported for pytest


async def test_in_doubt_mark_and_lease_lost(store_url: str) -> None:
    with PgStore(store_url) as store:
        job = store.create_job()
        store.load_recipients(job, ["a@x.test", "b@x.test", "c@x.test"])
        claim = store.claim("me", 10, 30, job=job)
    assert claim is not None
    astore = await AsyncStore.open(store_url, connections=2)
    writer = StoreWriter(astore, "me")
    in_flight = InFlight()
    in_flight.add(job, ["a@x.test", "b@x.test", "c@x.test"])
    async with trio.open_nursery() as background:
        await background.start(writer.run)
        async with Mailer() as mailer:
            install_store_hooks(mailer, writer, in_flight)
            hook = mailer.engine.on_in_doubt
            assert hook is not None
            await hook(["a@x.test"])
            assert column(store_url, "SELECT state FROM recipients WHERE address = 'a@x.test'"
                          ) == [Status.IN_DOUBT.value]
            # b's lease ran out and another worker claimed it
            travel(store_url, "UPDATE recipients SET lease_owner = 'other'"
                              " WHERE address = 'b@x.test'")
            with pytest.raises(LeaseLost) as lost:
                await hook(["b@x.test", "c@x.test"])
            assert lost.value.job == job and lost.value.addresses == ["b@x.test"]
            # an address this worker never handed to the engine is not marked either
            with pytest.raises(LeaseLost):
                await hook(["stranger@x.test"])
        await writer.aclose()
        background.cancel_scope.cancel()
    await astore.aclose()
    states = dict(zip(column(store_url, "SELECT address FROM recipients ORDER BY address"),
                      column(store_url, "SELECT state FROM recipients ORDER BY address"),
                      strict=True))
    assert states["b@x.test"] == "pending"  # the new owner's: untouched
    # c, ours, was marked with it: unsent now, it is resent once, flagged --
    # a needless flag, never a lost recipient or an unflagged second copy
    assert states["c@x.test"] == "in_doubt"
