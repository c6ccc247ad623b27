"""Seeing a run while it goes: Prometheus metrics (:mod:`.metrics`, bounded
per-site labels in :mod:`.sites`) and their HTTP endpoint (:mod:`.http`)."""

from .metrics import METRICS, NOT_MEASURED, EngineView, RunMetrics, SiteMetrics

__all__ = ["METRICS", "NOT_MEASURED", "EngineView", "RunMetrics", "SiteMetrics"]
