"""Message content: identical for everyone, or rendered per recipient.

Identical content is prepared (normalised, dot-stuffed) once and shared by
every transaction; a template is compiled once and rendered lazily, just
before its transaction, so a million queued recipients cost a million small
variable dicts rather than a million message bodies.

``identity=True`` adds ``Message-ID`` and ``Date`` where the message lacks
them (RFC 5322 §3.6 requires a Date; receivers score mail without a
Message-ID as spam), the Message-ID in the From header's domain and stable
per message and recipient.  :func:`as_content` -- what ``Mailer.send`` uses
for bytes, text, ``EmailMessage`` and callables -- turns it on; a
:class:`Content` built by hand states its choice (default off).
"""

from __future__ import annotations

import re
import socket
import string
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from email.policy import SMTP
from typing import NamedTuple, Protocol, runtime_checkable

from .headers import ensure_identity, has_header, identity_lines, split_message
from .protocol.data import PreparedMessage, normalize_newlines
from .reencode import prepare

_FORBIDDEN_IN_VALUE = re.compile(r"[\r\n\x00]")
_FROM_DOMAIN = re.compile(rb"^From:[^\r\n]*@([A-Za-z0-9.-]+)", re.I | re.M)


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

    def __init__(self, message: bytes | str | EmailMessage, *, identity: bool = False) -> None:
        raw = to_bytes(message)
        if identity:
            raw = ensure_identity(raw, identity_domain(raw), seed=raw)
        self.prepared = prepare(raw)

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

    def __init__(self, template: bytes | str, *, identity: bool = False) -> None:
        text = template.decode("utf-8") if isinstance(template, bytes) else template
        # CRLF once here: values cannot hold line breaks, so every rendering is
        # already normalised and skips the per-message rewrite
        text = normalize_newlines(text.encode("utf-8")).decode("utf-8")
        self.template = string.Template(text)
        if not self.template.is_valid():
            raise ValueError("message template has an invalid $placeholder")
        self._format = _format_string(self.template)
        self._identity: _Identity | None = None
        if identity:
            head = self.fixed_header_block()
            domain = identity_domain(text.encode("utf-8"))
            # which headers are missing is known before rendering when no header
            # line comes from a value: then each rendering just gets those lines
            missing = None if head is None else tuple(
                name for name in ("Message-ID", "Date") if not has_header(head, name))
            self._identity = _Identity(domain, missing)

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
        text = self._substitute(recipient)
        if self._identity is None:
            return text
        return self._identity.add(text, recipient.address)

    def _substitute(self, recipient: Recipient) -> bytes:
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
            text = self._format.format_map(values)  # = self.template.substitute(values)
        except KeyError as exc:
            raise TemplateValueError(f"template variable {exc.args[0]!r} has no value") from exc
        return text.encode("utf-8")


def _format_string(template: string.Template) -> str:
    """``template`` as a ``str.format_map`` string: one C call per rendering
    instead of a regex substitution calling back into Python per placeholder.
    Field names are ``Template`` identifiers (letters, digits, ``_``), so
    ``format_map`` looks each up as ``substitute`` does (``format(value, "")``
    is ``str(value)``), and a missing one raises the same ``KeyError``."""
    text, parts, pos = template.template, [], 0
    for m in template.pattern.finditer(text):
        parts.append(text[pos:m.start()].replace("{", "{{").replace("}", "}}"))
        pos = m.end()
        name = m.group("named") or m.group("braced")
        if name is None:  # "$$" (an invalid "$" was refused before)
            parts.append(template.delimiter.replace("{", "{{").replace("}", "}}"))
        else:
            parts.append("{" + name + "}")
    parts.append(text[pos:].replace("{", "{{").replace("}", "}}"))
    return "".join(parts)


class CallableContent:
    """Arbitrary per-recipient rendering supplied by library users."""

    personalised = True

    def __init__(
        self, render: Callable[[Recipient], bytes | str | EmailMessage], *, identity: bool = False
    ) -> None:
        self._render = render
        self._identity = identity

    def raw(self, recipient: Recipient) -> bytes:
        raw = to_bytes(self._render(recipient))
        if not self._identity:
            return raw
        return ensure_identity(raw, identity_domain(raw), seed=raw + recipient.address.encode())

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
    *,
    identity: bool = True,
) -> Content:
    """Accept what library users naturally have; add Message-ID/Date to it unless
    ``identity=False`` (a :class:`Content` is taken as it is)."""
    if isinstance(message, (bytes, str, EmailMessage)):
        return StaticContent(message, identity=identity)
    if isinstance(message, Content):
        return message
    return CallableContent(message, identity=identity)


def identity_domain(message: bytes) -> str:
    """The domain for a Message-ID: the From address's, else this host's name."""
    head, _ = split_message(message)
    m = _FROM_DOMAIN.search(head)
    if m:
        return m.group(1).decode("ascii").lower().strip(".")
    host = socket.gethostname()
    return host if re.fullmatch(r"[A-Za-z0-9.-]+", host) else "localhost"


class _Identity(NamedTuple):
    """Adds Message-ID/Date to a template's renderings (see TemplateContent)."""

    domain: str
    #: the headers every rendering lacks, or None when only a rendering can tell
    missing: tuple[str, ...] | None

    def add(self, message: bytes, address: str) -> bytes:
        seed = message + address.encode()
        if self.missing is None:
            return ensure_identity(message, self.domain, seed=seed)
        if not self.missing:
            return message
        return identity_lines(
            self.domain, seed,
            message_id_line="Message-ID" in self.missing, date_line="Date" in self.missing,
        ) + message


_HEADER_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")  # RFC 5322 §3.6.8 field name, then ":"
MESSAGE_SHAPE = (
    "a message file is RFC 5322: header lines such as 'From: news@example.org' and "
    "'Subject: Hello', then one empty line, then the body"
)


def message_problem(message: bytes) -> str | None:
    """Why ``message`` cannot be sent as it is, or ``None``.

    NUL is forbidden in SMTP data (RFC 5321 §4.5.2 and RFC 5322 §2.3); a file
    without a header block would go out with its text read as header lines.
    """
    if b"\0" in message:
        where = message[: message.index(b"\0")].count(b"\n") + 1
        return (f"contains a NUL byte (line {where}), which mail cannot carry; "
                "attach binary content as a base64 MIME part")
    head, _ = split_message(message)
    lines = head.splitlines()
    if not lines or not _HEADER_FIELD.match(lines[0]):
        return f"does not start with a header line; {MESSAGE_SHAPE}"
    for number, line in enumerate(lines, 1):
        if not (_HEADER_FIELD.match(line) or line[:1] in (b" ", b"\t")):
            return f"line {number} is neither a header nor a continuation; {MESSAGE_SHAPE}"
    return None
