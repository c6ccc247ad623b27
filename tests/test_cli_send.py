"""``bulkmail send`` end to end, as a subprocess, against the sink and aiosmtpd:
inputs, templates, reports, exit statuses, resume after SIGKILL, SIGINT."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import trio

from bulkmail.journal import JournalError, RecipientRecord, SQLiteJournal
from bulkmail.results import Status
from bulkmail.sink import Sink, SinkConfig

from .aiosmtpd_util import aiosmtpd_server
from .scripted import Conn, MiniSMTP, start_scripted

BULKMAIL = [sys.executable, "-m", "bulkmail"]



def journal_records(path: Path) -> dict[str, RecipientRecord]:
    """What another reader (a resumed run, ``bulkmail report``) sees in the journal."""
    with SQLiteJournal(path) as journal:
        return {r.address: r for r in journal.iter_records()}

def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def send_args(tmp: Path, port: int, recipients: Path, message: Path, *extra: str) -> list[str]:
    return [
        *BULKMAIL, "send", "--sender", "news@sender.test",
        "--recipients", str(recipients), "--message", str(message),
        "--relay", f"127.0.0.1:{port}", "--tls", "none",
        "--report", str(tmp / "report.jsonl"), "--journal", str(tmp / "journal.sqlite"),
        *extra,
    ]


async def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(args, cwd=cwd, capture_stdout=True, capture_stderr=True,
                                  check=False)


def report(tmp: Path) -> dict[str, dict[str, object]]:
    lines = (tmp / "report.jsonl").read_text().splitlines()
    return {r["recipient"]: r for r in map(json.loads, lines)}


async def start_sink(nursery: trio.Nursery, **kwargs: object) -> Sink:
    sink = Sink(SinkConfig(record_messages=True, **kwargs))  # type: ignore[arg-type]
    await nursery.start(sink.serve)
    return sink


def received(sink: Sink) -> Counter[str]:
    return Counter(r for m in sink.messages for r in m.rcpts)


async def test_text_recipients_batched_with_report_and_exit_0(tmp_path: Path) -> None:
    rcpts = tmp_path / "list.txt"
    rcpts.write_text("\n".join(
        [f"u{i}@example.test" for i in range(120)]
        + ["", "# a comment", "not an address", "u5@example.test", "u5@EXAMPLE.test"]
    ) + "\n")
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: same for all\n\nHello.\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        proc = await run(send_args(tmp_path, sink.port, rcpts, message, "--max-rcpts", "50"),
                         tmp_path)
        nursery.cancel_scope.cancel()
    assert proc.returncode == 0, proc.stderr
    rep = report(tmp_path)
    assert len(rep) == 121  # 120 + the malformed line; duplicates sent once
    assert rep["not an address"]["status"] == "bounced"
    assert rep["not an address"]["code"] == 553
    assert rep["u5@example.test"]["status"] == "delivered"
    assert set(rep["u7@example.test"]) >= {"recipient", "status", "code", "enhanced", "reply",
                                            "attempts"}
    assert sink.stats.recipients == 120 and sink.stats.messages == 3
    assert b"delivered" in proc.stderr and b"120" in proc.stderr


async def test_csv_template_personalises_and_refuses_crlf_values(tmp_path: Path) -> None:
    rows = [{"email": f"u{i}@example.test", "name": f"Reader {i}"} for i in range(10)]
    rows.append({"email": "evil@example.test", "name": "Eve\r\nBcc: victim@example.test"})
    recipients = write_csv(tmp_path / "list.csv", rows)
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: Hi ${name}\n\nDear ${name},\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        proc = await run(send_args(tmp_path, sink.port, recipients, message), tmp_path)
        nursery.cancel_scope.cancel()
    assert proc.returncode == 0, proc.stderr
    rep = report(tmp_path)
    assert rep["evil@example.test"]["status"] == "bounced"
    assert "injection" in str(rep["evil@example.test"]["reply"])
    bodies = {m.rcpts[0]: m.content for m in sink.messages}
    # Message-ID and Date are added (the file had none); the rest is as written
    assert bodies["u3@example.test"].endswith(b"Subject: Hi Reader 3\r\n\r\nDear Reader 3,\r\n")
    assert bodies["u3@example.test"].startswith(b"Message-ID: <")
    assert "evil@example.test" not in bodies
    assert all(b"victim" not in body for body in bodies.values())


async def test_deferred_recipients_exit_75_and_suppressed_are_skipped(tmp_path: Path) -> None:
    rcpts = tmp_path / "list.txt"
    rcpts.write_text("ok@example.test\ntempfail@example.test\nblocked@example.test\n")
    suppress = tmp_path / "suppress.txt"
    suppress.write_text("Blocked@example.test\n")
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: x\n\ny\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        proc = await run(send_args(tmp_path, sink.port, rcpts, message, "--suppress",
                                   str(suppress), "--retry-for", "0"), tmp_path)
        nursery.cancel_scope.cancel()
    assert proc.returncode == 75, proc.stderr
    rep = report(tmp_path)
    assert {a: r["status"] for a, r in rep.items()} == {
        "ok@example.test": "delivered",
        "tempfail@example.test": "deferred",
        "blocked@example.test": "suppressed",
    }
    assert received(sink) == Counter({"ok@example.test": 1})


async def test_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: x\n\ny\n")
    proc = await run(send_args(tmp_path, 1, tmp_path / "missing.txt", message), tmp_path)
    assert proc.returncode == 2
    assert b"missing.txt" in proc.stderr and len(proc.stderr.splitlines()) == 1
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("name,city\nann,paris\n")
    proc = await run(send_args(tmp_path, 1, bad_csv, message), tmp_path)
    assert proc.returncode == 2 and b"email" in proc.stderr


async def test_resume_after_sigkill_loses_nobody(tmp_path: Path) -> None:
    n = 400
    rcpts = tmp_path / "list.csv"
    write_csv(rcpts, [{"email": f"u{i}@example.test", "n": str(i)} for i in range(n)])
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: ${n}\n\nbody ${n}\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.01)
        args = send_args(tmp_path, sink.port, rcpts, message, "--connections", "4", "--quiet")
        proc = await trio.lowlevel.open_process(args, cwd=tmp_path)
        while sink.stats.messages < n // 4:
            await trio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        first_run = sink.stats.messages
        assert first_run < n
        done = await run(args, tmp_path)
        nursery.cancel_scope.cancel()
    assert done.returncode == 0, done.stderr
    copies = received(sink)
    assert set(copies) == {f"u{i}@example.test" for i in range(n)}  # everyone, at least once
    records = journal_records(tmp_path / "journal.sqlite")
    flagged = {a for a, r in records.items() if r.possible_duplicate}
    statuses = Counter(r.status.value for r in records.values())
    assert statuses == Counter({"delivered": n})
    duplicates = {a for a, c in copies.items() if c > 1}
    assert duplicates <= flagged  # extra copies only for recipients marked in doubt
    assert all(c <= 2 for c in copies.values())


async def test_sigint_stops_cleanly_exit_75_and_rerun_finishes(tmp_path: Path) -> None:
    n = 300
    rcpts = tmp_path / "list.txt"
    rcpts.write_text("".join(f"u{i}@example.test\n" for i in range(n)))
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: ${email}\n\nx\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.01)
        args = send_args(tmp_path, sink.port, rcpts, message, "--connections", "2")
        proc = await trio.lowlevel.open_process(args, cwd=tmp_path)
        while sink.stats.messages < 20:
            await trio.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            code = await proc.wait()
        stopped_at = sink.stats.messages
        rep = report(tmp_path)
        rerun = await run(args, tmp_path)
        nursery.cancel_scope.cancel()
    assert code == 75
    assert 20 <= stopped_at < n
    assert len(rep) == n  # every recipient has a line: delivered or deferred
    assert {r["status"] for r in rep.values()} == {"delivered", "deferred"}
    assert rerun.returncode == 0, rerun.stderr
    assert received(sink) == Counter({f"u{i}@example.test": 1 for i in range(n)})


async def test_report_command_summarises_a_journal(tmp_path: Path) -> None:
    rcpts = tmp_path / "list.txt"
    rcpts.write_text("a@example.test\npermfail@example.test\n")
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: x\n\ny\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        await run(send_args(tmp_path, sink.port, rcpts, message), tmp_path)
        nursery.cancel_scope.cancel()
    proc = await run([*BULKMAIL, "report", str(tmp_path / "journal.sqlite")], tmp_path)
    assert proc.returncode == 0
    out = proc.stdout.decode()
    assert "delivered" in out and "bounced" in out and "550 5.7.1" in out


async def test_send_to_aiosmtpd_with_stdin_recipients(tmp_path: Path) -> None:
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: x\n\ny\n")
    with aiosmtpd_server() as (handler, port):
        args = send_args(tmp_path, port, Path("-"), message, "--no-journal")
        proc = await trio.run_process(
            args, cwd=tmp_path, stdin=b"a@example.test\nb@example.test\n",
            capture_stdout=True, capture_stderr=True, check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert [m.rcpt_tos for m in handler.messages] == [["a@example.test", "b@example.test"]]
    assert not (tmp_path / "journal.sqlite").exists()





async def test_in_doubt_is_on_disk_before_the_end_of_data_and_resent_once(
    tmp_path: Path,
) -> None:
    from email import message_from_bytes


    journal = tmp_path / "journal.sqlite"
    seen_in_journal: list[str] = []
    copies: list[bytes] = []
    state: dict[str, object] = {"kill": True, "proc": None}

    def data_done(rcpts: list[str], content: bytes) -> str | None:
        copies.append(content)
        # the end of data has arrived: the journal must already say "in doubt"
        record = journal_records(journal).get(rcpts[0])
        seen_in_journal.extend([record.status.value] if record else [])
        if state["kill"]:
            state["kill"] = False
            state["proc"].send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            return None  # and the 250 never leaves
        return "250 2.0.0 queued\r\n"

    server = MiniSMTP(data_done=data_done)
    rcpts = tmp_path / "list.txt"
    rcpts.write_text("alice@example.test\n")
    message = tmp_path / "msg.eml"
    message.write_bytes(b"From: news@sender.test\nSubject: once\n\nhello\n")
    async with trio.open_nursery() as nursery:
        _, port = await start_scripted(nursery, server)
        args = send_args(tmp_path, port, rcpts, message)
        state["proc"] = await trio.lowlevel.open_process(args, cwd=tmp_path)
        await state["proc"].wait()  # type: ignore[union-attr]
        resumed = await run(args, tmp_path)
        nursery.cancel_scope.cancel()
    assert seen_in_journal[0] == "in_doubt"
    assert resumed.returncode == 0, resumed.stderr
    rep = report(tmp_path)
    assert rep["alice@example.test"]["status"] == "delivered"
    assert rep["alice@example.test"]["possible_duplicate"] is True
    assert len(copies) == 2  # resent exactly once
    ids = {message_from_bytes(c.replace(b"\r\n..", b"\r\n."))["Message-ID"] for c in copies}
    assert len(ids) == 1  # the resend keeps its Message-ID: receivers can drop the copy


async def test_required_starttls_with_a_private_ca_and_auth(tmp_path: Path) -> None:
    from .sinkutil import make_tls

    ca, server_ctx, _ = make_tls(tmp_path)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    rcpts = tmp_path / "list.txt"
    rcpts.write_text("a@example.test\n")
    message = tmp_path / "msg.eml"
    message.write_bytes(b"From: news@sender.test\nSubject: x\n\ny\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, ssl_context=server_ctx, auth=("news", "s3cret"))
        base = [*BULKMAIL, "send", "--sender", "news@sender.test", "--recipients", str(rcpts),
                "--message", str(message), "--relay", f"localhost:{sink.port}",
                "--no-journal", "--quiet"]
        env = {**os.environ, "SMTP_PASSWORD": "s3cret"}
        ok = await trio.run_process(
            [*base, "--tls", "starttls", "--tls-ca", str(ca_file), "--auth-user", "news",
             "--auth-password-env", "SMTP_PASSWORD", "--report", str(tmp_path / "ok.jsonl")],
            env=env, capture_stderr=True, check=False)
        # the system CAs do not know the test CA: verification fails, nothing is sent
        untrusted = await trio.run_process(
            [*base, "--tls", "starttls", "--auth-user", "news",
             "--auth-password-env", "SMTP_PASSWORD", "--retry-for", "0",
             "--report", str(tmp_path / "bad.jsonl")],
            env=env, capture_stderr=True, check=False)
        missing = await trio.run_process(
            [*base, "--auth-user", "news", "--auth-password-env", "NOT_SET"],
            env=env, capture_stderr=True, check=False)
        nursery.cancel_scope.cancel()
    assert ok.returncode == 0, ok.stderr
    assert sink.stats.messages == 1
    assert untrusted.returncode == 75
    bad = json.loads((tmp_path / "bad.jsonl").read_text())
    assert bad["status"] == "deferred" and "TLS" in bad["reply"]
    assert missing.returncode == 2 and b"auth-password-env" in missing.stderr


async def test_shaping_file_and_source_addresses_from_the_cli(tmp_path: Path) -> None:
    rcpts = tmp_path / "list.txt"
    rcpts.write_text("".join(f"u{i}@example.test\n" for i in range(60)))
    message = tmp_path / "msg.eml"
    message.write_bytes(b"From: news@sender.test\nSubject: ${email}\n\nx\n")
    shaping = tmp_path / "shaping.toml"
    shaping.write_text('[default]\nconnections = 8\n\n[domains."*.test"]\nconnections = 2\n'
                       "messages_per_connection = 10\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.005)
        proc = await run(send_args(tmp_path, sink.port, rcpts, message, "--shaping",
                                   str(shaping), "--source-address", "127.0.0.7",
                                   "--source-address", "127.0.0.8"), tmp_path)
        nursery.cancel_scope.cancel()
    assert proc.returncode == 0, proc.stderr
    assert sink.stats.messages == 60
    assert sink.stats.max_active_sessions <= 2  # the rule for *.test, not the default 8
    assert sink.stats.sessions >= 6  # 10 messages per connection
    assert set(sink.stats.peers) == {"127.0.0.7", "127.0.0.8"}


async def test_bad_shaping_file_is_a_usage_error(tmp_path: Path) -> None:
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: x\n\ny\n")
    rcpts = tmp_path / "list.txt"
    rcpts.write_text("a@example.test\n")
    shaping = tmp_path / "shaping.toml"
    shaping.write_text('[domains."x.test"]\nrate = "fast"\n')
    proc = await run(send_args(tmp_path, 1, rcpts, message, "--shaping", str(shaping)), tmp_path)
    assert proc.returncode == 2 and b"rate" in proc.stderr


class StallingServer:
    """A scripted SMTP server that accepts the first ``accept`` messages and then
    goes silent (every later reply held until :meth:`release`): a run that is
    certainly still busy, however loaded the machine, when a test signals it.

    A message whose reply is held counts as received (``mini.delivered``): a
    real server may keep it, so a resend is a duplicate that must be flagged.
    """

    def __init__(self, accept: int) -> None:
        self.accept = accept
        self.mini = MiniSMTP()
        self.released = trio.Event()

    async def __call__(self, conn: Conn) -> None:
        send = conn.send

        async def held_send(data: bytes | str) -> None:
            if self.mini.transactions > self.accept:
                await self.released.wait()
            await send(data)

        conn.send = held_send  # type: ignore[method-assign]
        await self.mini(conn)

    def release(self) -> None:
        self.accept = 1 << 30
        self.released.set()


def delivered_in_journal(path: Path) -> int:
    """Recipients a running send has recorded delivered (a reader may look in)."""
    if not path.exists():
        return 0
    try:
        return sum(r.status is Status.DELIVERED for r in journal_records(path).values())
    except (JournalError, sqlite3.Error):
        return 0  # not created yet


async def interrupt_twice(
    proc: trio.Process, stderr: trio.abc.ReceiveStream, journal: Path, accepted: int
) -> bytes:
    """SIGINT once the run has recorded ``accepted`` deliveries, SIGINT again once
    the first was acknowledged -- never after the run ended; stderr until then."""
    while delivered_in_journal(journal) < accepted:
        await trio.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    err = b""
    while b"stopping: finishing in-flight transactions" not in err:
        chunk = await stderr.receive_some()
        assert chunk, err  # the run is held by the server: it cannot have ended
        err += chunk
    proc.send_signal(signal.SIGINT)
    return err


async def read_to_end(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


async def test_a_second_signal_exits_at_once_and_loses_nobody(tmp_path: Path) -> None:
    n = 300
    rcpts = tmp_path / "list.txt"
    rcpts.write_text("".join(f"u{i}@example.test\n" for i in range(n)))
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: ${email}\n\nx\n")
    server = StallingServer(accept=10)
    async with trio.open_nursery() as nursery:
        _, port = await start_scripted(nursery, server)
        args = send_args(tmp_path, port, rcpts, message, "--connections", "2")
        proc = await trio.lowlevel.open_process(args, cwd=tmp_path, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        with trio.fail_after(30):
            await interrupt_twice(proc, proc.stderr, tmp_path / "journal.sqlite", 10)
        with trio.fail_after(10):  # at once: the replies in flight would never come
            await read_to_end(proc.stderr)
            code = await proc.wait()
        server.release()
        rerun = await run(args, tmp_path)
        nursery.cancel_scope.cancel()
    assert code == 75
    assert rerun.returncode == 0, rerun.stderr
    copies = Counter(server.mini.delivered)
    assert set(copies) == {f"u{i}@example.test" for i in range(n)}
    records = journal_records(tmp_path / "journal.sqlite")
    flagged = {a for a, r in records.items() if r.possible_duplicate}
    duplicates = {a for a, c in copies.items() if c > 1}
    assert duplicates  # the held messages were resent ...
    assert duplicates <= flagged  # ... and every copy beyond one is flagged


async def test_bad_sender_unwritable_report_and_corrupt_journal_exit_2(tmp_path: Path) -> None:
    rcpts = tmp_path / "list.txt"
    rcpts.write_text("a@example.test\n")
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: x\n\ny\n")
    args = send_args(tmp_path, 1, rcpts, message)
    bad_sender = [a if a != "news@sender.test" else "no sender" for a in args]
    proc = await run(bad_sender, tmp_path)
    assert proc.returncode == 2 and b"--sender" in proc.stderr
    no_report_dir = [*args, "--report", str(tmp_path / "missing" / "r.jsonl")]
    proc = await run(no_report_dir, tmp_path)
    assert proc.returncode == 2 and b"r.jsonl" in proc.stderr
    (tmp_path / "journal.sqlite").write_bytes(b"not a database" * 100)
    proc = await run(args, tmp_path)
    assert proc.returncode == 2 and b"journal" in proc.stderr
    assert b"Traceback" not in proc.stderr
