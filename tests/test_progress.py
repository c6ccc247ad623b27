"""Progress output: a plain line when not on a terminal, a bar on one, nothing quiet."""

from __future__ import annotations

import io

import trio

from bulkmail.cli.progress import Progress
from bulkmail.results import Result, Status


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def feed(progress: Progress) -> None:
    for status in [Status.DELIVERED] * 3 + [Status.BOUNCED, Status.DEFERRED]:
        progress.add(Result("a@x.test", status))


async def test_plain_lines_every_few_seconds_off_a_terminal(
    autojump_clock: trio.abc.Clock,
) -> None:
    out = io.StringIO()
    progress = Progress(enabled=True, total=10, stream=out)
    feed(progress)
    with trio.move_on_after(11):
        await progress.run()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # at 5 s and 10 s
    assert "50.0% 5/10" in lines[0]
    assert "delivered 3  bounced 1  deferred 1  suppressed 0" in lines[0]
    assert "ETA" in lines[0] and "[" not in lines[0]  # no bar in a log file


async def test_a_bar_on_a_terminal(autojump_clock: trio.abc.Clock) -> None:
    out = FakeTTY()
    progress = Progress(enabled=True, total=10, stream=out)
    feed(progress)
    with trio.move_on_after(0.3):
        await progress.run()
    progress.close()
    text = out.getvalue()
    assert text.startswith("\r[############------------]")
    assert text.endswith("\n")


async def test_quiet_prints_nothing(autojump_clock: trio.abc.Clock) -> None:
    out = io.StringIO()
    progress = Progress(enabled=False, total=None, stream=out)
    feed(progress)
    with trio.move_on_after(30):
        await progress.run()
    progress.message("stopping")
    assert out.getvalue() == ""
