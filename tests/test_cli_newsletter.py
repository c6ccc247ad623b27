"""``bulkmail send`` newsletter options as a user runs them (a subprocess against
the sink): DKIM keys checked before anything is sent, the unsubscribe headers
always signed, unsubscribe URLs that a CSV cell cannot rewrite."""

from __future__ import annotations

import base64
import sys
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from bulkmail.sink import Sink, SinkConfig

MESSAGE = b"From: news@sender.test\nSubject: hi ${name}\n\nhello ${name}\n"


async def send(tmp_path: Path, *options: str, csv: str = "email,name\nann@example.test,Ann\n",
               message: bytes = MESSAGE) -> tuple[int, str, list[bytes]]:
    (tmp_path / "list.csv").write_text(csv, encoding="utf-8")
    (tmp_path / "msg.eml").write_bytes(message)
    async with trio.open_nursery() as nursery:
        sink = Sink(SinkConfig(record_messages=True))
        port = await nursery.start(sink.serve)
        proc = await trio.run_process(
            [sys.executable, "-m", "bulkmail", "send", "--sender", "bounces@sender.test",
             "--recipients", str(tmp_path / "list.csv"), "--message", str(tmp_path / "msg.eml"),
             "--relay", f"127.0.0.1:{port}", "--tls", "none", "--quiet",
             "--journal", str(tmp_path / "job.sqlite"), *options],
            capture_stderr=True, check=False, cwd=tmp_path)
        nursery.cancel_scope.cancel()
    return proc.returncode, proc.stderr.decode(), [m.content for m in sink.messages]


def parsed(raw: bytes) -> Message:
    return message_from_bytes(raw)


def signed_headers(raw: bytes) -> list[str]:
    signature = "".join(str(parsed(raw)["DKIM-Signature"]).split())
    tags = dict(t.split("=", 1) for t in signature.split(";") if "=" in t)
    return [h.lower() for h in tags["h"].split(":")]


def write_key(path: Path, kind: str) -> Path:
    if kind == "ed25519-seed":
        seed = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption())
        path.write_bytes(base64.b64encode(seed) + b"\n")
        return path
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    key = ed25519.Ed25519PrivateKey.generate() if kind.startswith("ed25519") else \
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fmt = serialization.PrivateFormat.TraditionalOpenSSL if kind == "rsa-pkcs1" \
        else serialization.PrivateFormat.PKCS8
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt,
                                       serialization.NoEncryption()))
    return path


@pytest.mark.parametrize(("kind", "algorithm"), [
    ("rsa-pkcs8", "rsa-sha256"), ("rsa-pkcs1", "rsa-sha256"),
    ("ed25519-pkcs8", "ed25519-sha256"), ("ed25519-seed", "ed25519-sha256"),
])
async def test_the_key_formats_people_have_sign(kind: str, algorithm: str, tmp_path: Path) -> None:
    key = write_key(tmp_path / "key", kind)
    code, err, messages = await send(tmp_path, "--dkim-selector", "s", "--dkim-key", str(key))
    assert code == 0, err
    assert f"a={algorithm}" in "".join(str(parsed(messages[0])["DKIM-Signature"]).split())


@pytest.mark.parametrize(("key", "options", "said"), [
    (b"not a key at all\n", (), "an Ed25519 seed has 32"),
    (b"%%% garbage %%%\n", (), "is not a key"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", (), "PKCS#8"),
    (b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
     (), "encrypted"),
    (None, ("--dkim-algorithm", "rsa-sha256"), "ed25519 key but the algorithm is rsa-sha256"),
])
async def test_a_bad_key_stops_the_run_before_anything_is_sent(
    key: bytes | None, options: tuple[str, ...], said: str, tmp_path: Path
) -> None:
    path = tmp_path / "key"
    if key is None:
        write_key(path, "ed25519-pkcs8")
    else:
        path.write_bytes(key)
    code, err, messages = await send(tmp_path, "--dkim-selector", "s", "--dkim-key", str(path),
                                     *options)
    assert code == 2, err
    assert said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert messages == []  # nothing sent, nobody bounced
    assert not (tmp_path / "job.sqlite").exists()  # so the corrected rerun sends


async def test_unsubscribe_headers_are_signed_even_when_not_listed(tmp_path: Path) -> None:
    key = write_key(tmp_path / "key", "ed25519-pkcs8")
    code, err, messages = await send(
        tmp_path, "--dkim-selector", "s", "--dkim-key", str(key),
        "--dkim-headers", "From,Subject,Date", "--list-unsubscribe", "https://sender.test/u?e=${email}")
    assert code == 0, err
    covered = signed_headers(messages[0])
    assert {"from", "subject", "date", "list-unsubscribe", "list-unsubscribe-post"} <= set(covered)


async def test_unsubscribe_values_are_percent_encoded(tmp_path: Path) -> None:
    csv = (
        'email,name,token\n'
        'a+tag@example.test,A,"x>, <https://evil.example/steal"\n'
        'b@example.test,B,"one & two, <three> zoë"\n'
    )
    code, err, messages = await send(
        tmp_path, "--list-unsubscribe", "https://sender.test/u?e=${email}&t=${token}", csv=csv)
    assert code == 0, err
    headers = sorted(str(parsed(m)["List-Unsubscribe"]) for m in messages)
    assert headers == [
        "<https://sender.test/u?e=a%2Btag@example.test&t=x%3E%2C%20%3Chttps%3A%2F%2Fevil.example"
        "%2Fsteal>",
        "<https://sender.test/u?e=b@example.test&t=one%20%26%20two%2C%20%3Cthree%3E%20zo%C3%AB>",
    ]
    assert all(h.count("<") == 1 and h.count(">") == 1 for h in headers)  # one target each


async def test_mailto_alone_is_the_rfc2369_mailto_form(tmp_path: Path) -> None:
    code, err, messages = await send(
        tmp_path, "--list-unsubscribe-mailto", "unsubscribe@sender.test")
    assert code == 0, err
    message = parsed(messages[0])
    assert message["List-Unsubscribe"] == "<mailto:unsubscribe@sender.test>"
    assert message["List-Unsubscribe-Post"] is None  # one-click needs an https URL


@pytest.mark.parametrize("url", ["https://sender.test/u?a=b c", "https://sender.test/u>,<x"])
async def test_a_malformed_unsubscribe_url_is_refused_at_start(url: str, tmp_path: Path) -> None:
    code, err, messages = await send(tmp_path, "--list-unsubscribe", url)
    assert code == 2 and "percent-encode" in err and messages == []


async def test_verp_too_long_for_64_octets_is_said(tmp_path: Path) -> None:
    long = "a" * 60 + "@example.test"
    code, err, _ = await send(tmp_path, "--verp", csv=f"email,name\n{long},A\n")
    assert code == 0, err
    assert f"--verp: {long}" in err and "64 octets" in err
