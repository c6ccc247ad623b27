"""The end-of-run summary table, shared by ``send``, ``report`` and ``demo``."""

from __future__ import annotations

from ..results import Summary


def render_summary(summary: Summary) -> str:
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
    return "\n".join(lines)
