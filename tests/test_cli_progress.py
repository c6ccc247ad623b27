"""The progress bar of ``bulkmail send`` on a real terminal (a pty): its
total is the recipients, not the file's lines, it ends at N/N, and after
SIGINT its last line agrees with the summary (issue 16, item 10)."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
from pathlib import Path

import trio

from .test_cli_send import send_args, start_sink, write_csv

BAR = re.compile(r"\] +([\d.]+)% ([\d,]+)/([\d,]+)  delivered ([\d,]+)  bounced ([\d,]+)"
                 r"  deferred ([\d,]+)")
SUMMARY_ROW = re.compile(r"^(delivered|bounced|deferred) +([\d,]+) ", re.MULTILINE)


class Terminal:
    """A child process whose stderr is a pseudo-terminal, read as it writes."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self.output = bytearray()

    async def read_all(self) -> None:
        stream = trio.lowlevel.FdStream(os.dup(self.master))
        try:
            while data := await stream.receive_some(65536):
                self.output += data
        except (trio.BrokenResourceError, OSError):  # EIO: the child has gone
            pass
        finally:
            await stream.aclose()

    def text(self) -> str:
        return self.output.decode("utf-8", "replace").replace("\r\n", "\n")


def last_bar(text: str) -> tuple[str, ...]:
    bars = [m.groups() for m in BAR.finditer(text)]
    assert bars, text
    return bars[-1]


def summary_rows(text: str) -> dict[str, str]:
    return dict(SUMMARY_ROW.findall(text))


async def send_on_a_terminal(
    tmp_path: Path, n: int, *, interrupt_after: int | None = None
) -> tuple[int, str]:
    rows = [{"email": f"u{i}@example.test", "name": f"Reader {i}"} for i in range(n)]
    recipients = write_csv(tmp_path / "list.csv", rows)  # a header line, n recipients
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: Hi ${name}\n\nDear ${name},\n")  # one message each
    terminal = Terminal()
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery, latency=0.02)
        args = send_args(tmp_path, sink.port, recipients, message, "--connections", "1")
        proc = await trio.lowlevel.open_process(
            args, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=terminal.slave,
        )
        os.close(terminal.slave)
        nursery.start_soon(terminal.read_all)
        if interrupt_after is not None:
            while sink.stats.messages < interrupt_after:
                await trio.sleep(0.01)
            proc.send_signal(signal.SIGINT)
        with trio.fail_after(60):
            code = await proc.wait()
        with trio.move_on_after(5):
            while b"total" not in terminal.output:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    os.close(terminal.master)
    return code, terminal.text()


async def test_the_bar_counts_recipients_and_ends_at_n_of_n(tmp_path: Path) -> None:
    code, text = await send_on_a_terminal(tmp_path, 60)
    assert code == 0, text
    share, done, total, delivered, *_ = last_bar(text)
    assert (share, done, total, delivered) == ("100.0", "60", "60", "60")  # not 60/61
    assert summary_rows(text)["delivered"] == "60"


async def test_after_sigint_the_bar_and_the_summary_agree(tmp_path: Path) -> None:
    code, text = await send_on_a_terminal(tmp_path, 400, interrupt_after=30)
    assert code == 75, text
    _, done, total, delivered, bounced, deferred = last_bar(text)
    rows = summary_rows(text)
    assert int(delivered) >= 30 and int(deferred) > 0
    assert (delivered, bounced, deferred) == (rows["delivered"], rows["bounced"],
                                              rows["deferred"])
    assert done == total == "400"
