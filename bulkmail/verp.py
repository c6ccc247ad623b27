"""VERP: a unique envelope sender per recipient, so asynchronous bounces map back.

``bounces@sender.org`` sending to ``alice@example.com`` uses
``bounces+alice=example.com@sender.org``; a DSN that comes back to that
address names its recipient even when the DSN itself is vague.
"""

from __future__ import annotations

MAX_LOCAL = 64


def verp_sender(sender: str, recipient: str) -> str:
    """The per-recipient envelope sender (the plain sender if VERP would be too long)."""
    local, at, domain = sender.rpartition("@")
    rlocal, rat, rdomain = recipient.rpartition("@")
    if not at or not rat:
        return sender
    tagged = f"{local}+{rlocal}={rdomain}"
    if len(tagged.encode()) > MAX_LOCAL or '"' in rlocal:
        return sender
    return f"{tagged}@{domain}"


def verp_recipient(address: str, sender: str) -> str | None:
    """The recipient encoded in a VERP address, or ``None`` if it is not ours."""
    local, _, domain = address.strip().strip("<>").rpartition("@")
    slocal, _, sdomain = sender.rpartition("@")
    prefix = slocal + "+"
    if domain.lower() != sdomain.lower() or not local.lower().startswith(prefix.lower()):
        return None
    token = local[len(prefix) :]
    rlocal, eq, rdomain = token.rpartition("=")
    if not eq or not rlocal or not rdomain:
        return None
    return f"{rlocal}@{rdomain}"
