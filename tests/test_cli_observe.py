"""``bulkmail send --metrics --trace`` and ``bulkmail status``, as subprocesses
against the project's sink on 127.0.0.1."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from bulkmail.cli.status_command import collect, render
from bulkmail.journal import RecipientRecord
from bulkmail.results import Status

from .pgutil import pg_url, store_url
from .test_cli_pg_job import create, worker_args
from .test_cli_send import BULKMAIL, run, send_args, start_sink
from .test_metrics import parse, scrape, total
from .test_session_records import check_record

__all__ = ["pg_url", "store_url"]  # fixtures, imported for pytest


def write_inputs(tmp: Path, n: int, domains: tuple[str, ...] = ("a.test",)) -> tuple[Path, Path]:
    rcpts = tmp / "list.txt"
    rcpts.write_text("".join(f"u{i}@{domains[i % len(domains)]}\n" for i in range(n)))
    message = tmp / "msg.eml"
    message.write_bytes(b"Subject: observed\n\nHello.\n")
    return rcpts, message


async def test_send_serves_metrics_during_the_run_and_writes_a_trace(tmp_path: Path) -> None:
    rcpts, message = write_inputs(tmp_path, 200)
    trace = tmp_path / "trace.jsonl"
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.02)
        args = send_args(tmp_path, sink.port, rcpts, message, "--max-rcpts", "5",
                         "--connections", "2", "--metrics", "127.0.0.1:0",
                         "--trace", str(trace), "--trace-sample", "1")
        proc = await trio.lowlevel.open_process(args, cwd=tmp_path, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        seen = b""
        with trio.fail_after(30):
            while (found := re.search(rb"metrics: http://127\.0\.0\.1:(\d+)/metrics", seen)) \
                    is None:
                chunk = await proc.stderr.receive_some(4096)
                assert chunk, seen
                seen += chunk
        _, body = await scrape(int(found.group(1)))
        during = parse(body)
        while await proc.stderr.receive_some(4096):
            pass
        assert await proc.wait() == 0
        nursery.cancel_scope.cancel()
    assert "bulkmail_recipients" in {f.name for f in text_string_to_metric_families(body)}
    assert total(during, "bulkmail_results_total") <= 200
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    assert records
    for record in records:
        check_record(record)
    assert sum(len(t["recipients"]) for r in records for t in r["transactions"]) == 200


async def test_bad_metrics_addresses_are_one_line_and_exit_2(tmp_path: Path) -> None:
    rcpts, message = write_inputs(tmp_path, 1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for address, says in (("nonsense", "expected ADDR:PORT"),
                              (f"127.0.0.1:{port}", f"--metrics 127.0.0.1:{port}:")):
            proc = await run(send_args(tmp_path, 9, rcpts, message, "--metrics", address),
                             tmp_path)
            err = proc.stderr.decode()
            assert proc.returncode == 2, err
            assert says in err and "Traceback" not in err
    # one endpoint (and one trace file) per process would collide: refused for now
    for option in (["--metrics", "127.0.0.1:0"], ["--trace", str(tmp_path / "t.jsonl")]):
        proc = await run(send_args(tmp_path, 9, rcpts, message, "--processes", "2", *option),
                         tmp_path)
        assert proc.returncode == 2
        assert proc.stderr.decode().strip().endswith("not --processes")


async def test_status_shows_deferred_domains_by_age_with_the_last_reason(tmp_path: Path) -> None:
    rcpts, message = write_inputs(tmp_path, 30, ("a.test", "b.test", "c.test"))
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, defer_rate=1.0)  # every RCPT gets 450
        proc = await run(send_args(tmp_path, sink.port, rcpts, message, "--retry-for", "0"),
                         tmp_path)
        nursery.cancel_scope.cancel()
    assert proc.returncode == 75, proc.stderr.decode()
    journal = str(tmp_path / "journal.sqlite")
    status = await run([*BULKMAIL, "status", journal, "--top", "2"], tmp_path)
    out = status.stdout.decode()
    assert status.returncode == 0, status.stderr.decode()
    assert "deferred 30" in out and "30 still to send" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["TOTAL"][1:3] == ["30", "30"]  # all of them younger than 5 minutes
    assert rows["a.test"][1] == "10" and rows["b.test"][1] == "10"
    assert rows["(1"][2] == "10"  # "(1 others)": c.test
    assert " ".join(rows["a.test"][12:]).startswith("450 4.2.1 ")  # the sink's deferral
    assert len(rows["(1"]) == 13  # no reason for a sum of domains


async def test_status_watch_redraws_and_a_missing_journal_is_exit_2(tmp_path: Path) -> None:
    rcpts, message = write_inputs(tmp_path, 3)
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        proc = await run(send_args(tmp_path, sink.port, rcpts, message), tmp_path)
        nursery.cancel_scope.cancel()
    assert proc.returncode == 0
    journal = str(tmp_path / "journal.sqlite")
    watch = await run([*BULKMAIL, "status", journal, "--watch", "--interval", "0.1",
                       "--count", "2"], tmp_path)
    out = watch.stdout.decode()
    assert watch.returncode == 0
    assert out.count("recorded 3: delivered 3") == 2 and "nothing queued or deferred" in out
    missing = await run([*BULKMAIL, "status", str(tmp_path / "nope.sqlite")], tmp_path)
    assert missing.returncode == 2
    expected = f"bulkmail status: no journal at {tmp_path}/nope.sqlite"
    assert missing.stderr.decode().strip() == expected


def test_the_table_buckets_by_age_like_qshape() -> None:
    now = 1_000_000.0

    def record(address: str, status: Status, minutes: float, code: int | None = None,
               reply: str | None = None) -> RecipientRecord:
        return RecipientRecord(address, status, code, "4.7.1" if code else None, reply, 1,
                               None, None, False, now - minutes * 60)

    job = collect([
        record("a@x.test", Status.DEFERRED, 1, 451, "the latest"),
        record("b@x.test", Status.DEFERRED, 7, 421, "earlier\nsecond line"),
        record("c@x.test", Status.DEFERRED, 700, 450, "oldest"),
        record("d@x.test", Status.IN_DOUBT, 2000),
        record("e@y.test", Status.DELIVERED, 0.5),
        record("f@y.test", Status.BOUNCED, 30),
    ], now)
    assert job.recent == 1  # e, within the last minute
    x = job.domains["x.test"]
    assert x.total == 4 and x.buckets == [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    assert x.last_deferral is not None and x.last_deferral[1] == "451 4.7.1 the latest"
    assert "y.test" not in job.domains
    text = render(job, now, 10, "j")
    assert "recorded 6: delivered 1, bounced 1, deferred 3, in doubt 1" in text
    assert "4 still to send" in text


async def test_a_worker_serves_its_own_metrics(store_url: str, tmp_path: Path) -> None:
    """``bulkmail worker --metrics``: what this worker sent, scraped while it runs."""
    job = await create(store_url, tmp_path, "email\n" + "".join(
        f"u{i}@a.test\n" for i in range(40)))
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        args = [*BULKMAIL, *worker_args(store_url, sink.port, "--job", str(job), "--follow",
                                        "--metrics", "127.0.0.1:0")]
        proc = await trio.lowlevel.open_process(args, cwd=tmp_path, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        seen = b""
        with trio.fail_after(60):
            while (found := re.search(rb"metrics: http://127\.0\.0\.1:(\d+)/metrics", seen)) \
                    is None:
                chunk = await proc.stderr.receive_some(4096)
                assert chunk, seen
                seen += chunk
            port = int(found.group(1))
            samples = parse((await scrape(port))[1])
            while total(samples, "bulkmail_results_total") < 40:  # --follow: it stays up
                await trio.sleep(0.05)
                samples = parse((await scrape(port))[1])
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
        nursery.cancel_scope.cancel()
    assert total(samples, "bulkmail_results_total", result="delivered") == 40
    assert sink.stats.recipients == 40
    assert total(samples, "bulkmail_connections") >= 1


async def test_status_of_a_job_in_postgresql(store_url: str, tmp_path: Path) -> None:
    """``bulkmail status postgresql://...?job=ID``: what every worker recorded."""
    job = await create(store_url, tmp_path, "email\n" + "".join(
        f"u{i}@{d}\n" for i in range(6) for d in ("a.test", "b.test")), "--retry-for", "0")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, defer_rate=1.0)  # every RCPT gets 450
        done = await run([*BULKMAIL, *worker_args(store_url, sink.port, "--job", str(job))],
                         tmp_path)
        nursery.cancel_scope.cancel()
    assert done.returncode == 75, done.stderr.decode()
    status = await run([*BULKMAIL, "status", f"{store_url}&job={job}"], tmp_path)
    out = status.stdout.decode()
    assert status.returncode == 0, status.stderr.decode()
    assert "deferred 12" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["a.test"][1] == rows["b.test"][1] == "6"
    assert " ".join(rows["a.test"][12:]).startswith("450 4.2.1 ")
    unknown = await run([*BULKMAIL, "status", f"{store_url}&job=424242"], tmp_path)
    assert unknown.returncode == 2 and len(unknown.stderr.splitlines()) == 1
