"""What turns a message into newsletter-grade mail: identity headers, one-click
unsubscribe, DKIM -- applied after rendering, signing last.

Identical content is decorated and signed once; personalised content (or a
per-recipient unsubscribe URL) once per recipient.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from .dkim_signing import DKIMSigner
from .headers import (
    add_headers,
    ensure_identity,
    has_header,
    header_line,
    identity_lines,
    message_id,
    unsubscribe_headers,
)
from .message import Content, Recipient, TemplateContent, TemplateValueError
from .protocol.data import PreparedMessage
from .reencode import prepare


@dataclass(frozen=True)
class Decorations:
    """Options of a newsletter run; all optional."""

    #: add Message-ID / Date when missing, Message-ID in this domain
    identity_domain: str | None = None
    #: ``https://.../unsubscribe?u=${email}``: per-recipient when it has placeholders
    unsubscribe_url: str | None = None
    unsubscribe_mailto: str | None = None
    dkim: DKIMSigner | None = None


class DecoratedContent:
    """Wraps a content; the wrapped rendering is decorated, then signed."""

    def __init__(self, inner: Content, decorations: Decorations) -> None:
        self.inner = inner
        self.decorations = decorations
        url = decorations.unsubscribe_url
        self._url = string.Template(url) if url else None
        per_recipient_url = bool(self._url and self._url.get_identifiers())
        self.personalised = inner.personalised or per_recipient_url
        self._shared: PreparedMessage | None = None
        # A template that only needs Message-ID/Date: which of them it lacks is
        # known before rendering, so each message is just those lines + the
        # rendering (no per-message header parsing: ~40% of decorating one)
        self._identity_only: tuple[str, ...] | None = None
        if (
            decorations.identity_domain
            and self._url is None
            and decorations.dkim is None
            and isinstance(inner, TemplateContent)
            and (head := inner.fixed_header_block()) is not None
        ):
            self._identity_only = tuple(
                name for name in ("Message-ID", "Date") if not has_header(head, name)
            )
            # identity_lines() writes the Message-ID line without header_line()'s
            # check; the domain is its only outside part, so it is checked here, once
            header_line("Message-ID", message_id(decorations.identity_domain))

    def render(self, recipient: Recipient) -> PreparedMessage:
        if not self.personalised:
            if self._shared is None:
                self._shared = self._decorate(recipient)
            return self._shared
        return self._decorate(recipient)

    def _decorate(self, recipient: Recipient) -> PreparedMessage:
        d = self.decorations
        message = self.inner.raw(recipient)
        if self._identity_only is not None and d.identity_domain:
            missing = self._identity_only
            prefix = identity_lines(
                d.identity_domain,
                message + recipient.address.encode(),
                message_id_line="Message-ID" in missing,
                date_line="Date" in missing,
            )
            return prepare(prefix + message)
        if d.identity_domain:
            seed = message if not self.personalised else message + recipient.address.encode()
            message = ensure_identity(message, d.identity_domain, seed=seed)
        if self._url is not None:
            values = {"email": recipient.address, **(recipient.variables or {})}
            try:
                url = self._url.substitute(values)
            except KeyError as exc:
                missing = exc.args[0]
                raise TemplateValueError(f"unsubscribe URL variable {missing!r} missing") from exc
            message = add_headers(message, unsubscribe_headers(url, d.unsubscribe_mailto))
        if d.dkim is not None:
            message = d.dkim.sign(message)
        return prepare(message)

    def raw(self, recipient: Recipient) -> bytes:
        return self.render(recipient).normalized
