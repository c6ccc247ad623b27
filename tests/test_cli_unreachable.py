"""A down or mistyped relay is named within seconds -- in the progress output
and in the summary, with the operating system's own words -- instead of a 0%
line until the retries run out (issue 16, item 9)."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from bulkmail import ConnectionFailure, Mailer, MailerConfig, Relay, RetryPolicy

from .test_cli_send import BULKMAIL, run


def closed_port() -> int:
    """A loopback port nobody listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_a_refused_relay_is_named_in_the_progress_and_the_summary(tmp_path: Path) -> None:
    port = closed_port()
    (tmp_path / "list.txt").write_text("".join(f"u{i}@example.test\n" for i in range(20)))
    (tmp_path / "msg.eml").write_bytes(b"Subject: x\n\ny\n")
    proc = await run([
        *BULKMAIL, "send", "--sender", "news@sender.test", "--relay", f"127.0.0.1:{port}",
        "--recipients", "list.txt", "--message", "msg.eml", "--no-journal",
        "--retry-first", "1s", "--retry-for", "3s",
    ], tmp_path)
    assert proc.returncode == 75
    err = proc.stderr.decode()
    assert "Traceback" not in err
    lines = err.splitlines()
    refused = f"cannot connect to 127.0.0.1:{port}: [Errno 111] Connection refused"
    # a progress line drawn when the failure came, not at the next 5 s tick
    # (the run is over before that tick: without the failure no line is drawn)
    progress = [line for line in lines if f"| cannot reach relay:127.0.0.1:{port}" in line]
    assert progress, err
    assert refused in progress[0] and "failed attempt" in progress[0]
    assert "next try in" in progress[0]
    # the summary says which destination failed and why
    where = lines.index("could not connect:")
    assert lines[where + 1].startswith(f"  relay:127.0.0.1:{port}: 451 4.4.1 {refused}")
    assert lines[where + 1].endswith(("failed attempt)", "failed attempts)"))


async def test_the_library_hears_each_failed_connection_not_each_recipient(
    autojump_clock: trio.abc.Clock,
) -> None:
    port = closed_port()
    failures: list[ConnectionFailure] = []
    config = MailerConfig(
        relay=Relay("127.0.0.1", port), secure="none", retry_for=60,
        retry=RetryPolicy(first_delay=5), on_connection_failure=failures.append,
    )
    async with Mailer(config) as mailer:
        summary = await mailer.send(
            "news@sender.test", b"Subject: x\r\n\r\ny\r\n",
            [f"u{i}@example.test" for i in range(50)],
        )
    assert summary.deferred == 50
    assert 1 < len(failures) < 50  # per connection attempt, not per recipient
    assert [f.failures for f in failures] == list(range(1, len(failures) + 1))
    first = failures[0]
    assert first.destination == f"relay:127.0.0.1:{port}"
    assert first.reply.code == 451 and first.reply.enhanced == "4.4.1"
    assert "[Errno 111] Connection refused" in str(first.reply)
    assert first.next_try > 0  # the destination is paused before the next try
