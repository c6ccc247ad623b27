"""``bulkmail send``: a newsletter or batch run from files, durable by default.

Exit status: 0 when every recipient ended delivered, bounced or suppressed;
75 (EX_TEMPFAIL) when some are still deferred -- run the same command again to
resume; 2 for usage errors or unreadable input.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import ssl
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from ..api import MailerConfig, Relay
from ..config import Security, Timeouts
from ..delivery.health import ShapingAction
from ..dkim_signing import DEFAULT_HEADERS, DKIMSigner
from ..journal import (
    JobIdentity,
    JobLocked,
    Journal,
    JournalError,
    JournalWriteError,
    sqlite_path,
)
from ..message import Content, StaticContent, TemplateContent, has_placeholders
from ..newsletter import DecoratedContent, Decorations
from ..policy import RetryPolicy
from ..protocol.auth import Credentials
from ..protocol.commands import validate_address
from ..protocol.errors import InvalidAddress
from ..routing import DNSConfig
from ..shaping import PoolLimits, Shaping
from ..tls_policy.settings import TLSPolicyConfig
from .inputs import InputError, columns_of, read_message, read_recipients, read_suppressions
from .metrics_serve import metrics_address
from .options import (
    TimeoutsAction,
    at_least,
    duration,
    host_port,
    percent,
    port,
    positive_duration,
    server_address,
)
from .progress import count_recipients
from .send_job import (
    check_placeholders,
    default_journal,
    job_identity,
    message_id_key,
    open_job_journal,
    stable_date,
)
from .send_processes import (
    check_sharding,
    combined_status,
    journal_display,
    plan_processes,
    run_processes,
)
from .send_reputation import BounceSuppressor, Reputation, add_reputation_arguments, reputation
from .send_run import RunOutcome, send_job
from .send_shard import PipeProgress, Shard, outcome_to_json
from .summary import render_summary

EX_OK, EX_USAGE, EX_TEMPFAIL = 0, 2, 75

EXAMPLE = """\
example:
  bulkmail send --sender news@example.org --recipients list.csv \\
      --message issue42.eml --relay smtp.example.org:587 --tls starttls \\
      --auth-user news --auth-password-env SMTP_PASSWORD
  (run it again after a stop or exit 75: the journal resumes where it stopped)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sender", required=True, help="envelope sender (MAIL FROM)")
    p.add_argument("--recipients", required=True, metavar="FILE",
                   help="one address per line, or CSV with an 'email' column; - for stdin")
    p.add_argument("--message", required=True, metavar="FILE",
                   help="RFC 5322 message; ${name} placeholders make it per-recipient")
    p.add_argument("--relay", metavar="HOST[:PORT]", type=server_address(25),
                   help="send everything through this smarthost (port 25 unless given);"
                        " without --relay, each domain's MX hosts are looked up in DNS")
    p.add_argument("--tls", choices=("none", "may", "starttls", "tls"), default=None,
                   help="none | may (STARTTLS when offered, unverified: the default) |"
                        " starttls (required, verified) | tls (implicit TLS, port 465)")
    p.add_argument("--tls-policy", choices=("opportunistic", "mta-sts", "dane"),
                   default="mta-sts",
                   help="MX delivery only: mta-sts (the default: a domain's MTA-STS policy is"
                        " enforced) | dane (DANE TLSA records first, needs a validating"
                        " --dns-server; then MTA-STS) | opportunistic (--tls alone)")
    p.add_argument("--tls-ca", metavar="FILE", help="CA bundle to verify servers against")
    p.add_argument("--tls-no-verify", action="store_true", help="do not verify certificates")
    p.add_argument("--auth-user", metavar="USER",
                   help="log in to the relay as USER (AUTH PLAIN/LOGIN/CRAM-MD5);"
                        " needs --auth-password-env")
    p.add_argument("--auth-password-env", metavar="VAR",
                   help="environment variable holding the password")
    p.add_argument("--allow-plaintext-auth", action="store_true",
                   help="allow sending the password without TLS (refused by default)")
    p.add_argument("--dns-server", metavar="HOST[:PORT]", type=server_address(53),
                   help="resolve MX records with this name server instead of the system's")
    p.add_argument("--mx-port", type=port, default=25, metavar="PORT",
                   help="port to connect to on MX hosts (default 25)")
    p.add_argument("--journal", metavar="PATH",
                   help="SQLite journal (default: .bulkmail/<job>.sqlite, resumed automatically)")
    p.add_argument("--no-journal", action="store_true", help="run without a journal")
    p.add_argument("--journal-sync", choices=("normal", "full"), default="normal",
                   help="full: survive power loss, at some cost")
    p.add_argument("--report", metavar="PATH", help="JSON Lines, one object per recipient")
    p.add_argument("--suppress", metavar="FILE", help="addresses never to send to")
    p.add_argument("--connections", type=at_least(1), default=20, metavar="N",
                   help="connections per destination (default 20)")
    p.add_argument("--total-connections", type=at_least(1), default=200, metavar="N",
                   help="connections across all destinations (default 200)")
    p.add_argument("--max-rcpts", type=at_least(1), default=50, metavar="N",
                   help="recipients per transaction (default 50)")
    p.add_argument("--window", type=at_least(1), default=32, metavar="N",
                   help="transactions a connection writes ahead of their replies with"
                        " CHUNKING (default 32), within --max-in-doubt")
    p.add_argument("--max-in-doubt", type=percent, default=1.0, metavar="PERCENT",
                   help="all connections together keep at most this share of the"
                        " recipients read so far in flight past their end of data"
                        " (default 1): what a crash may duplicate, resent flagged;"
                        " 0 leaves it to --window")
    p.add_argument("--batch-by", choices=("domain", "site"), default="site",
                   help="site (default): recipients whose domains share an MX host set"
                        " share transactions; domain: a transaction holds one domain's"
                        " recipients (slower on a long tail of small domains)")
    p.add_argument("--shaping", metavar="FILE.toml",
                   help="per-destination limits and timeouts (see README)")
    p.add_argument("--source-address", action="append", default=[], metavar="ADDR",
                   help="local address to send from (repeat for round robin)")
    p.add_argument("--retry-first", type=positive_duration, default=60.0, metavar="DURATION",
                   help="wait before the first retry of a deferred recipient; later waits"
                        " grow from it (default 60s)")
    p.add_argument("--retry-for", type=duration, default=600.0, metavar="DURATION",
                   help="how long this run keeps retrying deferred recipients (default 10m)")
    p.add_argument("--timeout", dest="timeouts", action=TimeoutsAction, default=Timeouts(),
                   metavar="STAGE=DURATION[,...]",
                   help="change SMTP stage deadlines (repeatable); stages: "
                        + ", ".join(Timeouts.stages())
                        + ". Defaults are RFC 5321's (greeting 5m, data_done 10m, ...)")
    p.add_argument("--helo", default=None, help="name to send in EHLO")
    g = p.add_argument_group("newsletter headers and signing")
    g.add_argument("--dkim-selector", help="selector (s=) of the DKIM key; needs --dkim-key")
    g.add_argument("--dkim-domain", help="d= of the signature (default: the sender's domain)")
    g.add_argument("--dkim-key", metavar="FILE",
                   help="PEM PKCS#8 (rsa or ed25519) or PKCS#1 RSA private key, or a base64 "
                        "Ed25519 seed; loaded and test-signed before anything is sent")
    g.add_argument("--dkim-algorithm", choices=("rsa-sha256", "ed25519-sha256"),
                   default=None, help="default: the key's type")
    g.add_argument("--dkim-headers", metavar="H1,H2,...",
                   help="headers to sign (the List-Unsubscribe pair is always added)")
    g.add_argument("--list-unsubscribe", metavar="URL",
                   help="https URL, may use ${email} and CSV columns (percent-encoded); "
                        "adds RFC 8058 one-click")
    g.add_argument("--list-unsubscribe-mailto", metavar="ADDR",
                   help="mailto target; alone, an RFC 2369 mailto-only List-Unsubscribe")
    g.add_argument("--verp", action="store_true",
                   help="per-recipient envelope sender (bounces+alice=example.com@...)")
    add_reputation_arguments(p)
    o = p.add_argument_group("observing a run")
    o.add_argument("--trace", metavar="FILE",
                   help="JSON Lines: one record per SMTP session in the seed's SMTP Session"
                        " schema (commands, replies, timings; never a secret)")
    o.add_argument("--trace-sample", type=at_least(1), default=1, metavar="N",
                   help="with --trace: record one session in N (default every one)")
    o.add_argument("--metrics", metavar="ADDR:PORT", type=metrics_address,
                   help="serve Prometheus metrics at http://ADDR:PORT/metrics during the run")
    o.add_argument("--metrics-sites", type=at_least(1), default=20, metavar="N",
                   help="destination sites with their own metric labels; the rest are"
                        " 'other' (default 20)")
    p.add_argument("--processes", type=at_least(1), default=1, metavar="N",
                   help="worker processes sharing the job (default 1): recipients are split"
                        " among them by address, each destination's connection cap and"
                        " rate divided so they hold in sum (see README)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress line and no summary (the exit status still tells)")


