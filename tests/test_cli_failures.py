"""Runs that must stop, not crash: a journal that cannot be written (the file
size limit, as a full disk would), an authentication failure (issue 15.2, 15.8).
The CLI runs as a subprocess against servers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import trio

from .test_cli_send import journal_records, received, run, send_args, start_sink

#: bytes any file of the limited run may grow to: the journal's first pages fit,
#: a few dozen group commits do not
FILE_SIZE_LIMIT = 200_000


def limited(args: list[str], limit: int) -> list[str]:
    """``args`` (``python -m bulkmail ...``) run under RLIMIT_FSIZE; Python
    ignores SIGXFSZ, so a write past the limit fails with EFBIG."""
    code = (
        "import resource, runpy, sys;"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}));"
        "sys.argv = ['bulkmail', *sys.argv[1:]];"
        "runpy.run_module('bulkmail', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", code, *args[3:]]


async def test_a_journal_that_cannot_be_written_stops_the_run_and_resume_works(
    tmp_path: Path,
) -> None:
    n = 3000
    rcpts = tmp_path / "list.txt"
    rcpts.write_text("".join(f"u{i}@example.test\n" for i in range(n)))
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: x\n\ny\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        args = send_args(tmp_path, sink.port, rcpts, message, "--max-rcpts", "2")
        no_report = args[: args.index("--report")] + args[args.index("--report") + 2 :]
        failed = await run(limited(no_report, FILE_SIZE_LIMIT), tmp_path)
        sent_before = sink.stats.recipients
        resumed = await run(args, tmp_path)
        nursery.cancel_scope.cancel()
    err = failed.stderr.decode()
    assert failed.returncode == 75, err
    assert "Traceback" not in err and "Nursery" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("bulkmail send:")]
    assert len(error_lines) == 1
    assert "journal.sqlite" in error_lines[0] and "cannot be written" in error_lines[0]
    assert "disk I/O error" in error_lines[0] or "full" in error_lines[0]
    assert sent_before < n  # sending stopped, it did not run to the end
    assert resumed.returncode == 0, resumed.stderr
    copies = received(sink)
    assert set(copies) == {f"u{i}@example.test" for i in range(n)}
    records = journal_records(tmp_path / "journal.sqlite")
    assert Counter(r.status.value for r in records.values()) == Counter({"delivered": n})
    flagged = {a for a, r in records.items() if r.possible_duplicate}
    assert {a for a, c in copies.items() if c > 1} <= flagged


async def test_a_journal_that_cannot_even_be_created_is_a_temporary_failure(
    tmp_path: Path,
) -> None:
    rcpts = tmp_path / "list.txt"
    rcpts.write_text("a@example.test\n")
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: x\n\ny\n")
    (tmp_path / "report.jsonl").write_text("last run\n")
    args = send_args(tmp_path, 1, rcpts, message)
    proc = await run(limited(args, 1024), tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 75, err  # a full disk passes: not a usage error
    assert len(err.splitlines()) == 1 and "journal.sqlite" in err and "Traceback" not in err
    assert (tmp_path / "report.jsonl").read_text() == "last run\n"


async def test_a_report_that_cannot_be_written_stops_the_run_with_one_line(
    tmp_path: Path,
) -> None:
    n = 2000
    rcpts = tmp_path / "list.txt"
    rcpts.write_text("".join(f"u{i}@example.test\n" for i in range(n)))
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: x\n\ny\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.005)
        args = send_args(tmp_path, sink.port, rcpts, message, "--no-journal", "--max-rcpts", "2",
                         "--connections", "2")
        proc = await run(limited(args, 8192), tmp_path)
        nursery.cancel_scope.cancel()
    err = proc.stderr.decode()
    assert proc.returncode == 75, err
    assert "Traceback" not in err and "Nursery" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("bulkmail send:")]
    assert len(error_lines) == 1 and "report" in error_lines[0]
    assert sink.stats.recipients < n


async def test_an_authentication_failure_defers_everyone_and_exits_75(tmp_path: Path) -> None:
    """Needs the engine's part (WP-B): a 535 stops the run with ``Summary.aborted``."""
    n = 20
    rcpts = tmp_path / "list.txt"
    rcpts.write_text("".join(f"u{i}@example.test\n" for i in range(n)))
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: x\n\ny\n")
    env = {**os.environ, "SMTP_PASSWORD": "wrong"}
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, auth=("news", "s3cret"))
        args = send_args(tmp_path, sink.port, rcpts, message, "--auth-user", "news",
                         "--auth-password-env", "SMTP_PASSWORD", "--allow-plaintext-auth",
                         "--max-rcpts", "2", "--retry-for", "0")
        with trio.fail_after(60):
            proc = await trio.run_process(args, cwd=tmp_path, env=env, capture_stderr=True,
                                          check=False)
        env["SMTP_PASSWORD"] = "s3cret"
        fixed = await trio.run_process(args, cwd=tmp_path, env=env, capture_stderr=True,
                                       check=False)
        nursery.cancel_scope.cancel()
    err = proc.stderr.decode()
    assert proc.returncode == 75, err
    error_lines = [line for line in err.splitlines() if line.startswith("bulkmail send:")]
    assert len(error_lines) == 1 and "535" in error_lines[0]
    statuses = Counter(
        r["status"] for r in map(json.loads, (tmp_path / "report.jsonl").read_text().splitlines())
    )
    assert statuses["bounced"] == 0  # a wrong password is never the recipients' fault
    assert fixed.returncode == 0, fixed.stderr
    assert received(sink) == Counter({f"u{i}@example.test": 1 for i in range(n)})
