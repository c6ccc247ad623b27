"""What makes a ``bulkmail send`` run one job: its identity, its journal, its
template's placeholders and its Date -- everything decided before sending.

A journal is bound to the job that created it (``journal/identity.py``): a
different message, sender, list or option that changes the bytes is refused
(exit 2), and a second run of the same job while one holds it is refused too
(exit 75, ``journal/lock.py``).  The first run also stores its ``Date``, so
a resumed run's resends carry the same bytes as the first attempt.
"""

from __future__ import annotations

import argparse
import hashlib
import string
import time
from collections.abc import Mapping
from email.utils import formatdate
from pathlib import Path

from ..headers import add_headers, has_header, split_message
from ..journal import JobIdentity, Journal, bind_identity, open_journal
from ..message_ids import KEY_META, new_key
from .inputs import InputError

__all__ = [
    "DATE_META",
    "check_placeholders",
    "default_journal",
    "job_identity",
    "message_id_key",
    "open_job_journal",
    "stable_date",
]

#: journal meta key: the Date header every message of the job carries
DATE_META = "date"


def job_identity(
    args: argparse.Namespace, message: bytes, extra: Mapping[str, str] | None = None
) -> JobIdentity:
    """Sender, message, recipients source, and every option that changes the bytes
    or the envelope a recipient gets (``extra``: fields of other option groups,
    such as the unsubscribe signing)."""
    source = args.recipients if args.recipients == "-" else str(Path(args.recipients).resolve())
    dkim = "none"
    if args.dkim_key or args.dkim_selector:
        try:
            key = hashlib.sha256(Path(args.dkim_key).read_bytes()).hexdigest()[:16]
        except OSError as exc:
            raise InputError(f"cannot read --dkim-key {args.dkim_key}: {exc.strerror}") from exc
        dkim = (
            f"s={args.dkim_selector} d={args.dkim_domain or '(sender domain)'}"
            f" a={args.dkim_algorithm} h={args.dkim_headers or '(default)'} key={key}"
        )
    return JobIdentity({
        "sender": args.sender,
        "message": "sha256:" + hashlib.sha256(message).hexdigest(),
        "recipients": source,
        "dkim": dkim,
        "list-unsubscribe": args.list_unsubscribe or "none",
        "list-unsubscribe-mailto": args.list_unsubscribe_mailto or "none",
        "verp": "yes" if args.verp else "no",
        **(extra or {}),
    })


def default_journal(identity: JobIdentity) -> Path:
    """Same job (see :func:`job_identity`) -> same journal: rerunning resumes."""
    return Path(".bulkmail") / f"job-{identity.digest()}.sqlite"


def check_placeholders(
    message: bytes, unsubscribe_url: str | None, columns: list[str] | None
) -> None:
    """Refuse, before anything is sent, a ``${name}`` that no CSV column fills
    (``columns`` unknown: such a recipient bounces ``553 5.1.3`` instead)."""
    if columns is None:
        return
    available = set(columns)
    problems = []
    text = message.decode("utf-8", "replace")
    unknown = _unknown(text, available | {"email", "recipient"})
    if unknown:
        problems.append(f"the message uses {_names(unknown)}")
    if unsubscribe_url:
        unknown = _unknown(unsubscribe_url, available | {"email"})
        if unknown:
            problems.append(f"--list-unsubscribe uses {_names(unknown)}")
    if problems:
        offered = ", ".join(sorted(available)) if available else "none (a plain list)"
        raise InputError(
            f"{' and '.join(problems)}, which no recipients column fills; columns: {offered}"
            " (plus ${email})"
        )


def _unknown(template: str, available: set[str]) -> list[str]:
    return sorted(set(string.Template(template).get_identifiers()) - available)


def _names(names: list[str]) -> str:
    return ", ".join("${" + n + "}" for n in names)


def open_job_journal(location: str, identity: JobIdentity, sync: str) -> Journal:
    """The job's journal, locked for this run and bound to ``identity``.

    Raises ``JobLocked`` (another run holds it), ``JobMismatch`` (another
    job's journal) or ``JournalError``.
    """
    journal = open_journal(
        location, synchronous="FULL" if sync == "full" else "NORMAL", lock=True
    )
    try:
        bind_identity(journal, identity, location)
    except BaseException:
        journal.close()
        raise
    return journal


def stable_date(journal: Journal | None, message: bytes) -> bytes:
    """``message`` with the job's ``Date`` when it has none, the same on every run
    of the job (stored in the journal by the first); unchanged without a journal."""
    head, _ = split_message(message)
    if journal is None or has_header(head, "Date"):
        return message
    date = journal.get_meta(DATE_META)
    if date is None:
        date = formatdate(time.time(), usegmt=True)
        journal.set_meta(DATE_META, date)
    return add_headers(message, [("Date", date)])


def message_id_key(journal: Journal | None) -> bytes | None:
    """The job's Message-ID key (:mod:`bulkmail.message_ids`), made and stored by
    its first run; ``None`` without a journal (nothing could map IDs back) and for
    a job begun before keys existed (its resends keep their first Message-IDs)."""
    if journal is None:
        return None
    stored = journal.get_meta(KEY_META)
    if stored is None:
        if not journal.is_empty():
            return None
        key = new_key()
        journal.set_meta(KEY_META, key.hex())
        return key
    return bytes.fromhex(stored)
