"""One-click unsubscribe (RFC 8058) over real HTTP: hypercorn on trio on
127.0.0.1, httpx as the mail client.  A valid token suppresses, a forged one is
refused (403), a malformed request is refused (400), GET never unsubscribes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trio

from bulkmail.suppression import SuppressionStore
from bulkmail.unsubscribe import MAX_BODY, UnsubscribeApp, serve
from bulkmail.unsubscribe_token import SecretError, key_from_env, sign, unsubscribe_url, verify

KEY = b"test secret of the sender, 32 ch"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def test_tokens_bind_address_list_and_key() -> None:
    token = sign(KEY, "alice@example.com", "news")
    assert "=" not in token and "+" not in token and "/" not in token  # urlsafe, unpadded
    assert verify(KEY, "alice@example.com", "news", token)
    assert not verify(KEY, "bob@example.com", "news", token)
    assert not verify(KEY, "alice@example.com", "offers", token)
    assert not verify(b"another key of the same length!!", "alice@example.com", "news", token)
    assert not verify(KEY, "alice@example.com", "news", token[:-1])
    # the list/address boundary is part of what is signed
    assert sign(KEY, "b@x.org", "a") != sign(KEY, "@x.org", "ab")


def test_the_url_carries_what_the_server_verifies() -> None:
    url = unsubscribe_url("https://news.example/u?src=mail", KEY, "zoë+tag@example.com", "n 1")
    query = parse_qs(urlsplit(url).query)
    assert url.startswith("https://news.example/u?src=mail&u=zo%C3%AB%2Btag@example.com&")
    assert query["u"] == ["zoë+tag@example.com"] and query["l"] == ["n 1"]
    assert verify(KEY, "zoë+tag@example.com", "n 1", query["t"][0])


def test_the_secret_comes_from_the_environment() -> None:
    assert key_from_env("S", {"S": "x" * 16}) == b"x" * 16
    with pytest.raises(SecretError, match=r"S .* is not set"):
        key_from_env("S", {})
    with pytest.raises(SecretError, match="at least 16"):
        key_from_env("S", {"S": "short"})


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, SuppressionStore]]:
    store = SuppressionStore(tmp_path / "s.sqlite")
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, UnsubscribeApp(store, KEY), "127.0.0.1:0")
        yield binds[0], store
        nursery.cancel_scope.cancel()
    store.close()


async def test_a_valid_one_click_post_suppresses(server: tuple[str, SuppressionStore]) -> None:
    base, store = server
    url = unsubscribe_url(base + "/unsubscribe", KEY, "Alice@Example.com", "news")
    async with httpx.AsyncClient() as client:
        response = await client.post(url, data=ONE_CLICK)
        assert response.status_code == 200, response.text
        assert response.text == "Alice@Example.com is unsubscribed from news\n"
        assert (await client.post(url, data=ONE_CLICK)).status_code == 200  # again: fine
    entry = store.get("Alice@example.com")
    assert entry is not None
    assert (entry.reason, entry.source) == ("unsubscribe", "one-click unsubscribe from news")


async def test_a_multipart_one_click_post_suppresses(
    server: tuple[str, SuppressionStore],
) -> None:
    base, store = server
    url = unsubscribe_url(base + "/", KEY, "bob@example.com", "news")
    async with httpx.AsyncClient() as client:
        response = await client.post(url, data=ONE_CLICK, files={"x": ("x.txt", b"-")})
    assert response.status_code == 200, response.text
    assert "bob@example.com" in store


async def test_a_forged_token_is_refused(server: tuple[str, SuppressionStore]) -> None:
    base, store = server
    # alice's valid token, replayed for bob
    token = sign(KEY, "alice@example.com", "news")
    forged = f"{base}/u?u=bob@example.com&l=news&t={token}"
    other_key = unsubscribe_url(base + "/u", b"x" * 32, "carol@example.com", "news")
    async with httpx.AsyncClient() as client:
        for url in (forged, other_key):
            response = await client.post(url, data=ONE_CLICK)
            assert response.status_code == 403
            assert (await client.get(url)).status_code == 403
    assert len(store) == 0


@pytest.mark.parametrize(
    ("query", "body", "why"),
    [
        ("u=alice@example.com&l=news", ONE_CLICK, "exactly one non-empty 't'"),
        ("u=alice@example.com&u=bob@example.com&l=news&t=T", ONE_CLICK, "exactly one"),
        ("u=not-an-address&l=news&t=T", ONE_CLICK, "not an address"),
        ("u=%FF@example.com&l=news&t=T", ONE_CLICK, "not valid UTF-8"),
        ("VALID", {"List-Unsubscribe": "Yes"}, "List-Unsubscribe=One-Click"),
        ("VALID", {}, "List-Unsubscribe=One-Click"),
        ("VALID", {"List-Unsubscribe": "One-Click", "pad": "x" * MAX_BODY}, "exceeds"),
    ],
)
async def test_a_malformed_request_is_refused(
    server: tuple[str, SuppressionStore], query: str, body: dict[str, str], why: str
) -> None:
    base, store = server
    if query == "VALID":
        query = urlsplit(unsubscribe_url("", KEY, "alice@example.com", "news")).query
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{base}/u?{query}", data=body)
    assert response.status_code == 400
    assert why in response.text
    assert len(store) == 0


async def test_a_raw_body_and_other_methods_are_refused(
    server: tuple[str, SuppressionStore],
) -> None:
    base, store = server
    url = unsubscribe_url(base + "/u", KEY, "alice@example.com", "news")
    async with httpx.AsyncClient() as client:
        raw = await client.post(url, content=b"List-Unsubscribe=One-Click",
                                headers={"content-type": "text/plain"})
        assert raw.status_code == 400
        put = await client.put(url, data=ONE_CLICK)
        assert put.status_code == 405 and put.headers["allow"] == "GET, POST"
    assert len(store) == 0


async def test_get_shows_a_confirmation_and_never_unsubscribes(
    server: tuple[str, SuppressionStore],
) -> None:
    base, store = server
    url = unsubscribe_url(base + "/u", KEY, "alice@example.com", "<news>")
    async with httpx.AsyncClient() as client:
        page = await client.get(url)
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "alice@example.com from &lt;news&gt;" in page.text
    assert 'name="List-Unsubscribe" value="One-Click"' in page.text
    assert len(store) == 0


def test_the_unsubscribe_server_command(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    env = {**os.environ, "UNSUB_SECRET": KEY.decode()}
    process = subprocess.Popen(
        [sys.executable, "-m", "bulkmail", "unsubscribe-server", "--store", str(db),
         "--listen", "127.0.0.1:0", "--secret-env", "UNSUB_SECRET"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("bulkmail unsubscribe-server: listening on http://127.0.0.1:")
        base = line.split()[-1]
        url = unsubscribe_url(base + "/unsubscribe", KEY, "dave@example.com", "news")
        assert httpx.post(url, data=ONE_CLICK).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    with SuppressionStore(db) as store:
        assert "dave@example.com" in store


def test_the_command_refuses_a_missing_secret_or_a_bad_listen(tmp_path: Path) -> None:
    def command(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "NO_SUCH_SECRET"}
        return subprocess.run(
            [sys.executable, "-m", "bulkmail", "unsubscribe-server",
             "--store", str(tmp_path / "s.sqlite"), *args],
            capture_output=True, text=True, check=False, env=env, timeout=30)

    missing = command("--secret-env", "NO_SUCH_SECRET")
    assert missing.returncode == 2
    assert "NO_SUCH_SECRET (the unsubscribe secret) is not set" in missing.stderr
    bad = command("--secret-env", "PATH", "--listen", "nowhere")
    assert bad.returncode == 2 and "--listen wants HOST:PORT" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        in_use = command("--secret-env", "PATH", "--listen", listen)
    assert in_use.returncode == 2
    assert in_use.stderr == f"bulkmail unsubscribe-server: cannot listen on {listen}: " \
        "Address already in use\n"
