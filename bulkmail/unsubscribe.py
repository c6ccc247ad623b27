"""The one-click unsubscribe endpoint (RFC 8058), as an ASGI app served on trio.

A mail client that honours ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``
POSTs ``List-Unsubscribe=One-Click`` to the List-Unsubscribe URL.  The URL's
query names the address and list and carries their token
(:mod:`bulkmail.unsubscribe_token`); a valid one adds the address to the
suppression store with reason ``unsubscribe``.

* ``POST`` with a valid token and the one-click body: 200, suppressed (again: 200).
* a token that does not match the address and list: 403, nothing stored.
* anything malformed (missing or repeated parameters, not an address, another
  body, an oversized body): 400.
* ``GET`` never unsubscribes (link scanners follow links, RFC 8058 §3.2): with a
  valid token it shows a page whose button makes the POST.

Serve it with :func:`serve` (hypercorn on trio; ``pip install bulkmail[unsubscribe]``)
or ``bulkmail unsubscribe-server``.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable, MutableMapping
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qs

import trio

from .suppression import SuppressionError, Suppressions, normalise
from .unsubscribe_token import verify

__all__ = ["MAX_BODY", "UnsubscribeApp", "serve"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: the one-click body is 26 octets; a multipart one a few hundred
MAX_BODY = 8192


class BadRequest(Exception):
    """The request is malformed: answered 400 with this message."""


class UnsubscribeApp:
    """ASGI app over a suppression store; ``key`` is the tokens' secret."""

    def __init__(self, store: Suppressions, key: bytes) -> None:
        self.store = store
        self.key = key
        self._lock = trio.Lock()  # one store call at a time, off the event loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method = scope["method"]
        if method not in ("GET", "POST"):
            await _respond(send, 405, "only GET and POST\n", [(b"allow", b"GET, POST")])
            return
        try:
            address, list_id, token = _parameters(scope.get("query_string", b""))
            if method == "POST":
                await _check_one_click(scope, receive)
        except BadRequest as exc:
            await _respond(send, 400, f"bad request: {exc}\n")
            return
        if not verify(self.key, address, list_id, token):
            await _respond(send, 403, "this unsubscribe link is not valid\n")
            return
        if method == "GET":
            await _respond(send, 200, _confirm_page(scope, address, list_id),
                           content_type=b"text/html; charset=utf-8")
            return
        try:
            async with self._lock:
                await trio.to_thread.run_sync(self._suppress, address, list_id)
        except SuppressionError:
            await _respond(send, 503, "the unsubscribe could not be stored; try again\n",
                           [(b"retry-after", b"60")])
            return
        await _respond(send, 200, f"{address} is unsubscribed from {list_id}\n")

    def _suppress(self, address: str, list_id: str) -> None:
        self.store.add(address, "unsubscribe", source=f"one-click unsubscribe from {list_id}")


def _parameters(query_string: bytes) -> tuple[str, str, str]:
    """``u`` (the address, checked), ``l`` (the list) and ``t`` (the token), once each."""
    try:
        query = parse_qs(query_string.decode("ascii"), keep_blank_values=True,
                         encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("the query is not valid UTF-8 percent-encoding") from exc
    values = []
    for name in ("u", "l", "t"):
        got = query.get(name, [])
        if len(got) != 1 or not got[0]:
            raise BadRequest(f"the query needs exactly one non-empty {name!r}")
        values.append(got[0])
    address, list_id, token = values
    try:
        normalise(address)
    except SuppressionError as exc:
        raise BadRequest(str(exc)) from exc
    return address, list_id, token


async def _check_one_click(scope: Scope, receive: Receive) -> None:
    """The body must say ``List-Unsubscribe=One-Click`` (RFC 8058 §3.1), either
    form-encoded or as ``multipart/form-data``."""
    body = await _body(receive)
    content_type = _header(scope, b"content-type").lower()
    if content_type.startswith("application/x-www-form-urlencoded"):
        try:
            form = parse_qs(body.decode("ascii"), keep_blank_values=True)
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest("the form body is not ASCII") from exc
        values = form.get("List-Unsubscribe", [])
    elif content_type.startswith("multipart/form-data"):
        values = _multipart_values(content_type, body, "List-Unsubscribe")
    else:
        raise BadRequest("the body must be a form with List-Unsubscribe=One-Click")
    if values != ["One-Click"]:
        raise BadRequest("the body must be List-Unsubscribe=One-Click")


async def _body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise BadRequest(f"the body exceeds {MAX_BODY} octets")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _multipart_values(content_type: str, body: bytes, name: str) -> list[str]:
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise BadRequest("the multipart body cannot be read")
    values = []
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == name:
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                values.append(payload.decode("ascii", "replace").strip())
    return values


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


def _confirm_page(scope: Scope, address: str, list_id: str) -> str:
    action = scope.get("path", "/") + "?" + bytes(scope.get("query_string", b"")).decode("ascii")
    return (
        "<!doctype html><meta charset=utf-8><title>Unsubscribe</title>"
        f"<p>Unsubscribe {html.escape(address)} from {html.escape(list_id)}?</p>"
        f'<form method=post action="{html.escape(action)}">'
        '<input type=hidden name="List-Unsubscribe" value="One-Click">'
        "<button type=submit>Unsubscribe</button></form>\n"
    )


async def _respond(
    send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None,
    *, content_type: bytes = b"text/plain; charset=utf-8",
) -> None:
    body = text.encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"), *(headers or [])],
    })
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def serve(
    app: UnsubscribeApp, listen: str, *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``listen`` (``host:port``) with hypercorn until cancelled;
    ``nursery.start`` returns the bound URLs (port 0 picks a free port)."""
    from hypercorn.config import Config  # the optional extra "unsubscribe"
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = [listen]
    config.accesslog = None
    config.errorlog = None
    await hypercorn_serve(app, config, task_status=task_status)  # type: ignore[arg-type]
