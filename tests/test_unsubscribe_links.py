"""The newsletter's signed List-Unsubscribe URL works against the unsubscribe
server: the link in the rendered message suppresses its own recipient only."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import trio

from bulkmail.message import Recipient, StaticContent
from bulkmail.newsletter import DecoratedContent, Decorations
from bulkmail.suppression import SuppressionStore
from bulkmail.unsubscribe import UnsubscribeApp, serve
from bulkmail.unsubscribe_token import sign

SECRET = b"the sender's unsubscribe secret!"
MESSAGE = b"From: news@sender.test\r\nSubject: news\r\n\r\nbody\r\n"


def link(content: DecoratedContent, address: str) -> str:
    wire = content.render(Recipient(address)).normalized
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in wire
    found = re.search(rb"List-Unsubscribe: <([^>]+)>", wire)
    assert found is not None
    return found.group(1).decode()


async def test_the_rendered_link_unsubscribes_its_recipient(tmp_path: Path) -> None:
    store = SuppressionStore(tmp_path / "s.sqlite")
    async with trio.open_nursery() as nursery:
        base = (await nursery.start(serve, UnsubscribeApp(store, SECRET), "127.0.0.1:0"))[0]
        content = DecoratedContent(StaticContent(MESSAGE), Decorations(
            unsubscribe_url="https://news.sender.test/unsubscribe?src=nov",
            unsubscribe_secret=SECRET, unsubscribe_list="november"))
        assert content.personalised  # each recipient's link is its own
        public = link(content, "alice+news@example.test")
        token = sign(SECRET, "alice+news@example.test", "november")
        assert public == ("https://news.sender.test/unsubscribe?src=nov"
                          f"&u=alice%2Bnews@example.test&l=november&t={token}")
        # the https front end (a TLS-terminating proxy) passes path and query on
        alice = public.replace("https://news.sender.test", base)
        async with httpx.AsyncClient() as client:
            form = {"List-Unsubscribe": "One-Click"}
            assert (await client.post(alice, data=form)).status_code == 200
            # alice's token does not unsubscribe bob
            forged = alice.replace("alice%2Bnews", "bob")
            assert (await client.post(forged, data=form)).status_code == 403
        nursery.cancel_scope.cancel()
    assert [e.address for e in store.entries()] == ["alice+news@example.test"]
    store.close()


def test_a_secret_without_a_url_is_refused() -> None:
    with pytest.raises(ValueError, match="needs an unsubscribe URL"):
        DecoratedContent(StaticContent(MESSAGE), Decorations(unsubscribe_secret=SECRET))
