"""Message content: identical for everyone, or rendered per recipient.

Identical content is prepared (normalised, dot-stuffed) once and shared by
every transaction; a template is compiled once and rendered lazily, just
before its transaction, so a million queued recipients cost a million small
variable dicts rather than a million message bodies.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from email.policy import SMTP
from typing import NamedTuple, Protocol, runtime_checkable

from .headers import split_message
from .protocol.data import PreparedMessage, normalize_newlines
from .reencode import prepare

_FORBIDDEN_IN_VALUE = re.compile(r"[\r\n\x00]")


class TemplateValueError(ValueError):
    """A variable value would have added a line or header to the message."""


class Recipient(NamedTuple):
    """One recipient and the variables its template rendering may use.

    Immutable; a named tuple because one is made per input line."""

    address: str
    variables: Mapping[str, str] | None = None
    #: a resumed job resends recipients that were in doubt, flagged as such
    possible_duplicate: bool = False


@runtime_checkable
class Content(Protocol):
    """What a job sends; ``personalised`` decides whether recipients can share a transaction.

    ``raw`` is the message before it is prepared for the wire, for wrappers
    that add headers (``newsletter.DecoratedContent``) without preparing twice.
    """

    @property
    def personalised(self) -> bool: ...

    def raw(self, recipient: Recipient) -> bytes: ...

    def render(self, recipient: Recipient) -> PreparedMessage: ...


class StaticContent:
    """The same bytes for everyone: prepared once."""

    personalised = False

    def __init__(self, message: bytes | str | EmailMessage) -> None:
        self.prepared = prepare(to_bytes(message))

    def raw(self, recipient: Recipient) -> bytes:
        return self.prepared.normalized

    def render(self, recipient: Recipient) -> PreparedMessage:
        return self.prepared


class TemplateContent:
    """``${name}`` placeholders (``string.Template``) filled from each recipient.

    Values containing CR, LF or NUL are refused: a CSV cell must never be able
    to add a header or a line (header injection).  ``$email`` and
    ``$recipient`` are always available.
    """

    personalised = True

    def __init__(self, template: bytes | str) -> None:
        text = template.decode("utf-8") if isinstance(template, bytes) else template
        # CRLF once here: values cannot hold line breaks, so every rendering is
        # already normalised and skips the per-message rewrite
        text = normalize_newlines(text.encode("utf-8")).decode("utf-8")
        self.template = string.Template(text)
        if not self.template.is_valid():
            raise ValueError("message template has an invalid $placeholder")

    def render(self, recipient: Recipient) -> PreparedMessage:
        return prepare(self.raw(recipient))

    def fixed_header_block(self) -> bytes | None:
        """The template's header block if rendering cannot change which headers it
        has (no line starts with a placeholder; values carry no line breaks)."""
        head, _ = split_message(self.template.template.encode("utf-8"))
        if any(line.startswith(b"$") for line in head.splitlines()):
            return None
        return head

    def raw(self, recipient: Recipient) -> bytes:
        values: dict[str, str] = {"email": recipient.address, "recipient": recipient.address}
        variables = recipient.variables
        if variables:
            # one scan over all values; which one it was only matters when refused
            if _FORBIDDEN_IN_VALUE.search("".join(variables.values())):
                key = next(k for k, v in variables.items() if _FORBIDDEN_IN_VALUE.search(v))
                raise TemplateValueError(
                    f"variable {key!r} contains a line break or NUL (header injection refused)"
                )
            values.update(variables)
        try:
            text = self.template.substitute(values)
        except KeyError as exc:
            raise TemplateValueError(f"template variable {exc.args[0]!r} has no value") from exc
        return text.encode("utf-8")


class CallableContent:
    """Arbitrary per-recipient rendering supplied by library users."""

    personalised = True

    def __init__(self, render: Callable[[Recipient], bytes | str | EmailMessage]) -> None:
        self._render = render

    def raw(self, recipient: Recipient) -> bytes:
        return to_bytes(self._render(recipient))

    def render(self, recipient: Recipient) -> PreparedMessage:
        return prepare(self.raw(recipient))


def to_bytes(message: bytes | str | EmailMessage) -> bytes:
    if isinstance(message, EmailMessage):
        return message.as_bytes(policy=SMTP)
    if isinstance(message, str):
        return message.encode("utf-8")
    return message


def has_placeholders(text: str) -> bool:
    """Whether a message file is a template (has ``$name`` / ``${name}``)."""
    return bool(string.Template(text).get_identifiers())


def as_content(
    message: bytes | str | EmailMessage | Content | Callable[[Recipient], bytes],
) -> Content:
    """Accept what library users naturally have."""
    if isinstance(message, (bytes, str, EmailMessage)):
        return StaticContent(message)
    if isinstance(message, Content):
        return message
    return CallableContent(message)
