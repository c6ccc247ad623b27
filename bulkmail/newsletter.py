"""What turns a message into newsletter-grade mail: identity headers, one-click
unsubscribe, DKIM -- applied after rendering, signing last.

Identical content is decorated and signed once; personalised content (or a
per-recipient unsubscribe URL) once per recipient -- by the same code path,
which signs the bytes that go on the wire: the message is normalised and its
long lines re-encoded *before* the signature is computed.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from urllib.parse import quote

from .dkim_signing import DKIMError, DKIMSigner
from .headers import (
    add_headers,
    ensure_identity,
    has_header,
    header_line,
    identity_lines,
    message_id,
    split_message,
    unsubscribe_headers,
)
from .message import Content, Recipient, StaticContent, TemplateContent, TemplateValueError
from .message_ids import message_id_seed
from .protocol.data import PreparedMessage
from .reencode import prepare
from .unsubscribe_token import unsubscribe_url


@dataclass(frozen=True)
class Decorations:
    """Options of a newsletter run; all optional."""

    #: add Message-ID / Date when missing, Message-ID in this domain
    identity_domain: str | None = None
    #: ``https://.../unsubscribe?u=${email}``: per-recipient when it has placeholders;
    #: each substituted value is percent-encoded (RFC 3986)
    unsubscribe_url: str | None = None
    #: alone, the RFC 2369 mailto form alone (one-click needs the https URL)
    unsubscribe_mailto: str | None = None
    dkim: DKIMSigner | None = None
    #: with a secret, each recipient's unsubscribe URL gets ``u=..&l=..&t=..``
    #: appended: the signed query ``bulkmail.unsubscribe`` verifies
    #: (:func:`bulkmail.unsubscribe_token.key_from_env` reads it)
    unsubscribe_secret: bytes | None = None
    #: the list the token names (what the unsubscribe server records)
    unsubscribe_list: str = "default"
    #: with a key, a personalised message's Message-ID is derived from (key,
    #: address) alone, so the job's journal maps it back (:mod:`bulkmail.message_ids`)
    message_id_key: bytes | None = None


class DecoratedContent:
    """Wraps a content; the wrapped rendering is decorated, then signed."""

    def __init__(self, inner: Content, decorations: Decorations) -> None:
        self.inner = inner
        self.decorations = decorations
        url = decorations.unsubscribe_url
        self._url = string.Template(url) if url else None
        self._unsubscribe = bool(url or decorations.unsubscribe_mailto)
        if decorations.unsubscribe_secret is not None and not url:
            raise ValueError("an unsubscribe secret needs an unsubscribe URL to sign")
        per_recipient_url = bool(self._url and self._url.get_identifiers()) or (
            decorations.unsubscribe_secret is not None)
        if self._unsubscribe:
            # the URL's fixed parts are checked now, with stand-in values
            sample = {name: "x" for name in self._url.get_identifiers()} if self._url else {}
            unsubscribe_headers(
                self._url.safe_substitute(sample) if self._url else None,
                decorations.unsubscribe_mailto,
            )
        self._dkim = decorations.dkim
        if self._dkim is not None:
            self._dkim.check()  # a key dkimpy refuses fails now, not per recipient
            if self._unsubscribe:
                # RFC 8058 §4: the signature must cover both unsubscribe headers
                self._dkim = self._dkim.covering(("List-Unsubscribe", "List-Unsubscribe-Post"))
            head = _fixed_head(inner)
            if head is not None and not has_header(head, "From"):
                raise DKIMError("DKIM needs a From header to sign (RFC 6376 §5.4)")
        self.personalised = inner.personalised or per_recipient_url
        self._shared: PreparedMessage | None = None
        # A template that only needs Message-ID/Date: which of them it lacks is
        # known before rendering, so each message is just those lines + the
        # rendering (no per-message header parsing: ~40% of decorating one)
        self._identity_only: tuple[str, ...] | None = None
        if (
            decorations.identity_domain
            and not self._unsubscribe
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
                self._seed(message, recipient),
                message_id_line="Message-ID" in missing,
                date_line="Date" in missing,
            )
            return prepare(prefix + message)
        if d.identity_domain:
            message = ensure_identity(message, d.identity_domain,
                                      seed=self._seed(message, recipient))
        if self._unsubscribe:
            url = self._unsubscribe_url(recipient)
            message = add_headers(message, unsubscribe_headers(url, d.unsubscribe_mailto))
        if self._dkim is not None:
            # sign what goes on the wire: CRLF, long lines already re-encoded
            wire = prepare(message).normalized
            return PreparedMessage.from_bytes(self._dkim.sign(wire))
        return prepare(message)

    def _seed(self, message: bytes, recipient: Recipient) -> bytes:
        """What the Message-ID is derived from: the same on every resend."""
        if not self.personalised:
            return message
        key = self.decorations.message_id_key
        if key is not None:
            return message_id_seed(key, recipient.address)
        return message + recipient.address.encode()

    def _unsubscribe_url(self, recipient: Recipient) -> str | None:
        """The URL with every value percent-encoded: a value is data, never URL syntax."""
        if self._url is None:
            return None
        values = {"email": recipient.address, **(recipient.variables or {})}
        try:
            # "@" is a pchar (RFC 3986 §3.3): addresses stay readable in the URL
            url = self._url.substitute({k: quote(v, safe="@") for k, v in values.items()})
        except KeyError as exc:
            missing = exc.args[0]
            raise TemplateValueError(f"unsubscribe URL variable {missing!r} missing") from exc
        secret = self.decorations.unsubscribe_secret
        if secret is None:
            return url
        return unsubscribe_url(url, secret, recipient.address, self.decorations.unsubscribe_list)

    def raw(self, recipient: Recipient) -> bytes:
        return self.render(recipient).normalized


def _fixed_head(content: Content) -> bytes | None:
    """The header block every rendering of ``content`` has, when that is known."""
    if isinstance(content, StaticContent):
        return split_message(content.prepared.normalized)[0]
    if isinstance(content, TemplateContent):
        return content.fixed_header_block()
    return None
