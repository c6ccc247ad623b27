"""Recipients files as operators really have them: a stray Latin-1 byte, Excel's
UTF-8 with a byte-order mark, UTF-16, binary (issues 15.9 and 16.4).  The CLI
runs as a subprocess against the sink on 127.0.0.1."""

from __future__ import annotations

import codecs
from pathlib import Path

import trio

from .test_cli_send import journal_records, received, report, run, send_args, start_sink


def mixed_list(path: Path) -> Path:
    path.write_bytes(b"a@example.test\ncaf\xe9@example.test\nb@example.test\n")
    return path


async def test_a_line_that_is_not_utf8_bounces_and_the_rest_go_out(tmp_path: Path) -> None:
    rcpts = mixed_list(tmp_path / "list.txt")
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: x\n\ny\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        proc = await run(send_args(tmp_path, sink.port, rcpts, message), tmp_path)
        no_journal_dir = tmp_path / "nj"
        no_journal_dir.mkdir()
        no_journal = await run(
            send_args(no_journal_dir, sink.port, rcpts, message, "--no-journal"), no_journal_dir
        )
        nursery.cancel_scope.cancel()
    for directory, result in ((tmp_path, proc), (no_journal_dir, no_journal)):
        assert result.returncode == 0, result.stderr
        assert b"Traceback" not in result.stderr
        rep = report(directory)
        bad = rep["caf\\xe9@example.test"]
        assert bad["status"] == "bounced" and bad["code"] == 553 and bad["enhanced"] == "5.1.3"
        assert "line 2 is not UTF-8" in str(bad["reply"]) and "0xe9" in str(bad["reply"])
        assert rep["a@example.test"]["status"] == "delivered"
        assert rep["b@example.test"]["status"] == "delivered"
    assert received(sink) == {"a@example.test": 2, "b@example.test": 2}
    records = journal_records(tmp_path / "journal.sqlite")
    assert records["caf\\xe9@example.test"].status.value == "bounced"


async def test_a_csv_row_that_is_not_utf8_bounces_alone(tmp_path: Path) -> None:
    rcpts = tmp_path / "list.csv"
    rcpts.write_bytes(b"email,name\na@example.test,Ann\nb@example.test,Ren\xe9e\n")
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: hi ${name}\n\nx\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        proc = await run(send_args(tmp_path, sink.port, rcpts, message), tmp_path)
        nursery.cancel_scope.cancel()
    assert proc.returncode == 0, proc.stderr
    rep = report(tmp_path)
    assert rep["b@example.test"]["status"] == "bounced"
    assert "line 3 is not UTF-8" in str(rep["b@example.test"]["reply"])
    assert received(sink) == {"a@example.test": 1}


async def test_a_utf8_csv_with_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    rcpts = tmp_path / "excel.csv"
    rcpts.write_bytes(codecs.BOM_UTF8 + "email,name\r\na@example.test,Zoë\r\n".encode())
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: hi ${name}\n\nx\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        proc = await run(send_args(tmp_path, sink.port, rcpts, message), tmp_path)
        nursery.cancel_scope.cancel()
    assert proc.returncode == 0, proc.stderr
    assert report(tmp_path)["a@example.test"]["status"] == "delivered"
    assert b"Subject: hi Zo\xc3\xab" in sink.messages[0].content


async def test_utf16_or_binary_recipients_are_refused_at_start(tmp_path: Path) -> None:
    message = tmp_path / "msg.eml"
    message.write_bytes(b"Subject: x\n\ny\n")
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes("email\r\na@example.test\r\n".encode("utf-16"))
    binary = tmp_path / "list.bin"
    binary.write_bytes(b"a@example.test\n\x00\x01\x02\x03\n")
    async with trio.open_nursery() as nursery:
        sink = await start_sink(nursery)
        wide = await run(send_args(tmp_path, sink.port, utf16, message), tmp_path)
        raw = await run(send_args(tmp_path, sink.port, binary, message), tmp_path)
        piped = await trio.run_process(
            send_args(tmp_path, sink.port, Path("-"), message), cwd=tmp_path,
            stdin="email\na@example.test\n".encode("utf-16"), capture_stdout=True,
            capture_stderr=True, check=False,
        )
        nursery.cancel_scope.cancel()
    assert wide.returncode == 2 and b"UTF-16" in wide.stderr
    assert len(wide.stderr.splitlines()) == 1
    assert raw.returncode == 2 and b"not a text file" in raw.stderr
    assert piped.returncode == 2 and b"UTF-16" in piped.stderr
    assert b"Traceback" not in wide.stderr + raw.stderr + piped.stderr
    assert sink.stats.messages == 0
