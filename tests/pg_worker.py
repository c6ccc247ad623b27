"""A stand-in worker process for the store's kill tests: claims, marks in doubt,
"sends" (a row in ``sent_log``, the sink's view), completes -- with a heartbeat
thread, as a real worker would.

    python -m tests.pg_worker STORE_URL JOB OWNER LEASE_SECONDS STALL_AFTER

With STALL_AFTER >= 0 it stalls on its claim number STALL_AFTER: marks the
claim in doubt, sends half of it, writes a ``stalled`` row and sleeps until it
is killed.  Exits 0 once the job is done.
"""

from __future__ import annotations

import sys
import threading
import time

from bulkmail.journal import Outcome, Status
from bulkmail.store import PgStore


def main() -> int:
    url, job, owner, lease, stall_after = (
        sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
    store, beats = PgStore(url), PgStore(url)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(lease / 4):
            beats.heartbeat(owner, lease)

    threading.Thread(target=heartbeat, daemon=True).start()
    claims = 0
    while True:
        claim = store.claim(owner, 15, lease, job=job)
        if claim is None:
            if store.finish_if_done(job):
                stop.set()
                return 0
            time.sleep(0.02)
            continue
        flagged = {r.address: r.possible_duplicate for r in claim.recipients}
        marked = store.mark_in_doubt(owner, job, sorted(flagged))
        sent = sorted(marked)
        if claims == stall_after:
            sent = sent[: len(sent) // 2]
        with store.db.using() as conn, conn.transaction():
            for address in sent:
                conn.execute(
                    "INSERT INTO sent_log (address, owner, flagged) VALUES (%s, %s, %s)",
                    (address, owner, flagged[address]),
                )
            if claims == stall_after:
                conn.execute("INSERT INTO stalled VALUES (%s)", (owner,))
        if claims == stall_after:
            time.sleep(3600)  # the kill comes here, with recipients in doubt
        for dup in (False, True):
            group = [a for a in sent if flagged[a] is dup]
            outcome = Outcome(Status.DELIVERED, 250, "2.0.0", "ok", 1, "mx", None, dup)
            store.complete(owner, job, [(group, outcome)])
        claims += 1


if __name__ == "__main__":
    sys.exit(main())
