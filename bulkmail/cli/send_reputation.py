"""``bulkmail send``'s reputation options: the suppression store, bounce rules,
signed one-click unsubscribe links -- checked before anything is sent.

The store is consulted at intake (like ``--suppress FILE``) and fed while the
run goes: a bounced result whose class is in ``--suppress-classes`` is added
with its reply, class and date.  Only bounced results are classified, and a
transaction's recipients share one reply (classified once), so a run of
deliveries pays one status comparison per result.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter

from ..bounce_class import (
    DEFAULT_SUPPRESS,
    BounceClassifier,
    RulesError,
    load_rules,
    parse_classes,
    set_default_classifier,
)
from ..results import Result, Status
from ..suppression import Suppression, SuppressionError, SuppressionStore, normalise
from ..unsubscribe_token import SecretError, key_from_env
from .inputs import InputError

__all__ = ["BounceSuppressor", "Reputation", "add_reputation_arguments", "reputation"]


def add_reputation_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reputation")
    g.add_argument("--suppress-store", metavar="PATH",
                   help="SQLite suppression store: its addresses are not sent to, and"
                        " bounces of the --suppress-classes are added to it as they come")
    g.add_argument("--suppress-classes", metavar="LIST",
                   help="bounce classes --suppress-store adds (comma-separated; default: "
                        + ",".join(sorted(DEFAULT_SUPPRESS)) + ")")
    g.add_argument("--bounce-rules", metavar="FILE.toml",
                   help="your [[rule]] tables, tried before the built-in classification")
    g.add_argument("--unsubscribe-secret-env", metavar="VAR",
                   help="environment variable holding the secret that signs each recipient's"
                        " --list-unsubscribe URL (u=, l=, t= appended) for the unsubscribe"
                        " server")
    g.add_argument("--unsubscribe-list", metavar="ID",
                   help="the list the signed URL names (default: 'default')")


@dataclass
class Reputation:
    """The checked reputation options of one run."""

    store: SuppressionStore | None = None
    suppress_classes: frozenset[str] = DEFAULT_SUPPRESS
    unsubscribe_key: bytes | None = None
    unsubscribe_list: str = "default"

    def intake(self) -> frozenset[str]:
        """The store's addresses, lowercased as ``--suppress FILE``'s are."""
        if self.store is None:
            return frozenset()
        try:
            return self.store.lowercased()
        except SuppressionError as exc:
            raise InputError(str(exc)) from exc

    def identity(self) -> dict[str, str]:
        """Job identity fields: the signed URL changes every message's bytes.

        The key itself is not stored, only an HMAC of a fixed text under it."""
        if self.unsubscribe_key is None:
            return {"unsubscribe-token": "none"}
        tag = hmac.new(self.unsubscribe_key, b"bulkmail job identity", hashlib.sha256)
        return {"unsubscribe-token": f"list={self.unsubscribe_list}"
                                     f" key={tag.hexdigest()[:16]}"}

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def reputation(args: argparse.Namespace) -> Reputation:
    """Check and open what the options name; :class:`InputError` (exit 2) if unusable.

    ``--bounce-rules`` is installed process-wide: the report's ``class`` column
    and the store's additions follow the user's rules."""
    if args.unsubscribe_secret_env and not args.list_unsubscribe:
        raise InputError("--unsubscribe-secret-env signs the --list-unsubscribe URL;"
                         " give --list-unsubscribe https://...")
    if args.unsubscribe_list is not None and not args.unsubscribe_secret_env:
        raise InputError("--unsubscribe-list names the list in the signed URL;"
                         " it needs --unsubscribe-secret-env")
    if args.suppress_classes is not None and not args.suppress_store:
        raise InputError("--suppress-classes chooses what --suppress-store adds;"
                         " give --suppress-store PATH")
    rep = Reputation()
    try:
        if args.suppress_classes is not None:
            rep.suppress_classes = parse_classes(args.suppress_classes)
        if args.bounce_rules:
            set_default_classifier(BounceClassifier(load_rules(args.bounce_rules)))
        if args.unsubscribe_secret_env:
            rep.unsubscribe_key = key_from_env(args.unsubscribe_secret_env)
            if args.unsubscribe_list is not None:
                rep.unsubscribe_list = args.unsubscribe_list
            if not rep.unsubscribe_list.strip():
                raise InputError("--unsubscribe-list must not be empty")
        if args.suppress_store:
            rep.store = SuppressionStore(args.suppress_store)
    except (RulesError, SecretError, SuppressionError) as exc:
        raise InputError(str(exc)) from exc
    return rep


@dataclass
class BounceSuppressor:
    """Adds a run's hard bounces to the store, one transaction per batch of results."""

    store: SuppressionStore
    classes: frozenset[str]
    #: told once when the store cannot be written (the run goes on)
    warn: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))
    added: int = 0
    failed: bool = False

    def __call__(self, results: Sequence[Result]) -> None:
        if self.failed:
            return
        entries = []
        for result in results:
            if result.status is not Status.BOUNCED:
                continue
            bounce_class = result.bounce_class  # cached per reply: a batch shares one
            if bounce_class not in self.classes:
                continue
            try:
                address = normalise(result.recipient)
            except SuppressionError:  # the line was no address: nothing to suppress
                continue
            entries.append(Suppression(address, "bounce", bounce_class, str(result.reply)))
        if not entries:
            return
        try:
            self.added += self.store.add_many(entries)
        except SuppressionError as exc:
            self.failed = True
            self.warn(f"bulkmail send: {exc}; later bounces are not added to it"
                      " (the journal and report still have them)")


_status = attrgetter("status")
# hot-path enum members as module globals (see protocol/connection.py)
_BOUNCED, _DEFERRED = Status.BOUNCED, Status.DEFERRED


def class_counts(results: Sequence[Result], counts: Counter[tuple[str, str]]) -> None:
    """Count bounced and deferred results per (status, class) for the summary."""
    if len(results) > 1:
        # a transaction's deliveries (fifty at a time): one C-level pass says
        # nobody is counted (1.4% of scenario d's samples went to the loop)
        statuses = set(map(_status, results))
        if _BOUNCED not in statuses and _DEFERRED not in statuses:
            return
    for result in results:
        status = result.status
        if status is _BOUNCED or status is _DEFERRED:
            bounce_class = result.bounce_class
            if bounce_class is not None:
                counts[status.value, bounce_class] += 1
