"""``bulkmail send --processes N`` (issue 17.5): one job, N child processes,
each on its shard of the list with its own journal; caps that hold in sum at
the server, one report, one summary, and nothing lost when the parent or a
child is SIGKILLed.

Every test runs the CLI as a subprocess against the sink on 127.0.0.1.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
from collections import Counter
from pathlib import Path

import pytest
import trio

from bulkmail.sink import Sink

from .test_cli_send import journal_records, received, run, send_args, start_sink


def personalised(tmp: Path, n: int) -> tuple[Path, Path]:
    rcpts = tmp / "list.txt"
    rcpts.write_text("".join(f"u{i}@example.test\n" for i in range(n)))
    message = tmp / "msg.eml"
    message.write_bytes(b"Subject: for ${email}\n\nhello\n")
    return rcpts, message


def everyone(n: int) -> set[str]:
    return {f"u{i}@example.test" for i in range(n)}


def shard_records(tmp: Path, n: int) -> dict[str, object]:
    records: dict[str, object] = {}
    for k in range(1, n + 1):
        part = journal_records(tmp / f"journal.sqlite.part{k}-of-{n}")
        assert not set(part) & set(records)  # a recipient belongs to one shard
        records.update(part)
    return records


def flagged(tmp: Path, n: int) -> set[str]:
    return {a for a, r in shard_records(tmp, n).items()
            if r.possible_duplicate}  # type: ignore[attr-defined]


def report_lines(tmp: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (tmp / "report.jsonl").read_text().splitlines()]


def holder_pid(lock_file: Path) -> int:
    match = re.search(r"pid (\d+)", lock_file.read_text())
    assert match, lock_file.read_text()
    return int(match.group(1))


async def until_sent(sink: Sink, n: int) -> None:
    while sink.stats.messages < n:
        await trio.sleep(0.01)


async def until_unlocked(lock_file: Path) -> None:
    """Until no process holds ``lock_file`` (a child that stopped on its own)."""
    with trio.fail_after(60):
        while True:
            fd = os.open(lock_file, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            finally:
                os.close(fd)
            await trio.sleep(0.05)


@pytest.mark.parametrize("processes", [2, 3])
async def test_n_processes_deliver_everyone_once_within_the_cap_with_one_report_and_summary(
    tmp_path: Path, processes: int
) -> None:
    n = 300
    rcpts, message = personalised(tmp_path, n)
    cap = 4
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.02)
        done = await run(send_args(tmp_path, sink.port, rcpts, message, "--connections", str(cap),
                                   "--processes", str(processes)), tmp_path)
        nursery.cancel_scope.cancel()
    err = done.stderr.decode()
    assert done.returncode == 0, err
    copies = received(sink)
    assert set(copies) == everyone(n) and set(copies.values()) == {1}
    # each child divides the cap: undivided, 3 children would open up to 12
    assert sink.stats.max_sessions_by_address
    assert max(sink.stats.max_sessions_by_address.values()) <= cap
    lines = report_lines(tmp_path)
    assert Counter(r["recipient"] for r in lines) == Counter(everyone(n))
    assert {r["status"] for r in lines} == {"delivered"}
    assert err.count("delivered ") == 1 and f"{n:,}" in err  # one summary
    assert re.search(rf"journal: .*part\{{1\.\.{processes}\}}-of-{processes}", err)
    assert not list(tmp_path.glob("report.jsonl.part*"))  # joined into the one report
    records = shard_records(tmp_path, processes)
    assert set(records) == everyone(n)
    assert all(len(journal_records(tmp_path / f"journal.sqlite.part{k}-of-{processes}")) > n // 10
               for k in range(1, processes + 1))  # every shard did its part


async def test_a_child_killed_mid_run_is_reported_unfinished_and_the_rerun_loses_nobody(
    tmp_path: Path,
) -> None:
    n = 400
    rcpts, message = personalised(tmp_path, n)
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.02)
        args = send_args(tmp_path, sink.port, rcpts, message, "--connections", "4",
                         "--processes", "2")
        parent = await trio.lowlevel.open_process(args, cwd=tmp_path, stderr=-1)
        await until_sent(sink, n // 4)
        victim = holder_pid(tmp_path / "journal.sqlite.part1-of-2.lock")
        os.kill(victim, signal.SIGKILL)
        assert parent.stderr is not None
        err = b""
        while chunk := await parent.stderr.receive_some():
            err += chunk
        assert await parent.wait() == 75
        first_run = sink.stats.messages
        done = await run(args, tmp_path)
        nursery.cancel_scope.cancel()
    assert first_run < n
    assert re.search(rf"process 1 of 2 \(pid {victim}\) was killed by SIGKILL", err.decode())
    assert done.returncode == 0, done.stderr
    copies = received(sink)
    assert set(copies) == everyone(n)
    assert {a for a, c in copies.items() if c > 1} <= flagged(tmp_path, 2)
    assert all(c <= 2 for c in copies.values())
    assert {str(r.status) for r in shard_records(tmp_path, 2).values()} == {  # type: ignore[attr-defined]
        "delivered"}
    assert Counter(r["recipient"] for r in report_lines(tmp_path)) == Counter(everyone(n))


async def test_the_parent_killed_mid_run_stops_its_children_and_the_rerun_loses_nobody(
    tmp_path: Path,
) -> None:
    n = 400
    rcpts, message = personalised(tmp_path, n)
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.05)
        args = send_args(tmp_path, sink.port, rcpts, message, "--connections", "4",
                         "--processes", "2", "--quiet")
        parent = await trio.lowlevel.open_process(args, cwd=tmp_path)
        await until_sent(sink, n // 4)
        parent.send_signal(signal.SIGKILL)
        await parent.wait()
        for k in (1, 2):  # the orphans notice and stop by themselves
            await until_unlocked(tmp_path / f"journal.sqlite.part{k}-of-2.lock")
        first_run = sink.stats.messages
        done = await run(args, tmp_path)
        nursery.cancel_scope.cancel()
    assert first_run < n  # they stopped, not finished
    assert done.returncode == 0, done.stderr
    copies = received(sink)
    assert set(copies) == everyone(n)
    assert {a for a, c in copies.items() if c > 1} <= flagged(tmp_path, 2)
    assert all(c <= 2 for c in copies.values())


async def test_sigterm_to_the_parent_stops_every_child_cleanly_and_the_rerun_finishes(
    tmp_path: Path,
) -> None:
    n = 400
    rcpts, message = personalised(tmp_path, n)
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.05)
        args = send_args(tmp_path, sink.port, rcpts, message, "--connections", "4",
                         "--processes", "2")
        parent = await trio.lowlevel.open_process(args, cwd=tmp_path, stderr=-1)
        await until_sent(sink, n // 4)
        parent.send_signal(signal.SIGTERM)
        assert parent.stderr is not None
        err = b""
        while chunk := await parent.stderr.receive_some():
            err += chunk
        assert await parent.wait() == 75
        done = await run(args, tmp_path)
        nursery.cancel_scope.cancel()
    text = err.decode()
    assert text.count("stopping: finishing in-flight transactions") == 1  # one line, not N
    assert text.count("delivered ") == 1
    assert done.returncode == 0, done.stderr
    copies = received(sink)
    assert set(copies) == everyone(n) and set(copies.values()) == {1}  # a clean stop: no doubt


async def test_a_rerun_with_another_process_count_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    n = 20
    rcpts, message = personalised(tmp_path, n)
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        args = send_args(tmp_path, sink.port, rcpts, message, "--quiet")
        first = await run([*args, "--processes", "2"], tmp_path)
        three = await run([*args, "--processes", "3"], tmp_path)
        one = await run(args, tmp_path)
        single = send_args(tmp_path, sink.port, rcpts, message, "--quiet", "--journal",
                           str(tmp_path / "single.sqlite"))
        single_first = await run(single, tmp_path)
        single_then_two = await run([*single, "--processes", "2"], tmp_path)
        nursery.cancel_scope.cancel()
    assert first.returncode == 0 and single_first.returncode == 0
    for refused, begun in ((three, 2), (one, 2), (single_then_two, 1)):
        assert refused.returncode == 2
        err = refused.stderr.decode()
        assert len(err.splitlines()) == 1 and f"begun with --processes {begun}" in err, err
    assert not (tmp_path / "journal.sqlite.part1-of-3").exists()
    assert sink.stats.messages == 2 * n  # the refused runs sent nothing


async def test_more_processes_than_the_connection_cap_are_lowered_to_it(tmp_path: Path) -> None:
    n = 60
    rcpts, message = personalised(tmp_path, n)
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.02)
        done = await run(send_args(tmp_path, sink.port, rcpts, message, "--connections", "2",
                                   "--processes", "3"), tmp_path)
        nursery.cancel_scope.cancel()
    assert done.returncode == 0, done.stderr
    assert "--processes 3 lowered to 2" in done.stderr.decode()
    assert max(sink.stats.max_sessions_by_address.values()) <= 2
    assert set(shard_records(tmp_path, 2)) == everyone(n)
    assert set(received(sink).values()) == {1}


async def test_processes_refuse_recipients_on_stdin(tmp_path: Path) -> None:
    _, message = personalised(tmp_path, 3)
    done = await run(send_args(tmp_path, 25, Path("-"), message, "--processes", "2"), tmp_path)
    assert done.returncode == 2
    assert done.stderr.decode().count("\n") == 1 and "--recipients from a file" in \
        done.stderr.decode()


async def test_the_default_journal_is_sharded_and_a_rerun_of_a_finished_job_sends_nothing(
    tmp_path: Path,
) -> None:
    n = 50
    rcpts, message = personalised(tmp_path, n)
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        args = send_args(tmp_path, sink.port, rcpts, message, "--processes", "2")
        at = args.index("--journal")
        del args[at:at + 2]
        first = await run(args, tmp_path)
        again = await run(args, tmp_path)
        nursery.cancel_scope.cancel()
    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stderr
    assert f"resumed: {n:,} already final, 0 to send" in again.stderr.decode()
    parts = sorted(p.name.rpartition(".part")[2] for p in (tmp_path / ".bulkmail").glob(
        "job-*.sqlite.part*-of-2"))
    assert parts == ["1-of-2", "2-of-2"]
    assert sink.stats.messages == n
    assert len(report_lines(tmp_path)) == n  # the rerun's report: everyone, from the journals
