"""A session's byte stream: TCP (the lean stream while it is plaintext) and TLS.

Split from :mod:`bulkmail.session`, which drives the SMTP dialogue over
whatever stream this gives it.  Failures come back as replies: a connection
that cannot be opened is :class:`~bulkmail.errors.SMTPConnectError`; a TLS
handshake or peer check that fails is :class:`TLSFailed`, which the session
turns into its own ending.
"""

from __future__ import annotations

import ssl

import trio

from .config import SessionConfig
from .errors import SMTPConnectError, os_error_text, synthetic_reply
from .lean_stream import lean, tls_transport
from .protocol.replies import Reply

__all__ = ["TLSFailed", "open_stream", "start_tls"]


class TLSFailed(Exception):
    """The TLS handshake failed, or the peer's certificate was refused."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


async def open_stream(config: SessionConfig, address: str | None = None) -> trio.abc.Stream:
    """TCP to ``address`` (or ``config.host``) within the connect timeout."""
    target = address or config.host
    try:
        with trio.fail_after(config.timeouts.connect):
            stream: trio.abc.Stream = await trio.open_tcp_stream(
                target, config.port, local_address=config.source_address
            )
    except (OSError, trio.TooSlowError) as exc:
        where = f"{target}:{config.port}"
        why = (f"no answer within {config.timeouts.connect:g}s"
               if isinstance(exc, trio.TooSlowError) else os_error_text(exc))
        reply = synthetic_reply(451, "4.4.1", f"cannot connect to {where}: {why}")
        raise SMTPConnectError(reply, host=target) from exc
    if config.secure != "tls" and isinstance(stream, trio.SocketStream):
        stream = lean(stream) or stream  # plaintext until STARTTLS, if ever
    return stream


async def start_tls(
    stream: trio.abc.Stream, config: SessionConfig
) -> tuple[trio.SSLStream[trio.abc.Stream], bool]:
    """TLS over ``stream``: the TLS stream, and whether the peer was verified
    (by the context, or by ``config.tls_verify``)."""
    context = config.tls_context()
    verify = config.tls_verify
    sni = context.check_hostname or verify is not None
    ssl_stream = trio.SSLStream(
        tls_transport(stream), context, server_hostname=config.host if sni else None,
        https_compatible=True,
    )
    try:
        with trio.fail_after(config.timeouts.tls):
            await ssl_stream.do_handshake()
    except (trio.BrokenResourceError, trio.TooSlowError, OSError) as exc:
        cause = exc.__cause__ or exc
        raise TLSFailed(synthetic_reply(421, "4.7.5", f"TLS handshake failed: {cause}")) from exc
    if verify is not None:
        try:
            verify(ssl_stream)
        except Exception as exc:  # the verifier's refusal: no mail over this session
            raise TLSFailed(synthetic_reply(421, "4.7.5", f"TLS peer refused: {exc}")) from exc
    return ssl_stream, verify is not None or context.verify_mode == ssl.CERT_REQUIRED
