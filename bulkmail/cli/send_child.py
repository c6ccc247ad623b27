"""A child of ``bulkmail send --processes N`` (started by ``send_processes.py``).

Its arguments arrive pickled on stdin -- the parent's parsed ``send``
arguments with this child's shard, journal, report and progress pipe -- and
stdin then stays open: its end means the parent died (``watch_parent``).
"""

from __future__ import annotations

import pickle
import sys

from . import tune_gc
from .send_command import run
from .send_shard import watch_parent


def main() -> int:
    args = pickle.load(sys.stdin.buffer)
    watch_parent(sys.stdin.fileno())
    tune_gc()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
