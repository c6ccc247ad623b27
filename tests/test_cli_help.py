"""Help a user can act on: what the tool does, every option explained, an
example per command, the right usage after a mistake, and a demo that says
what it did (issue 16, item 12)."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys

import pytest

from bulkmail.cli import SUBCOMMANDS, main


def help_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_the_top_level_help_says_what_the_tool_does(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text([], capsys)
    assert "thin layer" not in text
    for words in ("SMTP", "relay", "MX", "resume", "bulkmail demo", "exit status"):
        assert words in text
    listed = {line.split()[0] for line in text.splitlines() if line.startswith("    ")}
    assert set(SUBCOMMANDS) <= listed


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_every_option_has_help_text(command: str) -> None:
    parser = argparse.ArgumentParser()
    importlib.import_module(SUBCOMMANDS[command][0]).add_arguments(parser)
    missing = [a.option_strings or a.dest for a in parser._actions if not a.help]
    assert missing == []


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_each_command_shows_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text([command], capsys)
    example = text.split("example:\n", 1)[1]
    assert example.lstrip().startswith(f"bulkmail {command}")


@pytest.mark.parametrize("command", ["send", "sink", "report", "demo"])
def test_an_unknown_flag_prints_the_commands_usage(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    required = {"send": ["--sender", "a@b.test", "--recipients", "r", "--message", "m"],
                "report": ["journal.sqlite"]}.get(command, [])
    with pytest.raises(SystemExit) as exit_:
        main([command, *required, "--no-such-flag"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: bulkmail {command} ")
    assert err.endswith(f"bulkmail {command}: error: unrecognized arguments: --no-such-flag\n")


def test_the_send_help_explains_the_options_issue_16_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = " ".join(help_text(["send"], capsys).split())
    assert "--auth-user USER log in to the relay" in text
    assert "--allow-plaintext-auth allow sending the password without TLS" in text
    assert "--retry-first DURATION wait before the first retry" in text
    assert "--quiet no progress line and no summary" in text
    assert "--timeout STAGE=DURATION[,...]" in text and "data_done" in text


def test_the_demo_says_what_it_did() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bulkmail", "demo", "--recipients", "60", "--domains", "6"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "sent a templated newsletter" in out
    assert "to 60 generated recipients at 6 domains" in out
    assert "built-in SMTP sink on 127.0.0.1:" in out and "nothing left this machine" in out
    assert "top domains" not in out  # an even spread by construction says nothing
    assert "sink received 60 messages for 60 recipients" in out


def test_output_into_a_closed_pipe_is_not_a_traceback() -> None:
    """``bulkmail report j | head``: the reader leaving early is no error."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # a reader that has already gone
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bulkmail", "demo", "--recipients", "20", "--domains", "2"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, check=False,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode == 0