def decorations(args: argparse.Namespace) -> Decorations:
    sender_domain = args.sender.rpartition("@")[2] or "bulkmail.invalid"
    signer = None
    if args.dkim_key or args.dkim_selector:
        if not (args.dkim_key and args.dkim_selector):
            raise InputError("--dkim-key and --dkim-selector go together")
        headers = tuple(h.strip() for h in args.dkim_headers.split(",")) if args.dkim_headers \
            else DEFAULT_HEADERS
        signer = DKIMSigner.from_file(
            args.dkim_selector, args.dkim_domain or sender_domain, args.dkim_key,
            algorithm=args.dkim_algorithm, headers=headers,
        )
    return Decorations(
        identity_domain=sender_domain,
        unsubscribe_url=args.list_unsubscribe,
        unsubscribe_mailto=args.list_unsubscribe_mailto,
        dkim=signer,
    )


def build_config(args: argparse.Namespace) -> MailerConfig:
    limits = PoolLimits(
        connections=args.connections,
        max_rcpts=args.max_rcpts,
        source_addresses=tuple(args.source_address),
    )
    shaping = Shaping.load(args.shaping, limits) if args.shaping else None
    secure: Security = args.tls or "may"
    context = None
    if args.tls_ca or args.tls_no_verify:
        context = ssl.create_default_context(cafile=args.tls_ca)
        if args.tls_no_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    credentials = None
    if args.auth_user:
        password = os.environ.get(args.auth_password_env or "", None)
        if password is None:
            raise InputError("--auth-user needs --auth-password-env naming a set variable")
        credentials = Credentials(args.auth_user, password)
    relay = Relay(*host_port(args.relay, 25)) if args.relay else None
    dns = DNSConfig(mx_port=args.mx_port)
    if args.dns_server:
        dns = DNSConfig(nameservers=(host_port(args.dns_server, 53),), mx_port=args.mx_port)
    extra: dict[str, Any] = {}
    # policy cache and TLS-RPT counts live beside the journal (`bulkmail tlsrpt` reads them)
    state = Path(".bulkmail")
    with contextlib.suppress(JournalError):  # (a bad --journal is reported where it is opened)
        journal_file = sqlite_path(args.journal) if args.journal else None
        state = Path(journal_file).parent if journal_file else state
    # MTA-STS verifies by definition: --tls-ca is honoured, --tls-no-verify is not
    policy_context = ssl.create_default_context(cafile=args.tls_ca) if args.tls_ca else None
    extra["tls_policy"] = TLSPolicyConfig(
        policy=args.tls_policy, state_dir=str(state), ssl_context=policy_context
    )
    if args.helo:
        extra["client_hostname"] = args.helo
    return MailerConfig(
        relay=relay,
        dns=dns,
        secure=secure,
        ssl_context=context,
        credentials=credentials,
        allow_plaintext_auth=args.allow_plaintext_auth,
        limits=limits,
        shaping=shaping,
        total_connections=args.total_connections,
        window=args.window,
        in_doubt_share=args.max_in_doubt / 100,
        retry=RetryPolicy(first_delay=args.retry_first),
        retry_for=args.retry_for,
        timeouts=args.timeouts,
        batch_by=args.batch_by,
        **extra,
    )


