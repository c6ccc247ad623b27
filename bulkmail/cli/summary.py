"""The end-of-run summary table, shared by ``send``, ``report`` and ``demo``."""

from __future__ import annotations

from collections import Counter

from ..results import Summary

#: (status, bounce class) -> recipients; only bounced and deferred ones have a class
ClassCounts = Counter[tuple[str, str]]


def render_summary(summary: Summary, classes: ClassCounts | None = None) -> str:
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
    return "\n".join(lines)


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
