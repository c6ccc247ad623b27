"""``bulkmail send`` as one job with one journal: the job's identity, the lock,
template checks before sending, resumes that say what they did, a stable Date,
and the flag of a possible duplicate kept to the end (issue 15; 16.11).

Every test runs the CLI as a subprocess against a server on 127.0.0.1.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from collections import Counter
from pathlib import Path

import trio

from .scripted import MiniSMTP, start_scripted
from .test_cli_send import (
    BULKMAIL,
    journal_records,
    received,
    report,
    run,
    send_args,
    start_sink,
    write_csv,
)


def plain_list(path: Path, n: int) -> Path:
    path.write_text("".join(f"u{i}@example.test\n" for i in range(n)))
    return path


async def test_a_journal_of_another_job_is_refused_naming_what_differs(tmp_path: Path) -> None:
    rcpts = plain_list(tmp_path / "list.txt", 3)
    week1 = tmp_path / "week1.eml"
    week1.write_bytes(b"Subject: week 1\n\nnews\n")
    week2 = tmp_path / "week2.eml"
    week2.write_bytes(b"Subject: week 2\n\nmore news\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        first = await run(send_args(tmp_path, sink.port, rcpts, week1), tmp_path)
        second = await run(send_args(tmp_path, sink.port, rcpts, week2), tmp_path)
        verp = await run(send_args(tmp_path, sink.port, rcpts, week1, "--verp"), tmp_path)
        nursery.cancel_scope.cancel()
    assert first.returncode == 0, first.stderr
    assert second.returncode == 2
    err = second.stderr.decode()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "different job" in err and "message" in err and "--journal" in err
    assert verp.returncode == 2 and b"verp" in verp.stderr
    assert sink.stats.messages == 1  # week 2 was never sent "as delivered"


async def test_the_default_journal_depends_on_options_that_change_the_bytes(
    tmp_path: Path,
) -> None:
    rcpts = plain_list(tmp_path / "list.txt", 2)
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: x\n\ny\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        base = send_args(tmp_path, sink.port, rcpts, message)
        base = base[: base.index("--journal")]  # the default journal, in cwd/.bulkmail
        plain = await run(base, tmp_path)
        verp = await run([*base, "--verp"], tmp_path)
        nursery.cancel_scope.cancel()
    assert plain.returncode == 0 and verp.returncode == 0, verp.stderr
    assert len(list((tmp_path / ".bulkmail").glob("job-*.sqlite"))) == 2
    assert received(sink) == Counter({"u0@example.test": 2, "u1@example.test": 2})


async def test_a_second_run_is_refused_while_the_first_holds_the_job_and_takes_over_after_a_kill(
    tmp_path: Path,
) -> None:
    n = 400
    rcpts = plain_list(tmp_path / "list.txt", n)
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: ${email}\n\nx\n")
    async with trio.open_nursery() as nursery:
        # DATA, not BDAT: a round trip per message keeps the first run busy for
        # ~20 s, long after the second has started (BDAT windows finished it
        # in about a second, before a loaded machine had started the second)
        sink = await start_sink(nursery, latency=0.1, chunking=False)
        args = send_args(tmp_path, sink.port, rcpts, message, "--connections", "2", "--quiet")
        first = await trio.lowlevel.open_process(args, cwd=tmp_path)
        while sink.stats.messages < 5:
            await trio.sleep(0.01)
        second = await run([*args[:-1], "--report", str(tmp_path / "second.jsonl")], tmp_path)
        first.send_signal(signal.SIGKILL)  # its lock dies with it
        await first.wait()
        third = await run(args, tmp_path)
        nursery.cancel_scope.cancel()
    assert second.returncode == 75
    err = second.stderr.decode()
    assert f"pid {first.pid}" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "second.jsonl").exists()  # refused before it started
    assert third.returncode == 0, third.stderr
    copies = received(sink)
    assert set(copies) == {f"u{i}@example.test" for i in range(n)}
    flagged = {a for a, r in journal_records(tmp_path / "journal.sqlite").items()
               if r.possible_duplicate}
    assert {a for a, c in copies.items() if c > 1} <= flagged
    assert all(c <= 2 for c in copies.values())


async def test_an_unknown_placeholder_is_a_usage_error_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    rcpts = write_csv(tmp_path / "list.csv", [
        {"email": "a@example.test", "first_name": "Ann"},
        {"email": "b@example.test", "first_name": "Bob"},
    ])
    typo = tmp_path / "typo.eml"
    typo.write_bytes(b"Subject: hi ${frist_name}\n\nDear ${first_name},\n")
    fine = tmp_path / "fine.eml"
    fine.write_bytes(b"Subject: hi ${first_name}\n\nDear ${first_name},\n")
    (tmp_path / "report.jsonl").write_text("last run's report\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        bad_message = await run(send_args(tmp_path, sink.port, rcpts, typo), tmp_path)
        bad_url = await run(send_args(
            tmp_path, sink.port, rcpts, fine, "--list-unsubscribe",
            "https://news.test/u?id=${uid}"), tmp_path)
        nursery.cancel_scope.cancel()
    assert bad_message.returncode == 2
    err = bad_message.stderr.decode()
    assert "${frist_name}" in err and "first_name" in err and len(err.splitlines()) == 1
    assert bad_url.returncode == 2 and b"${uid}" in bad_url.stderr
    assert sink.stats.messages == 0
    assert not (tmp_path / "journal.sqlite").exists()
    # the report of the last run is left alone by a run that never started
    assert (tmp_path / "report.jsonl").read_text() == "last run's report\n"


async def test_an_empty_cell_renders_as_an_empty_string(tmp_path: Path) -> None:
    rcpts = write_csv(tmp_path / "list.csv", [
        {"email": "a@example.test", "name": "Ann"},
        {"email": "b@example.test", "name": ""},
    ])
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: news\n\nDear ${name}!\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        proc = await run(send_args(tmp_path, sink.port, rcpts, message), tmp_path)
        nursery.cancel_scope.cancel()
    assert proc.returncode == 0, proc.stderr
    bodies = {m.rcpts[0]: m.content for m in sink.messages}
    assert bodies["b@example.test"].endswith(b"\r\n\r\nDear !\r\n")
    assert report(tmp_path)["b@example.test"]["status"] == "delivered"


async def test_rerunning_a_finished_job_says_there_is_nothing_to_send(tmp_path: Path) -> None:
    rcpts = plain_list(tmp_path / "list.txt", 3)
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: x\n\ny\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        args = send_args(tmp_path, sink.port, rcpts, message)
        first = await run(args, tmp_path)
        again = await run(args, tmp_path)
        nursery.cancel_scope.cancel()
    assert first.returncode == 0 and again.returncode == 0, again.stderr
    err = again.stderr.decode()
    assert "resumed: 3 already final, 0 to send" in err
    assert "status" not in err  # no summary table as if it had sent again
    assert sink.stats.messages == 1


def kill_at_end_of_data(journal: Path, kills: int, state: dict[str, object],
                        copies: list[bytes]) -> MiniSMTP:
    """A server that SIGKILLs the client (``state["proc"]``) at each of the first
    ``kills`` ends of data, before its 250 leaves; later ones are accepted."""

    def data_done(rcpts: list[str], content: bytes) -> str | None:
        copies.append(content)
        if len(copies) <= kills:
            state["proc"].send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
            return None
        return "250 2.0.0 queued\r\n"

    return MiniSMTP(data_done=data_done)


async def test_the_possible_duplicate_flag_survives_every_resume(tmp_path: Path) -> None:
    copies: list[bytes] = []
    state: dict[str, object] = {}
    server = kill_at_end_of_data(tmp_path / "journal.sqlite", 1, state, copies)
    rcpts = tmp_path / "list.txt"
    rcpts.write_text("alice@example.test\nbob@example.test\n")
    message = tmp_path / "msg.eml"
    message.write_bytes(b"From: news@sender.test\nSubject: for ${email}\n\nhello\n")
    async with trio.open_nursery() as nursery:
        _, port = await start_scripted(nursery, server)
        args = send_args(tmp_path, port, rcpts, message, "--connections", "1")
        state["proc"] = await trio.lowlevel.open_process(args, cwd=tmp_path)
        await state["proc"].wait()  # type: ignore[attr-defined]
        resumed = await run([*args, "--report", str(tmp_path / "resumed.jsonl")], tmp_path)
        # everyone final now: the third run reports them all from the journal
        finished = await run([*args, "--report", str(tmp_path / "finished.jsonl")], tmp_path)
        summary = await run([*BULKMAIL, "report", str(tmp_path / "journal.sqlite")], tmp_path)
        nursery.cancel_scope.cancel()
    assert resumed.returncode == 0 and finished.returncode == 0, finished.stderr
    killed_one = next(a for a in ("alice@example.test", "bob@example.test")
                      if sum(a.encode() in c for c in copies) == 2)

    def flagged(name: str) -> dict[str, str]:
        lines = (tmp_path / name).read_text().splitlines()
        return {r["recipient"]: r["status"] for r in map(json.loads, lines)
                if r["possible_duplicate"]}

    assert flagged("resumed.jsonl")[killed_one] == "delivered"
    assert flagged("finished.jsonl") == flagged("resumed.jsonl")
    line = next(line for line in summary.stdout.decode().splitlines()
                if line.startswith("possible duplicates"))
    assert line.endswith(f": {len(flagged('resumed.jsonl'))}")


async def test_in_doubt_twice_ends_in_doubt_instead_of_a_third_copy(tmp_path: Path) -> None:
    copies: list[bytes] = []
    state: dict[str, object] = {}
    server = kill_at_end_of_data(tmp_path / "journal.sqlite", 2, state, copies)
    rcpts = tmp_path / "list.txt"
    rcpts.write_text("alice@example.test\n")
    message = tmp_path / "msg.eml"
    message.write_bytes(b"From: news@sender.test\nSubject: once\n\nhello\n")
    async with trio.open_nursery() as nursery:
        _, port = await start_scripted(nursery, server)
        args = send_args(tmp_path, port, rcpts, message)
        for _ in range(2):  # killed at the end of data, twice
            state["proc"] = await trio.lowlevel.open_process(args, cwd=tmp_path)
            await state["proc"].wait()  # type: ignore[attr-defined]
        third = await run(args, tmp_path)
        nursery.cancel_scope.cancel()
    assert len(copies) == 2  # never a third copy
    assert third.returncode == 0, third.stderr  # final: nothing left to send
    rep = report(tmp_path)["alice@example.test"]
    assert rep["status"] == "in_doubt" and rep["possible_duplicate"] is True
    assert "in doubt twice" in str(rep["reply"])
    record = journal_records(tmp_path / "journal.sqlite")["alice@example.test"]
    assert record.possible_duplicate


async def test_a_resend_carries_the_first_runs_date_and_bytes(tmp_path: Path) -> None:
    copies: list[bytes] = []
    state: dict[str, object] = {}
    server = kill_at_end_of_data(tmp_path / "journal.sqlite", 1, state, copies)
    rcpts = tmp_path / "list.txt"
    rcpts.write_text("alice@example.test\n")
    message = tmp_path / "msg.eml"
    message.write_bytes(b"From: news@sender.test\nSubject: same bytes\n\nhello\n")
    async with trio.open_nursery() as nursery:
        _, port = await start_scripted(nursery, server)
        args = send_args(tmp_path, port, rcpts, message)
        state["proc"] = await trio.lowlevel.open_process(args, cwd=tmp_path)
        await state["proc"].wait()  # type: ignore[attr-defined]
        await trio.sleep(1.1)  # a new second: a Date taken now would differ
        resumed = await run(args, tmp_path)
        nursery.cancel_scope.cancel()
    assert resumed.returncode == 0, resumed.stderr
    assert len(copies) == 2 and copies[0] == copies[1]
    with sqlite3.connect(tmp_path / "journal.sqlite") as db:
        (date,) = db.execute("SELECT value FROM meta WHERE key = 'date'").fetchone()
    assert f"Date: {date}\r\n".encode() in copies[0]


async def test_a_signal_after_the_last_recipient_was_handed_out_exits_0(tmp_path: Path) -> None:
    state: dict[str, object] = {}

    def data_done(rcpts: list[str], content: bytes) -> str | None:
        state["proc"].send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
        return "250 2.0.0 queued\r\n"

    rcpts = tmp_path / "list.txt"
    rcpts.write_text("alice@example.test\n")
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: x\n\ny\n")
    async with trio.open_nursery() as nursery:
        _, port = await start_scripted(nursery, MiniSMTP(data_done=data_done))
        args = send_args(tmp_path, port, rcpts, message)
        state["proc"] = proc = await trio.lowlevel.open_process(args, cwd=tmp_path)
        with trio.fail_after(30):
            code = await proc.wait()
        nursery.cancel_scope.cancel()
    # the in-flight transaction finished and nothing remains: not a temporary failure
    assert report(tmp_path)["alice@example.test"]["status"] == "delivered"
    assert code == 0


async def test_a_second_signal_prints_the_true_counts(tmp_path: Path) -> None:
    n = 300
    rcpts = plain_list(tmp_path / "list.txt", n)
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: ${email}\n\nx\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.05)
        args = send_args(tmp_path, sink.port, rcpts, message, "--connections", "2")
        proc = await trio.lowlevel.open_process(
            args, cwd=tmp_path, stderr=open(tmp_path / "stderr", "wb"))  # noqa: SIM115
        while sink.stats.messages < 10:
            await trio.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        await trio.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            code = await proc.wait()
        nursery.cancel_scope.cancel()
    assert code == 75
    err = (tmp_path / "stderr").read_text()
    delivered_line = next(line for line in err.splitlines() if line.startswith("delivered "))
    assert int(delivered_line.split()[1].replace(",", "")) >= 10


async def test_the_journal_is_opened_by_location(tmp_path: Path) -> None:
    rcpts = plain_list(tmp_path / "list.txt", 2)
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: x\n\ny\n")
    journal = tmp_path / "jobs" / "week1.sqlite"
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        base = send_args(tmp_path, sink.port, rcpts, message)
        base = base[: base.index("--journal")]
        by_url = await run([*base, "--journal", f"sqlite:{journal}"], tmp_path)
        by_path = await run([*base, "--journal", str(journal)], tmp_path)
        server = await run([*base, "--journal", "postgresql://mail@db.test/bulk"], tmp_path)
        nursery.cancel_scope.cancel()
    assert by_url.returncode == 0, by_url.stderr
    assert journal.is_file() and not (tmp_path / "sqlite:").exists()
    assert by_path.returncode == 0 and b"2 already final, 0 to send" in by_path.stderr
    assert server.returncode == 2 and b"not available yet" in server.stderr
    assert len(server.stderr.splitlines()) == 1