def run(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as cleanup:  # the suppression store, once opened
        return _run(args, cleanup)


def _signed_unsubscribe(decorated: Decorations, rep: Reputation) -> Decorations:
    if rep.unsubscribe_key is None:
        return decorated
    return dataclasses.replace(decorated, unsubscribe_secret=rep.unsubscribe_key,
                               unsubscribe_list=rep.unsubscribe_list)


def _suppressor(rep: Reputation) -> BounceSuppressor | None:
    if rep.store is None:
        return None
    return BounceSuppressor(rep.store, rep.suppress_classes)


def _run(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> int:
    shard: Shard | None = getattr(args, "shard", None)  # a child of --processes N
    try:
        message = read_message(args.message)
        config = build_config(args)
        if shard is not None:
            config = shard.divide(config)
        suppressed = read_suppressions(args.suppress) if args.suppress else frozenset()
        if args.sender:
            try:
                validate_address(args.sender, smtputf8=True)
            except InvalidAddress as exc:
                raise InputError(f"--sender {args.sender!r}: {exc.reason}") from exc
        if args.recipients != "-":
            if not Path(args.recipients).is_file():
                raise InputError(f"cannot read {args.recipients}: no such file")
            next(iter(read_recipients(args.recipients)), None)  # header problems, now
        check_placeholders(message, args.list_unsubscribe, columns_of(args.recipients))
        rep = reputation(args)
        cleanup.callback(rep.close)
        suppressed |= rep.intake()
        decorated = _signed_unsubscribe(decorations(args), rep)
        identity = job_identity(args, message, rep.identity())
        if args.report:
            _check_writable(args.report, "--report")
        if args.trace:
            _check_writable(args.trace, "--trace")
        if args.processes > 1 and (args.metrics or args.trace):
            raise InputError("--metrics and --trace work with one process, not --processes")
        processes = plan_processes(args, config) if args.processes > 1 else 1
        if shard is None:
            check_sharding(args, identity, processes)
    except (InputError, ValueError, OSError) as exc:
        return _usage_error(exc)
    if processes > 1:
        rep.close()  # the children open it again
        try:
            outcome, statuses = run_processes(args, identity, processes)
        except JobLocked as exc:
            print(f"bulkmail send: {exc}", file=sys.stderr)
            return EX_TEMPFAIL
        except (InputError, JournalError) as exc:
            return _usage_error(exc)
        finished = _finish(args, outcome, journal_display(args, identity, processes))
        return combined_status(finished, statuses)
    if shard is not None:
        identity = JobIdentity({**identity.fields, **shard.identity_fields()})
    journal_path = None if args.no_journal else str(args.journal or default_journal(identity))
    journal: Journal | None = None
    try:
        if journal_path is not None:
            journal_file = sqlite_path(journal_path)  # None: a database server
            if journal_file is not None:
                parent = Path(journal_file).parent
                try:
                    parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise InputError(f"cannot create {parent}: {exc.strerror}") from exc
            journal = open_job_journal(journal_path, identity, args.journal_sync)
        message = stable_date(journal, message)
        decorated = dataclasses.replace(decorated, message_id_key=message_id_key(journal))
        content: Content = (
            TemplateContent(message)
            if has_placeholders(message.decode("utf-8", "replace"))
            else StaticContent(message)
        )
        content = DecoratedContent(content, decorated)
    except (JobLocked, JournalWriteError) as exc:
        # another run holds the job, or the disk is full: both pass; rerun later
        _close(journal)
        print(f"bulkmail send: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except (InputError, JournalError, ValueError) as exc:
        _close(journal)
        return _usage_error(exc)
    total = None if args.quiet or shard is not None else count_recipients(args.recipients)
    progress = PipeProgress(args.progress_fd) if shard is not None else None
    try:
        config = replace(config, on_shaping_action=_print_action,
                         warmup_store=_warmup_store(config, journal_path))
    except OSError as exc:
        _close(journal)
        return _usage_error(InputError(f"cannot create the warm-up counters: {exc}"))
    with _LateSignals() as late:
        try:
            outcome = trio.run(send_job, args, config, content, suppressed, journal, total,
                               _suppressor(rep), progress, shard.owns if shard else None)
        except BaseExceptionGroup as group:
            matched, rest = group.split(InputError)
            if matched is None or rest is not None:
                raise
            return _usage_error(_first(matched))
        finally:
            late.ignore()
            _close(journal)
        if progress is not None:  # a child: its parent prints the one summary
            status = _status(outcome)
            progress.send(outcome_to_json(outcome, status))
            return status
        return _finish(args, outcome, journal_path)


class _LateSignals:
    """Once the run has returned, a SIGINT or SIGTERM that comes a moment late (a
    second Ctrl-C after the first already stopped the run) is ignored, instead of
    turning the journal's close and the summary into a KeyboardInterrupt
    traceback; the handlers are restored on exit."""

    def __enter__(self) -> _LateSignals:
        self._previous: dict[int, Any] = {}
        return self

    def ignore(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, signal.SIG_IGN)

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _status(outcome: RunOutcome) -> int:
    """The exit status: 75 while anything is left to send."""
    summary = outcome.summary
    left = outcome.cancelled or (outcome.stopped and outcome.input_left)
    if summary.deferred or left or outcome.failure is not None or summary.aborted is not None:
        return EX_TEMPFAIL
    return EX_OK


def _finish(args: argparse.Namespace, outcome: RunOutcome, journal_path: str | None) -> int:
    """Print how the run ended; the exit status: 75 while anything is left to send."""
    summary = outcome.summary
    if outcome.failure is not None:
        print(f"bulkmail send: {outcome.failure}", file=sys.stderr)
    elif summary.aborted is not None:
        print(f"bulkmail send: stopped early: {summary.aborted}; nothing was bounced for it:"
              " fix the cause and run the same command again to resume", file=sys.stderr)
    already = outcome.resume.already_final
    to_send = summary.total - already - outcome.refused
    if not args.quiet:
        if already and not to_send and not outcome.cancelled:
            print(f"resumed: {already:,} already final, 0 to send", file=sys.stderr)
        else:
            if already:
                print(f"resumed: {already:,} already final, {to_send:,} sent this run",
                      file=sys.stderr)
            print(render_summary(summary, outcome.classes, outcome.unreachable), file=sys.stderr)
        if args.suppress_store:
            print(f"suppression store: {outcome.suppressions_added:,} address(es) added"
                  f" from bounces ({args.suppress_store})", file=sys.stderr)
        if journal_path is not None:
            print(f"journal: {journal_path}", file=sys.stderr)
    return _status(outcome)


def _print_action(action: ShapingAction) -> None:
    """A reply rule of the shaping file acted: one line on stderr."""
    print(action.describe(), file=sys.stderr)


def _warmup_store(config: MailerConfig, journal_path: str | None) -> str | None:
    """The warm-up counters' file: beside the journal (so every job run from
    here shares it), or in .bulkmail/ without a journal file; None without
    ``[[warmup]]`` schedules."""
    if config.shaping is None or not config.shaping.warmup:
        return None
    journal_file = sqlite_path(journal_path) if journal_path is not None else None
    folder = Path(journal_file).parent if journal_file is not None else Path(".bulkmail")
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / "warmup.sqlite")


def _usage_error(exc: BaseException) -> int:
    print(f"bulkmail send: {exc}", file=sys.stderr)
    return EX_USAGE


def _check_writable(path: str, option: str) -> None:
    """Refuse an unwritable output file now, without emptying an existing one."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{option} {path}: is a directory")
    if not os.access(target if target.exists() else (target.parent or Path(".")), os.W_OK):
        raise InputError(f"{option} {path}: not writable")


def _close(journal: Journal | None) -> None:
    if journal is not None:
        with contextlib.suppress(JournalError):
            journal.close()


def _first(group: BaseExceptionGroup[Exception]) -> BaseException:
    """The first leaf of an exception group (trio wraps errors from nurseries)."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
