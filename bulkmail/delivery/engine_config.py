"""The engine's settings for a run (``EngineConfig``), frozen once built."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ..config import SessionConfig
from ..observe import RunMetrics
from ..shaping import Shaping
from .connector import ConnectionObserver
from .health import ShapingAction
from .retry import RetryPolicy

BatchBy = Literal["domain", "site"]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    session: SessionConfig
    shaping: Shaping = field(default_factory=Shaping)
    total_connections: int = 200
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: seconds a job keeps retrying deferred recipients (None: the retry policy's lifetime)
    retry_for: float | None = None
    #: recipients held in memory at once: the producer waits beyond this
    max_pending: int = 20_000
    linger: float = 0.05
    seed: int | None = None
    #: called with each action a reply rule takes (the CLI prints its ``describe()``)
    on_shaping_action: Callable[[ShapingAction], None] | None = None
    #: the SQLite file of the warm-up counters (None: kept in memory for this run)
    warmup_store: str | None = None
    #: seconds since the epoch (None: the trio clock mapped onto the system's,
    #: so warm-up windows follow a virtual clock in tests)
    wall_clock: Callable[[], float] | None = None
    #: told at once when a destination cannot be reached (progress, logs)
    on_connection_failure: ConnectionObserver | None = None
    #: counters for ``--metrics`` (``bulkmail.observe``); None: nothing is counted
    metrics: RunMetrics | None = None
    #: ``"site"`` (the default, as before ``batch_by`` existed): recipients of
    #: different domains with the same MX hosts share transactions;
    #: ``"domain"``: a transaction holds one domain's recipients
    batch_by: BatchBy = "site"
    #: all sessions together keep at most this share of the recipients admitted
    #: so far in flight past their end of data (BDAT writes whole transactions
    #: ahead): what a SIGKILL can duplicate.  0: only the window bounds it
    in_doubt_share: float = 0.01

    def __post_init__(self) -> None:
        if self.batch_by not in ("domain", "site"):
            raise ValueError(f"batch_by must be 'domain' or 'site', not {self.batch_by!r}")

