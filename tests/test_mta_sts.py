"""MTA-STS pieces alone: the TXT record, the policy file, MX patterns, the
fetch (over real HTTPS on loopback) and the durable cache."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio
import trustme

from bulkmail.tls_policy.cache import PolicyCache
from bulkmail.tls_policy.mta_sts import (
    FetchConfig,
    PolicyError,
    PolicyFetchError,
    fetch_policy,
    mx_matches,
    parse_policy,
    parse_txt,
)

from .tlspolicy_servers import PolicyServer, Response

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\nmx: *.mx.example.test\r\n" \
         "max_age: 604800\r\n"


def test_txt_record_gives_the_id_of_exactly_one_stsv1_record() -> None:
    assert parse_txt(["v=STSv1; id=20160831085700Z;"]) == "20160831085700Z"
    assert parse_txt(["something else", "v=STSv1; id=abc"]) == "abc"
    assert parse_txt(["v=STSv1; id=a;", "v=STSv1; id=b;"]) is None  # two: no policy
    assert parse_txt(["v=STSv1; id=has-dash;"]) is None
    assert parse_txt(["v=STSv2; id=a;"]) is None
    assert parse_txt([]) is None


def test_policy_fields_are_parsed() -> None:
    policy = parse_policy(POLICY)
    assert policy.mode == "enforce" and policy.max_age == 604800
    assert policy.mx == ("mail.example.test", "*.mx.example.test")
    assert policy.lines[0] == "version: STSv1"


@pytest.mark.parametrize("text", [
    "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n",
    "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
    "version: STSv1\nmode: enforce\nmax_age: 1\n",  # no mx
    "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 99999999\n",  # over a year
    "version: STSv1\nmode: enforce\nmx: mail.*.test\nmax_age: 1\n",  # wildcard not leftmost
    "version: STSv1\nmode: enforce\nmx: a.test\n",  # no max_age
    "<html>oops</html>",
])
def test_invalid_policies_are_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(text)


def test_mode_none_needs_no_mx() -> None:
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 10\n").mode == "none"


def test_wildcard_matches_exactly_one_leftmost_label() -> None:
    assert mx_matches("*.mx.example.test", "a.mx.example.test")
    assert mx_matches("*.mx.example.test", "A.MX.Example.Test.")
    assert not mx_matches("*.mx.example.test", "a.b.mx.example.test")
    assert not mx_matches("*.mx.example.test", "mx.example.test")
    assert mx_matches("mail.example.test", "mail.example.test")
    assert not mx_matches("mail.example.test", "xmail.example.test")


@pytest.fixture
def https() -> tuple[trustme.CA, ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mta-sts.example.test").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return ca, server, client


async def fetch_from(server: PolicyServer, client: ssl.SSLContext, **kwargs: object) -> object:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        config = FetchConfig(ssl_context=client, timeout=5.0,
                             connect_to={"mta-sts.example.test": ("127.0.0.1", port)},
                             **kwargs)  # type: ignore[arg-type]
        try:
            outcome: object = await fetch_policy("example.test", config)
        except PolicyFetchError as exc:
            outcome = exc
        nursery.cancel_scope.cancel()
    if isinstance(outcome, PolicyFetchError):
        raise outcome  # outside the nursery: not wrapped in an exception group
    return outcome


async def test_fetch_gets_the_policy_over_verified_https(https: tuple) -> None:  # type: ignore[type-arg]
    _ca, server_ctx, client = https
    server = PolicyServer(server_ctx)
    server.policy("example.test", POLICY)
    policy = await fetch_from(server, client)
    assert policy == parse_policy(POLICY)
    assert server.requests == [("mta-sts.example.test", "/.well-known/mta-sts.txt")]


@pytest.mark.parametrize(("response", "why"), [
    (Response(301, b"", {"Location": "https://elsewhere.test/", "Content-Type": "text/plain"}),
     "HTTP 301"),
    (Response(404, b"no"), "HTTP 404"),
    (Response(200, POLICY.encode(), {"Content-Type": "text/html"}), "text/html"),
    (Response(200, POLICY.encode() + b"x" * 70_000), "larger than"),
    (Response(200, b"version: STSv1\nmode: nonsense\n"), "mode"),
])
async def test_fetch_errors(https: tuple, response: Response, why: str) -> None:  # type: ignore[type-arg]
    _ca, server_ctx, client = https
    server = PolicyServer(server_ctx)
    server.routes["mta-sts.example.test", "/.well-known/mta-sts.txt"] = response
    with pytest.raises(PolicyFetchError, match=why):
        await fetch_from(server, client)
    assert len(server.requests) == 1  # a redirect is never followed


async def test_fetch_refuses_a_certificate_it_cannot_verify(https: tuple) -> None:  # type: ignore[type-arg]
    _ca, server_ctx, _client = https
    server = PolicyServer(server_ctx)
    server.policy("example.test", POLICY)
    stranger = ssl.create_default_context()
    trustme.CA().configure_trust(stranger)  # trusts some other CA only
    with pytest.raises(PolicyFetchError, match="ConnectError"):
        await fetch_from(server, stranger)
    assert server.requests == []


async def test_fetch_gives_up_at_its_deadline(https: tuple) -> None:  # type: ignore[type-arg]
    _ca, _server_ctx, client = https
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")  # accepts, never answers
    port = listeners[0].socket.getsockname()[1]
    config = FetchConfig(ssl_context=client, timeout=0.3,
                         connect_to={"mta-sts.example.test": ("127.0.0.1", port)})
    with pytest.raises(PolicyFetchError, match=r"no policy within|Timeout"):
        await fetch_policy("example.test", config)
    for listener in listeners:
        await listener.aclose()


def test_cache_survives_a_restart_and_expires(tmp_path: Path) -> None:
    now = [1000.0]
    path = tmp_path / "cache.json"
    cache = PolicyCache(path, clock=lambda: now[0])
    cache.put("example.test", "id1", parse_policy(POLICY.replace("604800", "100")))
    again = PolicyCache(path, clock=lambda: now[0])
    entry = again.get("example.test")
    assert entry is not None and entry.policy_id == "id1" and entry.policy.mode == "enforce"
    now[0] += 101
    assert again.get("example.test") is None  # past max_age


def test_an_unreadable_cache_is_an_empty_one(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    path.write_text("{not json")
    assert PolicyCache(path).get("example.test") is None
