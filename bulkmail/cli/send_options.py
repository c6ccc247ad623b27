"""``send``'s options, split for the commands that share one job through a database.

``bulkmail job create`` takes what a job *is* (sender, recipients, message,
signing, retry schedule); ``bulkmail worker`` takes how one machine sends
(relay, TLS, DNS, connections, source addresses).  Both pick their options
from ``send``'s own parser, so a help text or default changed there changes
here too.  (``send_command.add_arguments`` could be rebuilt from the two lists
below; until then this reads its parser.)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

from . import send_command

#: what a job is: stored with it, the same for every worker
JOB_OPTIONS = (
    "sender", "recipients", "message", "suppress", "max_rcpts", "retry_first", "retry_for",
    "dkim_selector", "dkim_domain", "dkim_key", "dkim_algorithm", "dkim_headers",
    "list_unsubscribe", "list_unsubscribe_mailto", "verp", "quiet",
)

#: how one machine sends: each worker its own
EGRESS_OPTIONS = (
    "relay", "tls", "tls_ca", "tls_no_verify", "auth_user", "auth_password_env",
    "allow_plaintext_auth", "dns_server", "mx_port", "connections", "total_connections",
    "shaping", "source_address", "helo", "quiet", "metrics", "metrics_sites",
    "window", "max_in_doubt",
)


def add_send_options(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Add ``send``'s options whose destinations are ``names`` to ``parser``,
    in ``send``'s order and argument groups."""
    wanted = set(names)
    source = argparse.ArgumentParser(add_help=False)
    send_command.add_arguments(source)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for group in source._action_groups:
        for action in group._group_actions:
            if action.dest not in wanted:
                continue
            target: argparse.ArgumentParser | argparse._ArgumentGroup = parser
            if group.title not in (None, "options", "optional arguments", "positional arguments"):
                title = str(group.title)
                if title not in groups:
                    groups[title] = parser.add_argument_group(title, group.description)
                target = groups[title]
            target._add_action(action)
            wanted.discard(action.dest)
    if wanted:  # send renamed or dropped one: fail every use, not silently
        raise RuntimeError(f"send has no option for {sorted(wanted)}")


def send_type(dest: str) -> Callable[[str], Any]:
    """The argument type ``send`` parses option ``dest`` with (its duration
    parser for ``retry_first``, ...), for options of the same kind."""
    source = argparse.ArgumentParser(add_help=False)
    send_command.add_arguments(source)
    action = next(a for a in source._actions if a.dest == dest)
    assert callable(action.type)
    return action.type


def send_defaults() -> argparse.Namespace:
    """Every ``send`` option at its default (required ones ``None``): the base a
    worker fills in from a job and its own command line to reuse ``send``'s
    builders."""
    source = argparse.ArgumentParser(add_help=False)
    send_command.add_arguments(source)
    return argparse.Namespace(**{a.dest: a.default for a in source._actions})
