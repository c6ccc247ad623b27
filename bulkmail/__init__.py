"""bulkmail: bulk email over SMTP with trio structured concurrency."""

from __future__ import annotations

__version__ = "0.1.0"
