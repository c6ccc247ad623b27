"""The end-of-run summary table, shared by ``send``, ``report`` and ``demo``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from ..delivery.connector import ConnectionFailure
from ..results import Summary

#: (status, bounce class) -> recipients; only bounced and deferred ones have a class
ClassCounts = Counter[tuple[str, str]]


def render_summary(
    summary: Summary,
    classes: ClassCounts | None = None,
    unreachable: Mapping[str, ConnectionFailure] | None = None,
) -> str:
    total = summary.total or 1
    rows = [
        ("delivered", summary.delivered),
        ("bounced", summary.bounced),
        ("deferred", summary.deferred),
        ("suppressed", summary.suppressed),
    ]
    if summary.in_doubt:
        rows.append(("in doubt", summary.in_doubt))  # twice in doubt: final, not resent
    lines = ["", f"{'status':<12}{'recipients':>12}{'share':>9}"]
    lines += [f"{name:<12}{count:>12,}{count / total:>9.1%}" for name, count in rows]
    lines.append(f"{'total':<12}{summary.total:>12,}")
    if summary.possible_duplicates:
        lines.append(
            f"possible duplicates (flagged: the server may hold two copies):"
            f" {summary.possible_duplicates}"
        )
    if summary.domains:
        top = summary.domains.most_common(5)
        lines.append("largest domains: " + ", ".join(
            f"{d} {n:,} ({n / total:.0%})" for d, n in top
        ))
    if summary.codes:
        codes = summary.codes.most_common(5)
        lines.append("top replies: " + ", ".join(f"{c} x{n}" for c, n in codes))
    lines += class_lines(classes or Counter())
    lines += unreachable_lines(unreachable or {})
    return "\n".join(lines)


def unreachable_lines(unreachable: Mapping[str, ConnectionFailure], shown: int = 5) -> list[str]:
    """Destinations that refused or dropped connections, each with its last
    error: why recipients were deferred (a down or mistyped relay), in words."""
    if not unreachable:
        return []
    worst = sorted(unreachable.values(), key=lambda f: (-f.failures, f.destination))
    lines = ["could not connect:"]
    for f in worst[:shown]:
        plural = "s" if f.failures != 1 else ""
        lines.append(f"  {f.destination}: {f.reply} ({f.failures} failed attempt{plural})")
    if len(worst) > shown:
        lines.append(f"  and {len(worst) - shown:,} more destinations")
    return lines


def class_lines(classes: ClassCounts) -> list[str]:
    """``bounced by class: invalid-recipient 12, mailbox-full 3``, and the same
    for deferred: what to act on (suppress, fix authentication, slow down)."""
    lines = []
    for status in ("bounced", "deferred"):
        counts = Counter({c: n for (s, c), n in classes.items() if s == status and n})
        if counts:
            lines.append(f"{status} by class: " + ", ".join(
                f"{c} {n:,}" for c, n in sorted(counts.items(), key=lambda i: (-i[1], i[0]))))
    return lines
