"""Old import path: the engine lives in :mod:`bulkmail.delivery` now."""

from __future__ import annotations

from .delivery.engine import Engine
from .delivery.engine_config import EngineConfig
from .delivery.intake import MAX_INTAKE_DOMAINS
from .delivery.job import (
    InDoubtHook,
    Item,
    Job,
    JobOptions,
    Presettle,
    ResultCallback,
    ResultsCallback,
)
from .delivery.outcomes import MAX_FREE_RETRIES

__all__ = [
    "MAX_FREE_RETRIES",
    "MAX_INTAKE_DOMAINS",
    "Engine",
    "EngineConfig",
    "InDoubtHook",
    "Item",
    "Job",
    "JobOptions",
    "Presettle",
    "ResultCallback",
    "ResultsCallback",
]
