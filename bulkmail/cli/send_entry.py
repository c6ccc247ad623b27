"""``bulkmail send``'s entry: with a file journal (or none) it is
:mod:`~bulkmail.cli.send_command`; with ``--journal postgresql://...`` it is
``job create`` and one ``worker`` on that job, in this process.

A second run with the same sender, message and recipients file resumes the
job it created (``?job=ID`` in the URL names one outright), as a file journal
resumes.  The store modules are imported only for a PostgreSQL journal, so a
plain ``send`` pays nothing for them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import send_command

EX_USAGE = 2

add_arguments = send_command.add_arguments
EXAMPLE = send_command.EXAMPLE

#: send options that need the SQLite journal (or the single process) and are
#: refused with a PostgreSQL one rather than silently ignored
_FILE_ONLY = ("suppress_store", "bounce_rules", "unsubscribe_list", "unsubscribe_secret_env")


def run(args: argparse.Namespace) -> int:
    journal = args.journal
    if args.no_journal or journal is None or not str(journal).startswith(
            ("postgresql://", "postgres://")):
        return send_command.run(args)
    return _send_on_store(args, str(journal))


def _send_on_store(args: argparse.Namespace, url: str) -> int:
    job_command = importlib.import_module("bulkmail.cli.job_command")
    worker_command = importlib.import_module("bulkmail.cli.worker_command")
    store_module = importlib.import_module("bulkmail.store")
    job_state = importlib.import_module("bulkmail.store.job_state")
    used = [f"--{name.replace('_', '-')}" for name in _FILE_ONLY if getattr(args, name, None)]
    try:
        if getattr(args, "processes", 1) > 1:
            used.append("--processes (run 'bulkmail worker' processes on the job instead)")
        if used:
            raise ValueError(f"{', '.join(used)}: not available with a PostgreSQL journal")
        _, _, job = store_module.split_store_url(url)
        if job is None:
            spec = job_command.job_spec(args)
            with store_module.PgStore(url) as store:
                job = job_state.find_job(store, job_command.job_identity(spec, args.recipients))
            if job is None:
                job = job_command.create_job(argparse.Namespace(**{**vars(args), "db": url}))
            elif not args.quiet:
                print(f"job {job}: resuming", file=sys.stderr)
    except (store_module.StoreError, job_command.InputError, ValueError, OSError,
            UnicodeDecodeError) as exc:
        print(f"bulkmail send: {exc}", file=sys.stderr)
        return EX_USAGE
    defaults = worker_command.DEFAULTS
    worker_args = argparse.Namespace(**{**vars(args), "db": url, "job": job, "follow": False,
                                        "lease": defaults.lease, "claim_size": defaults.claim_size,
                                        "max_leased": defaults.max_leased})
    status: int = worker_command.run(worker_args)
    if args.report:
        with store_module.PgStore(url) as store, open(args.report, "w", encoding="utf-8") as out:
            job_command.write_report(store, job, out)
    if not args.quiet:
        print(f"journal: {url.split('?')[0]}?job={job}", file=sys.stderr)
    return status
