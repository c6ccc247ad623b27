"""Stage deadlines (RFC 5321 §4.5.3.2) set per destination in the shaping
file and for the whole run on the command line (issue 16, item 8)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import trio

from bulkmail import Relay, Shaping, Timeouts
from bulkmail.api import send
from bulkmail.cli.send_command import add_arguments
from bulkmail.results import Result, Status

from .scripted import Conn, start_scripted

MESSAGE = b"From: news@sender.test\r\nSubject: monthly\r\n\r\nHello.\r\n"


async def never_greet(conn: Conn) -> None:
    await trio.sleep_forever()  # accepts, never says 220


@pytest.mark.parametrize(
    ("shaping", "deadline"),
    [
        (None, 100.0),  # the run's own Timeouts
        ({"domains": {"127.0.0.1": {"timeouts": {"greeting": "7s"}}}}, 7.0),
        ({"default": {"timeouts": {"greeting": 40}},
          "domains": {"*.elsewhere.test": {"timeouts": {"greeting": "7s"}}}}, 40.0),
    ],
    ids=["run-wide", "this destination", "another destination's rule"],
)
async def test_the_greeting_deadline_comes_from_the_destinations_shaping(
    shaping: dict[str, object] | None, deadline: float, autojump_clock: trio.abc.Clock
) -> None:
    results: list[tuple[float, Result]] = []
    async with trio.open_nursery() as nursery:
        _, port = await start_scripted(nursery, never_greet)
        start = trio.current_time()
        await send(
            "news@sender.test", MESSAGE, ["a@example.test"],
            relay=Relay("127.0.0.1", port), secure="none", retry_for=0.0,
            timeouts=Timeouts(greeting=100),
            shaping=Shaping.from_mapping(shaping) if shaping is not None else None,
            on_result=lambda r: results.append((trio.current_time() - start, r)),
        )
        nursery.cancel_scope.cancel()
    ((elapsed, result),) = results
    assert result.status is Status.DEFERRED
    assert deadline <= elapsed < deadline + 1


async def test_the_cli_timeout_option_sets_the_greeting_deadline(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("a@example.test\n")
    (tmp_path / "msg.eml").write_bytes(b"Subject: x\n\nbody\n")
    async with trio.open_nursery() as nursery:
        _, port = await start_scripted(nursery, never_greet)
        with trio.fail_after(60):  # the RFC's 5 minutes would be a failure
            proc = await trio.run_process(
                [sys.executable, "-m", "bulkmail", "send", "--sender", "news@sender.test",
                 "--recipients", str(tmp_path / "list.txt"), "--message",
                 str(tmp_path / "msg.eml"), "--relay", f"127.0.0.1:{port}", "--tls", "none",
                 "--no-journal", "--report", str(tmp_path / "report.jsonl"),
                 "--retry-for", "0", "--timeout", "greeting=1s,data-done=2m"],
                capture_stdout=True, capture_stderr=True, check=False,
            )
        nursery.cancel_scope.cancel()
    assert proc.returncode == 75, proc.stderr
    (line,) = (tmp_path / "report.jsonl").read_text().splitlines()
    report = json.loads(line)
    assert report["status"] == "deferred"
    assert "greeting" in report["reply"].lower()


def test_cli_timeouts_merge_and_keep_the_rfc_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--sender", "a@b.test", "--recipients", "r", "--message", "m",
         "--timeout", "greeting=30s,data-done=2m", "--timeout", "rcpt=90"]
    )
    assert args.timeouts == Timeouts(greeting=30, data_done=120, rcpt=90)
    assert args.timeouts.mail == Timeouts().mail == 300
