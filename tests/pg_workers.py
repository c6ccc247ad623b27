"""Helpers for tests running ``bulkmail worker`` processes against the sink."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import trio

from bulkmail.sink import Sink
from bulkmail.store import PgStore
from bulkmail.store.job_spec import JobSpec
from bulkmail.store.job_state import LOADED, mark_loaded

ROOT = Path(__file__).resolve().parent.parent
MESSAGE = b"From: news@example.org\r\nSubject: news\r\n\r\nHello ${email}\r\n"


def addresses(n: int, domains: int) -> list[str]:
    return [f"user{i}@d{i % domains}.example" for i in range(n)]


def create_loading_job(store_url: str, **spec: object) -> int:
    """A job as ``job create`` makes it, still marked as loading: workers
    started now wait for it instead of finding it empty and finishing it."""
    options = JobSpec(sender="news@example.org", message=MESSAGE, **spec).to_options()  # type: ignore[arg-type]
    with PgStore(store_url) as store:
        return store.create_job(options={**options, LOADED: False})


def finish_loading(store_url: str, job: int, recipients: list[str]) -> None:
    with PgStore(store_url) as store:
        store.load_recipients(job, recipients)
        mark_loaded(store, job)


async def start_worker(store_url: str, job: int, sink: Sink, source: str,
                       *extra: str) -> trio.Process:
    """``bulkmail worker`` sending from ``source`` (a loopback address: the
    sink's records tell the workers apart by it)."""
    return await trio.lowlevel.open_process(
        [sys.executable, "-m", "bulkmail", "worker", "--db", store_url, "--job", str(job),
         "--relay", f"127.0.0.1:{sink.port}", "--tls", "none", "--source-address", source,
         "--quiet", *extra],
        cwd=ROOT, stderr=subprocess.PIPE,
    )


async def finish(process: trio.Process, timeout: float = 60) -> tuple[int, str]:
    """Wait for a worker; its exit status and stderr."""
    assert process.stderr is not None
    err = b""
    with trio.fail_after(timeout):
        async with process.stderr:
            while chunk := await process.stderr.receive_some(65536):
                err += chunk
        await process.wait()
    return process.returncode, err.decode()


def received(sink: Sink) -> Counter[str]:
    """How many copies of each recipient the sink accepted."""
    return Counter(r for message in sink.messages for r in message.rcpts)


def senders_by_source(sink: Sink) -> Counter[str]:
    """Recipients accepted per client address (per worker)."""
    return Counter(message.peer for message in sink.messages for _ in message.rcpts)
