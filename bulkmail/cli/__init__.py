"""The ``bulkmail`` command: send one message or a personalised template to
many recipients over SMTP -- through a relay or straight to each domain's MX
hosts -- with pipelined, pooled connections and a journal that resumes an
interrupted run; plus a local SMTP sink to try it all on.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; they are imported lazily so ``bulkmail sink`` does not
pay for the engine's imports and vice versa.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from collections.abc import Sequence

DESCRIPTION = """\
Send one message, or a template personalised per recipient, to many
recipients over SMTP: through a relay (--relay) or straight to each domain's
MX hosts, over pipelined, pooled connections.  Every recipient ends
delivered, bounced (with the server's reply) or deferred; a journal lets an
interrupted run resume where it stopped."""

EPILOG = """\
try it (nothing leaves 127.0.0.1):
  bulkmail demo
a real run:
  bulkmail send --sender news@example.org --recipients list.csv \\
      --message issue42.eml --relay smtp.example.org
exit status: 0 all final, 2 bad input, 75 some deferred (run it again)
'bulkmail COMMAND --help' describes each command's options."""

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "send": ("bulkmail.cli.send_entry",
             "send a message or template to a recipients file, resumably"),
    "sink": ("bulkmail.cli.sink_command",
             "run a local SMTP server that accepts and counts mail (tests, benchmarks)"),
    "report": ("bulkmail.cli.report_command", "summarise a run from its journal"),
    "status": ("bulkmail.cli.status_command",
               "a job's progress, and what is still queued by domain and age"),
    "bounces": ("bulkmail.cli.bounces_command",
                "apply returned bounce messages (DSNs) to a journal and suppression list"),
    "tlsrpt": ("bulkmail.cli.tlsrpt_command",
               "write (and mail) TLS-RPT reports of MTA-STS / DANE sessions (RFC 8460)"),
    "demo": ("bulkmail.cli.demo_command",
             "send a demo newsletter to a built-in sink on 127.0.0.1"),
    "suppress": ("bulkmail.cli.suppress_command",
                 "add, remove, list, import or export suppressed addresses"),
    "complaints": ("bulkmail.cli.complaints_command",
                   "suppress recipients who complained (ARF feedback reports)"),
    "unsubscribe-server": ("bulkmail.cli.unsubscribe_server_command",
                           "serve one-click unsubscribes (RFC 8058) into a suppression store"),
    "job": ("bulkmail.cli.job_command",
            "create, inspect, report or cancel a job in PostgreSQL (several workers)"),
    "worker": ("bulkmail.cli.worker_command",
               "work a PostgreSQL job's recipients (one per machine or core)"),
}

#: an example per subcommand, shown under its --help (modules may define EXAMPLE instead)
EXAMPLES: dict[str, str] = {
    "report": "example:\n  bulkmail report .bulkmail/job-1f2e3d4c5b6a7980.sqlite\n",
    "bounces": "example:\n  bulkmail bounces --journal run.sqlite --suppress suppressed.txt"
               " bounces/*.eml\n",
}


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="bulkmail", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in args_list if not a.startswith("-")), None)
    module = chosen_parser = None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
            sub_parser.epilog = getattr(module, "EXAMPLE", None) or EXAMPLES.get(name)
            chosen_parser = sub_parser
    args, unknown = parser.parse_known_args(args_list)
    if unknown:  # the chosen command's usage, which is what the user needs to fix it
        assert chosen_parser is not None
        chosen_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    assert module is not None
    tune_gc()
    try:
        result: int = module.run(args)
        sys.stdout.flush()
    except BrokenPipeError:  # `bulkmail report j | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
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
