"""The delivery layer: recipients in, one final result per recipient out.

Modules, leaves first (each imports only modules above it in this list):

* ``policy``    what one reply means for one recipient (``classify``)
* ``health``    a destination's backoff and pacing, and the actions reply
  rules put in force there (``ShapingAction``)
* ``limiter``   the seam for per-destination limits shared with other
  processes (connection seats, rate tokens, pauses); ``None`` in one process
* ``job``       a job (``Job``, its frozen ``JobOptions``) and its ``Item``s
* ``domain_queue`` a pool's queue when transactions are per domain
* ``retry``     the per-recipient retry schedule and the loop that keeps it
* ``settle``    a transaction's result -> each recipient's outcome
* ``connector`` opening a session to a destination (MX order, TLS fallback,
  source addresses)
* ``batch``     the transactions one session runs, until each is settled
* ``gate``      what reply rules and warm-up caps allow a pool right now
  (which source may connect, whether a session may go on)
* ``batch_run`` running one batch on a session: pacing, refill, the in-doubt
  hook before end of data, settling results or an interruption (the pool's
  base class ``BatchRunner``)
* ``pool``      sessions and queued work for one destination; it sees the
  engine only through the small ``PoolOwner`` protocol
* ``intake``    admission: dedupe, presettle, validation, back-pressure
* ``observed``  the pools' state as a metrics scrape reads it (``--metrics``)
* ``engine_config`` the engine's settings for a run (``EngineConfig``)
* ``outcomes``  each recipient's verdict applied: delivered, bounced, deferred
  by the retry policy, in doubt (the engine's base class ``RecipientOutcomes``)
* ``engine``    jobs, routing, pools, holds, stop / abort / cancel

Nothing is imported here, so importing one module never drags in the rest.
"""
