"""The ``bulkmail`` command: a thin layer over the library.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; they are imported lazily so ``bulkmail sink`` does not
pay for the engine's imports and vice versa.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "sink": ("bulkmail.cli.sink_command", "run the local SMTP sink server"),
    "send": ("bulkmail.cli.send_command", "send a message to many recipients"),
    "report": ("bulkmail.cli.report_command", "summarise a journal"),
    "demo": ("bulkmail.cli.demo_command", "send a demo newsletter to the built-in sink"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bulkmail", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    result: int = modules[args.command].run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
