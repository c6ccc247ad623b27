"""Progress output: a plain line when not on a terminal, a bar on one, nothing quiet."""

from __future__ import annotations

import io
from pathlib import Path

import trio

from bulkmail.cli.progress import Progress, count_recipients
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


def test_the_total_counts_recipients_not_lines(tmp_path: Path) -> None:
    csv_file = tmp_path / "list.csv"
    csv_file.write_text(
        "email,name\n"
        + "".join(f"u{i}@example.test,U{i}\n" for i in range(10))
        + "\n,Nobody\nu3@EXAMPLE.test,again\n"  # a blank row, no email, a duplicate
    )
    text_file = tmp_path / "list.txt"
    text_file.write_text("# readers\n\na@x.test\nb@x.test\nnot an address\na@x.test\n")
    assert count_recipients(str(csv_file)) == 11  # 10 + the empty row, bounced as missing
    assert count_recipients(str(text_file)) == 3
    assert count_recipients("-") is None
    assert count_recipients(str(tmp_path / "missing.csv")) is None


async def test_the_last_line_is_the_final_state(autojump_clock: trio.abc.Clock) -> None:
    """Results that arrive after the last tick (a stopped run's deferrals)
    still reach the screen: the last line agrees with the summary."""
    out = io.StringIO()
    progress = Progress(enabled=True, total=10, stream=out)
    feed(progress)
    with trio.move_on_after(6):
        await progress.run()
    for _ in range(5):
        progress.add(Result("b@x.test", Status.DEFERRED))
    progress.close()
    lines = out.getvalue().splitlines()
    assert "50.0% 5/10" in lines[0]
    assert "100.0% 10/10" in lines[-1]
    assert "delivered 3  bounced 1  deferred 6  suppressed 0" in lines[-1]


async def test_the_bar_ends_at_n_of_n_on_a_terminal(autojump_clock: trio.abc.Clock) -> None:
    out = FakeTTY()
    progress = Progress(enabled=True, total=5, stream=out)
    with trio.move_on_after(0.3):
        await progress.run()
    feed(progress)
    progress.close()
    last = out.getvalue().rsplit("\r", 1)[1]
    assert last.startswith("[########################] 100.0% 5/5")
    assert last.endswith("\n")


async def test_a_run_too_short_for_a_line_prints_none(autojump_clock: trio.abc.Clock) -> None:
    out = io.StringIO()
    progress = Progress(enabled=True, total=5, stream=out)
    feed(progress)
    progress.close()
    assert out.getvalue() == ""


async def test_a_connection_failure_is_shown_at_once_until_a_delivery(
    autojump_clock: trio.abc.Clock,
) -> None:
    from bulkmail.delivery.connector import ConnectionFailure
    from bulkmail.errors import synthetic_reply

    out = io.StringIO()
    progress = Progress(enabled=True, total=10, stream=out)
    refused = "cannot connect to 127.0.0.1:2: [Errno 111] Connection refused"
    reply = synthetic_reply(451, "4.4.1", refused)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(progress.run)
        await trio.sleep(1)
        progress.connection_failed(ConnectionFailure("relay:127.0.0.1:2", reply, "127.0.0.1", 3, 8))
        await trio.sleep(0.5)  # long before the 5 s tick
        lines = out.getvalue().splitlines()
        assert len(lines) == 1
        assert lines[0].endswith(
            "  | cannot reach relay:127.0.0.1:2: 451 4.4.1 cannot connect to 127.0.0.1:2:"
            " [Errno 111] Connection refused (3 failed attempts, next try in 8s)")
        progress.add(Result("a@x.test", Status.DELIVERED))  # moving again
        await trio.sleep(6)  # the next tick: 1 s quiet after a failure line, then 5 s
        nursery.cancel_scope.cancel()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "cannot reach" not in lines[1]
    assert progress.unreachable["relay:127.0.0.1:2"].failures == 3  # kept for the summary
