"""Session records (``--trace``, ``MailerConfig.on_session``) validate against
the seed's SMTP Session JSON schema (tests/data/smtp-session-schema.txt, copied
from shared/seeds): a real run over STARTTLS (trustme) with AUTH and several
transactions against the project's sink on 127.0.0.1."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trio

from bulkmail.api import Mailer, MailerConfig, Relay
from bulkmail.config import SessionConfig
from bulkmail.errors import SMTPTLSError
from bulkmail.protocol.auth import Credentials
from bulkmail.records import SessionRecords
from bulkmail.session import SMTPSession
from bulkmail.shaping import PoolLimits

from .sinkutil import make_tls, start_sink

SCHEMA_FILE = Path(__file__).parent / "data" / "smtp-session-schema.txt"
MESSAGE = b"From: news@sender.test\r\nSubject: hello\r\n\r\nHi.\r\n"


def load_schema() -> dict[str, Any]:
    text = SCHEMA_FILE.read_text()
    return json.loads(text[text.index("{") : text.rindex("}") + 1])


SCHEMA = load_schema()


def validator(definition: str | None = None) -> jsonschema.Draft7Validator:
    """The whole schema, or one of its definitions (resolved inside the schema)."""
    schema = SCHEMA if definition is None else {
        **SCHEMA, "$ref": f"#/definitions/{definition}",
    }
    if definition is not None:
        schema = {k: v for k, v in schema.items() if k not in ("properties", "type")}
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())


def check_record(record: dict[str, Any]) -> None:
    """The record, each transaction, each command and each reply against the schema."""
    validator().validate(record)
    for transaction in record["transactions"]:
        validator("Transaction").validate(transaction)
    for entry in record["dialogue"]:
        if "command" in entry:
            validator("SMTPCommand").validate(entry)
        elif "code" in entry:
            validator("SMTPResponse").validate(entry)
        else:  # what SMTPCommand cannot name keeps the seed example's shape
            assert set(entry) <= {"direction", "at", "data", "note"}, entry


async def test_every_record_of_a_starttls_auth_run_validates(tmp_path: Path) -> None:
    _, server_ctx, client_ctx = make_tls(tmp_path)
    records: list[dict[str, Any]] = []
    recipients = [f"r{i}@dest.test" for i in range(12)]
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, ssl_context=server_ctx, auth=("news", "s3cret-pw"))
        config = MailerConfig(
            relay=Relay("127.0.0.1", sink.port), secure="starttls", ssl_context=client_ctx,
            credentials=Credentials("news", "s3cret-pw"), client_hostname="client.sender.test",
            limits=PoolLimits(connections=2, max_rcpts=3), on_session=records.append,
        )
        async with Mailer(config) as mailer:
            summary = await mailer.send("news@sender.test", MESSAGE, recipients)
        nursery.cancel_scope.cancel()
    assert summary.delivered == 12
    assert records, "no session was recorded"
    for record in records:
        check_record(record)
        assert record["secure"] == "starttls"
        assert record["authentication"] == {"username": "news", "mechanism": "PLAIN"}
        assert record["clientHostname"] == "client.sender.test"
        assert record["port"] == sink.port
        assert "STARTTLS" not in record["extensions"]  # the list after TLS, as sent
        assert any(ext.startswith("AUTH") for ext in record["extensions"])
        assert "s3cret-pw" not in json.dumps(record)
        assert all(e["at"] <= record["duration"] for e in record["dialogue"])
    transactions = [t for r in records for t in r["transactions"]]
    assert len(transactions) >= 4  # 12 recipients, 3 per transaction
    assert sorted(a for t in transactions for a in t["recipients"]) == sorted(recipients)
    assert all(t["messageSize"] >= len(MESSAGE) and t["from"] == "news@sender.test"
               for t in transactions)
    assert all(code == 250 for t in transactions for code in t["replyCodes"])
    commands = [e["command"] for r in records for e in r["dialogue"] if "command" in e]
    assert commands.count("RCPT") == 12 and "AUTH" in commands and "STARTTLS" in commands


async def test_every_line_of_a_trace_file_validates(tmp_path: Path) -> None:
    """``bulkmail send --trace FILE`` over STARTTLS with AUTH, several
    transactions per session: each line validates, no secret is written."""
    from .test_cli_send import BULKMAIL

    ca, server_ctx, _ = make_tls(tmp_path)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    recipients = [f"r{i}@dest.test" for i in range(12)]
    (tmp_path / "list.txt").write_text("".join(f"{r}\n" for r in recipients))
    (tmp_path / "msg.eml").write_bytes(b"From: news@sender.test\nSubject: x\n\ny\n")
    trace = tmp_path / "trace.jsonl"
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, ssl_context=server_ctx, auth=("news", "s3cret-pw"))
        done = await trio.run_process(
            [*BULKMAIL, "send", "--sender", "news@sender.test", "--recipients",
             str(tmp_path / "list.txt"), "--message", str(tmp_path / "msg.eml"),
             "--relay", f"localhost:{sink.port}", "--no-journal", "--quiet",
             "--tls", "starttls", "--tls-ca", str(ca_file), "--auth-user", "news",
             "--auth-password-env", "SMTP_PASSWORD", "--connections", "2",
             "--max-rcpts", "2", "--trace", str(trace)],
            env={**os.environ, "SMTP_PASSWORD": "s3cret-pw"}, capture_stderr=True,
            check=False)
        nursery.cancel_scope.cancel()
    assert done.returncode == 0, done.stderr
    assert "s3cret-pw" not in trace.read_text()
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    assert records
    for record in records:
        check_record(record)
        assert record["secure"] == "starttls"
        assert record["authentication"] == {"username": "news", "mechanism": "PLAIN"}
    assert max(len(r["transactions"]) for r in records) >= 2  # several in one session
    assert sorted(a for r in records for t in r["transactions"] for a in t["recipients"]) \
        == sorted(recipients)


async def test_sampling_keeps_one_session_in_n(tmp_path: Path) -> None:
    records: list[dict[str, Any]] = []
    sampler = SessionRecords(records.append, sample=3)
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        config = SessionConfig("127.0.0.1", sink.port, secure="none", records=sampler)
        for _ in range(7):
            session = await SMTPSession.connect(config, "127.0.0.1")
            await session.quit()
        nursery.cancel_scope.cancel()
    assert len(records) == 3  # sessions 1, 4 and 7
    for record in records:
        check_record(record)
        assert [e.get("command") for e in record["dialogue"] if "command" in e] == ["EHLO", "QUIT"]


async def test_a_failed_session_is_recorded_with_its_error(tmp_path: Path) -> None:
    records: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)  # no STARTTLS offered
        config = SessionConfig("127.0.0.1", sink.port, secure="starttls",
                               records=SessionRecords(records.append))
        with pytest.raises(SMTPTLSError):
            await SMTPSession.connect(config, "127.0.0.1")
        nursery.cancel_scope.cancel()
    (record,) = records
    check_record(record)
    assert record["secure"] == "none" and record["transactions"] == []
    assert record["error"]["code"] == 421 and record["error"]["enhanced"] == "4.7.10"


def test_a_session_configured_from_a_record() -> None:
    config = SessionConfig.from_record(
        {"host": "mail.example.com", "port": 587, "secure": "starttls",
         "authentication": {"mechanism": "PLAIN", "username": "alice"},
         "clientHostname": "client.sender.com", "extensions": ["PIPELINING"]},
        password="pw",
    )
    assert (config.host, config.port, config.secure) == ("mail.example.com", 587, "starttls")
    assert config.client_hostname == "client.sender.com"
    assert config.credentials == Credentials("alice", "pw", mechanism="PLAIN")


def test_a_recorded_session_round_trips_into_a_config() -> None:
    record = {"host": "h.test", "port": 25, "secure": "none", "clientHostname": "me.test"}
    config = SessionConfig.from_record(record)
    assert (config.host, config.port, config.secure, config.credentials) == \
        ("h.test", 25, "none", None)


@pytest.mark.parametrize("bad", [{}, {"host": "h", "port": 0}, {"host": "h", "secure": "may"}])
def test_a_bad_record_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SessionConfig.from_record(bad)
