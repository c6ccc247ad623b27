"""The ``bulkmail`` command: a thin layer over the library.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; they are imported lazily so ``bulkmail sink`` does not
pay for the engine's imports and vice versa.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from collections.abc import Sequence

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "sink": ("bulkmail.cli.sink_command", "run the local SMTP sink server"),
    "send": ("bulkmail.cli.send_command", "send a message to many recipients"),
    "report": ("bulkmail.cli.report_command", "summarise a journal"),
    "bounces": ("bulkmail.cli.bounces_command", "apply returned DSNs to a journal"),
    "demo": ("bulkmail.cli.demo_command", "send a demo newsletter to the built-in sink"),
    "job": ("bulkmail.cli.job_command", "create, inspect or cancel a job in PostgreSQL"),
    "worker": ("bulkmail.cli.worker_command", "send stored jobs' recipients from this machine"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="bulkmail", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in args_list if not a.startswith("-")), None)
    module = None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
    args = parser.parse_args(args_list)
    assert module is not None
    tune_gc()
    result: int = module.run(args)
    return result


def tune_gc() -> None:
    """Fewer, cheaper cyclic collections for a process that allocates per recipient.

    Nearly everything a run allocates is freed by reference counting; with the
    default thresholds the cyclic collector still ran often enough to cost ~10%
    of a batched newsletter run.  What is imported by now is frozen out of its
    scans.  (A command-line process owns its interpreter; the library never
    touches these settings.)
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


if __name__ == "__main__":
    sys.exit(main())
