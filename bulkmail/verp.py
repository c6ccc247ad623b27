"""VERP: a unique envelope sender per recipient, so asynchronous bounces map back.

``bounces@sender.org`` sending to ``alice@example.com`` uses
``bounces+alice=example.com@sender.org``; a DSN that comes back to that
address names its recipient even when the DSN itself is vague.
"""

from __future__ import annotations

#: RFC 5321 §4.5.3.1.1: a local part has at most 64 octets
MAX_LOCAL = 64


def verp_sender(sender: str, recipient: str) -> str:
    """The per-recipient envelope sender, or the plain sender when the tagged local
    part would exceed 64 octets (or the recipient's is quoted): see :func:`verp_fits`."""
    tagged = _tagged(sender, recipient)
    return sender if tagged is None else tagged


def verp_fits(sender: str, recipient: str) -> bool:
    """Whether ``recipient`` gets its own VERP sender.  When it does not, its bounces
    can only be matched by the DSN's own Final-Recipient (``bulkmail bounces``)."""
    return _tagged(sender, recipient) is not None


def _tagged(sender: str, recipient: str) -> str | None:
    local, at, domain = sender.rpartition("@")
    rlocal, rat, rdomain = recipient.rpartition("@")
    if not at or not rat:
        return None
    tagged = f"{local}+{rlocal}={rdomain}"
    if len(tagged.encode()) > MAX_LOCAL or '"' in rlocal:
        return None
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
