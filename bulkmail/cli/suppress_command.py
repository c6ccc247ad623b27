"""``bulkmail suppress``: look after the suppression store by hand.

``add``/``remove`` addresses, ``list`` them (tab-separated: address, reason,
class, date, source), ``import``/``export`` the plain one-address-per-line file
that ``send --suppress FILE`` reads.  Exit status: 0, 1 when some input lines
were refused (the rest is still done), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from ..suppression import REASONS, SuppressionError, SuppressionStore

EX_OK, EX_PARTLY, EX_USAGE = 0, 1, 2
EXAMPLE = """\
example:
  bulkmail suppress add --store suppressed.sqlite alice@example.org bob@example.net
  bulkmail suppress export --store suppressed.sqlite - > suppressed.txt
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", required=True, metavar="PATH",
                        help="the suppression store (SQLite file, created if missing)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION",
                               help="add | remove | list | import | export")
    add = actions.add_parser("add", parents=[common], help="suppress addresses")
    add.add_argument("addresses", nargs="+", metavar="ADDRESS", help="addresses to suppress")
    add.add_argument("--reason", choices=REASONS, default="manual",
                     help="why (default manual)")
    remove = actions.add_parser("remove", parents=[common], help="lift suppressions")
    remove.add_argument("addresses", nargs="+", metavar="ADDRESS",
                        help="addresses to send to again")
    listing = actions.add_parser("list", parents=[common], help="print the entries")
    listing.add_argument("--reason", choices=REASONS, help="only entries of this reason")
    imp = actions.add_parser("import", parents=[common], help="add a plain address file")
    imp.add_argument("file", metavar="FILE", help="one address per line (- for stdin)")
    exp = actions.add_parser("export", parents=[common],
                             help="write the plain address file (- for standard output)")
    exp.add_argument("file", metavar="FILE", help="where to write (- for stdout)")


def run(args: argparse.Namespace) -> int:
    try:
        with SuppressionStore(args.store) as store:
            return _ACTIONS[args.action](store, args)
    except SuppressionError as exc:
        print(f"bulkmail suppress: {exc}", file=sys.stderr)
        return EX_USAGE


def _add(store: SuppressionStore, args: argparse.Namespace) -> int:
    return _each_address(
        args.addresses,
        lambda address: store.add(address, args.reason, source="bulkmail suppress add"),
        ("suppressed", "already suppressed"),
    )


def _remove(store: SuppressionStore, args: argparse.Namespace) -> int:
    return _each_address(args.addresses, store.remove, ("removed", "was not suppressed"))


def _each_address(
    addresses: list[str], change: Callable[[str], bool], said: tuple[str, str]
) -> int:
    """Apply ``change`` to each address, saying ``said[0]`` when it changed the
    store and ``said[1]`` when not; a refused address is said and the rest go on."""
    refused = 0
    for address in addresses:
        try:
            changed = change(address)
        except SuppressionError as exc:
            print(f"bulkmail suppress: {exc}", file=sys.stderr)
            refused += 1
            continue
        print(f"{address}: {said[0] if changed else said[1]}")
    return EX_PARTLY if refused else EX_OK


def _list(store: SuppressionStore, args: argparse.Namespace) -> int:
    for e in store.entries(args.reason):
        date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.added_at))
        source = " ".join((e.source or "").split())  # one line per entry
        print(f"{e.address}\t{e.reason}\t{e.bounce_class or '-'}\t{date}\t{source}")
    return EX_OK


def _import(store: SuppressionStore, args: argparse.Namespace) -> int:
    added, refused = store.import_file(args.file)
    for line in refused:
        print(f"bulkmail suppress: refused {line}", file=sys.stderr)
    print(f"{added} address(es) added, {len(store)} suppressed in all")
    return EX_PARTLY if refused else EX_OK


def _export(store: SuppressionStore, args: argparse.Namespace) -> int:
    if args.file == "-":
        for e in store.entries():
            print(e.address)
        return EX_OK
    count = store.export_file(args.file)
    print(f"{count} address(es) written to {args.file}", file=sys.stderr)
    return EX_OK


_ACTIONS = {"add": _add, "remove": _remove, "list": _list, "import": _import,
            "export": _export}
