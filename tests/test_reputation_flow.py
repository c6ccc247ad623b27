"""The reputation loop end to end over SMTP on 127.0.0.1: a 550 5.1.1 is
classified ``invalid-recipient`` in the report, suppressed from the result,
and the next job (reading the exported store as ``--suppress``) does not send
to it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from bulkmail import Mailer, MailerConfig, Relay
from bulkmail.results import Result, Status
from bulkmail.suppression import SuppressionStore, suppress_from_result

from .aiosmtpd_util import RecordingHandler, aiosmtpd_server

MESSAGE = b"From: news@sender.test\r\nSubject: news\r\n\r\nhello\r\n"
RECIPIENTS = ["alice@example.test", "bob@example.test"]


async def test_a_hard_bounce_is_classified_suppressed_and_not_sent_again(
    tmp_path: Path,
) -> None:
    handler = RecordingHandler(reject={"bob@example.test"})
    store = SuppressionStore(tmp_path / "suppress.sqlite")
    results: list[Result] = []
    with aiosmtpd_server(handler) as (_, port):
        config = MailerConfig(relay=Relay("127.0.0.1", port), secure="none")
        async with Mailer(config) as mailer:
            await mailer.send("news@sender.test", MESSAGE, RECIPIENTS,
                              on_result=results.append)
        for result in results:  # what the engine will do per final result
            suppress_from_result(store, result)
        by_address = {r.recipient: r for r in results}
        assert by_address["bob@example.test"].status is Status.BOUNCED
        assert by_address["bob@example.test"].bounce_class == "invalid-recipient"
        assert by_address["alice@example.test"].bounce_class is None
        entry = store.get("bob@example.test")
        assert entry is not None and entry.bounce_class == "invalid-recipient"
        assert "alice@example.test" not in store

        # the next job, through the command line as it reads suppressions today
        exported = tmp_path / "suppress.txt"
        store.export_file(exported)
        recipients = tmp_path / "list.txt"
        recipients.write_text("\n".join(RECIPIENTS) + "\n")
        message = tmp_path / "msg.eml"
        message.write_bytes(MESSAGE)
        handler.messages.clear()
        proc = await trio.run_process(
            [sys.executable, "-m", "bulkmail", "send", "--sender", "news@sender.test",
             "--recipients", str(recipients), "--message", str(message),
             "--relay", f"127.0.0.1:{port}", "--tls", "none", "--no-journal",
             "--report", str(tmp_path / "report.jsonl"), "--suppress", str(exported),
             "--quiet"],
            capture_stderr=True, check=False)
    store.close()
    assert proc.returncode == 0, proc.stderr
    assert [m.rcpt_tos for m in handler.messages] == [["alice@example.test"]]
    report = [json.loads(line) for line in (tmp_path / "report.jsonl").read_text().splitlines()]
    assert {r["recipient"]: (r["status"], r["class"]) for r in report} == {
        "alice@example.test": ("delivered", None),
        "bob@example.test": ("suppressed", None),
    }


async def test_the_report_carries_the_class_of_a_bounce(tmp_path: Path) -> None:
    handler = RecordingHandler(reject={"bob@example.test"})
    recipients = tmp_path / "list.txt"
    recipients.write_text("\n".join(RECIPIENTS) + "\n")
    message = tmp_path / "msg.eml"
    message.write_bytes(MESSAGE)
    with aiosmtpd_server(handler) as (_, port):
        proc = await trio.run_process(
            [sys.executable, "-m", "bulkmail", "send", "--sender", "news@sender.test",
             "--recipients", str(recipients), "--message", str(message),
             "--relay", f"127.0.0.1:{port}", "--tls", "none", "--no-journal",
             "--report", str(tmp_path / "report.jsonl"), "--quiet"],
            capture_stderr=True, check=False)
    assert proc.returncode == 0, proc.stderr
    report = {r["recipient"]: r for r in map(
        json.loads, (tmp_path / "report.jsonl").read_text().splitlines())}
    assert (report["bob@example.test"]["code"], report["bob@example.test"]["class"]) == \
        (550, "invalid-recipient")
    assert report["alice@example.test"]["class"] is None
