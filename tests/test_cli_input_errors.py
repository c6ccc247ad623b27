"""Bad command-line input is one clear line and exit 2 -- never a traceback, a
hang, or a silent switch to direct MX delivery (issue 16, items 1-3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bulkmail.cli import main
from bulkmail.shaping import Shaping, ShapingError

BULKMAIL = [sys.executable, "-m", "bulkmail"]


@pytest.fixture
def inputs(tmp_path: Path) -> list[str]:
    """The required send arguments, with files that exist; no relay."""
    (tmp_path / "list.txt").write_text("a@example.test\n")
    (tmp_path / "msg.eml").write_text("Subject: x\n\nbody\n")
    return ["send", "--sender", "news@sender.test", "--recipients", str(tmp_path / "list.txt"),
            "--message", str(tmp_path / "msg.eml"), "--journal", str(tmp_path / "j.sqlite"),
            # if a check were missing, direct mode would meet a dead loopback
            # resolver -- never the internet -- and give up at once
            "--retry-for", "0"]


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The error line of a command that must stop while parsing (exit 2)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "relay", ["", "   ", "host:abc", "host:", "host:0", "host:70000", "[::1", "[::1]x", "a b",
              "user@host", ":25"],
)
def test_an_empty_or_malformed_relay_is_exit_2_not_direct_mx(
    relay: str, inputs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    line = usage_error([*inputs, "--relay", relay, "--dns-server", "127.0.0.1:9"], capsys)
    assert line.startswith("bulkmail send: error: argument --relay: ")
    assert repr(relay.strip()) in line


@pytest.mark.parametrize("server", ["host:xx", "", "[::1]:"])
def test_a_malformed_dns_server_is_exit_2(
    server: str, inputs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    line = usage_error([*inputs, "--dns-server", server], capsys)
    assert line.startswith("bulkmail send: error: argument --dns-server: ")


def test_well_formed_addresses_pass() -> None:
    from bulkmail.cli.options import host_port

    assert host_port("smtp.example.test", 25) == ("smtp.example.test", 25)
    assert host_port("127.0.0.1:2525", 25) == ("127.0.0.1", 2525)
    assert host_port("[::1]:2525", 25) == ("::1", 2525)
    assert host_port("[::1]", 25) == ("::1", 25)
    assert host_port("::1", 53) == ("::1", 53)


@pytest.mark.parametrize(
    ("option", "value"),
    [("--connections", "0"), ("--connections", "-3"), ("--connections", "many"),
     ("--total-connections", "-1"), ("--max-rcpts", "0"), ("--max-rcpts", "2.5"),
     ("--mx-port", "0"), ("--mx-port", "65536"), ("--retry-first", "0"),
     ("--retry-first", "-1s"), ("--retry-first", "nan"), ("--retry-for", "-5"),
     ("--retry-for", "inf"), ("--retry-for", "5 parsecs"), ("--timeout", "greeting=0"),
     ("--timeout", "greeting"), ("--timeout", "hello=5s"), ("--timeout", "data_done=-1m")],
)
def test_numeric_options_are_range_checked_at_parse_time(
    option: str, value: str, inputs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    line = usage_error([*inputs, "--relay", "127.0.0.1:9", option, value], capsys)
    assert line.startswith(f"bulkmail send: error: argument {option}: ")


def test_total_connections_0_exits_2_instead_of_hanging(inputs: list[str]) -> None:
    proc = subprocess.run(
        [*BULKMAIL, *inputs, "--relay", "127.0.0.1:9", "--total-connections", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2
    assert "argument --total-connections: must be at least 1, not 0" in proc.stderr


@pytest.mark.parametrize(
    ("option", "value"),
    [("--recipients", "0"), ("--domains", "0"), ("--connections", "0"), ("--domains", "x")],
)
def test_demo_options_are_range_checked(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = usage_error(["demo", option, value], capsys)
    assert line.startswith(f"bulkmail demo: error: argument {option}: ")


# -- bulkmail report on something that is not a journal ---------------------------


def damaged_journal(path: Path) -> Path:
    from bulkmail.journal import SQLiteJournal

    with SQLiteJournal(path):
        pass
    data = bytearray(path.read_bytes())
    data[4096:8192] = b"\xff" * 4096  # the recipients table's root page
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda p: (p.write_text("email\nalice@example.test\n"), p)[1],
        lambda p: (p.write_bytes(bytes(range(256)) * 64), p)[1],
        damaged_journal,
    ],
    ids=["text", "binary", "damaged"],
)
def test_report_on_a_file_that_is_not_a_journal_is_one_line_exit_2(
    make: object, tmp_path: Path
) -> None:
    path = make(tmp_path / "j.sqlite")  # type: ignore[operator]
    proc = subprocess.run([*BULKMAIL, "report", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("bulkmail report: journal ") and str(path) in line


# -- shaping files ----------------------------------------------------------------


BAD_SHAPING = {
    "syntax": ('[default]\nconnections = 5\nrate = "10/s\n', "line 3"),
    "string for a table": ('[domains]\n"gmail.com" = "slow"\n', "must be a table, not a string"),
    "number for default": ("default = 5\n", "[default] must be a table, not a number"),
    "negative rate": ("[default]\nrate = -5\n", "rate -5: must be positive"),
    "fractional max_rcpts": ("[default]\nmax_rcpts = 2.5\n", "max_rcpts must be a whole number"),
    "zero connections": ('[domains."a.test"]\nconnections = 0\n', "connections must be"),
    "boolean connections": ("[default]\nconnections = true\n", "connections must be"),
    "unknown timeout stage": ("[default]\ntimeouts = { helo = 5 }\n", "no timeout stage 'helo'"),
    "zero timeout": ('[default]\ntimeouts = { greeting = "0s" }\n', "timeout greeting must be"),
}


@pytest.mark.parametrize("case", BAD_SHAPING, ids=list(BAD_SHAPING))
def test_a_bad_shaping_file_is_refused_naming_the_file(case: str, tmp_path: Path) -> None:
    text, expected = BAD_SHAPING[case]
    path = tmp_path / "shaping.toml"
    path.write_text(text)
    with pytest.raises(ShapingError) as error:
        Shaping.load(path)
    message = str(error.value)
    assert message.startswith(f"shaping file {path}: ")
    assert expected in message


@pytest.mark.parametrize("case", ["syntax", "string for a table", "fractional max_rcpts"])
def test_the_cli_refuses_a_bad_shaping_file_with_exit_2(
    case: str, tmp_path: Path, inputs: list[str]
) -> None:
    path = tmp_path / "shaping.toml"
    path.write_text(BAD_SHAPING[case][0])
    proc = subprocess.run(
        [*BULKMAIL, *inputs, "--relay", "127.0.0.1:9", "--shaping", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"bulkmail send: shaping file {path}: ")
    assert BAD_SHAPING[case][1] in line


def test_a_good_shaping_file_with_timeouts_loads(tmp_path: Path) -> None:
    path = tmp_path / "shaping.toml"
    path.write_text(
        '[default]\nconnections = 4\ntimeouts = { greeting = "1m" }\n'
        '[domains."*.slow.test"]\nrate = "600/min"\nidle_timeout = "2s"\n'
        'timeouts = { data-done = "20m" }\n'
    )
    shaping = Shaping.load(path)
    slow = shaping.limits_for("mx.slow.test")
    assert slow.connections == 4 and slow.rate == 10.0 and slow.idle_timeout == 2.0
    assert dict(slow.timeouts) == {"greeting": 60.0, "data_done": 1200.0}
    assert dict(shaping.limits_for("other.test").timeouts) == {"greeting": 60.0}


def test_the_write_ahead_window_is_an_option_checked_at_parse_time(
    inputs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--window`` bounds what a crash can duplicate with CHUNKING (the
    duplicate-window measurement in README): it reaches the Mailer, and 0 is
    refused while parsing."""
    import argparse

    from bulkmail.cli import send_command

    line = usage_error([*inputs, "--relay", "127.0.0.1:9", "--window", "0"], capsys)
    assert line.startswith("bulkmail send: error: argument --window: ")
    parser = argparse.ArgumentParser()
    send_command.add_arguments(parser)
    args = parser.parse_args([*inputs[1:], "--relay", "127.0.0.1:9", "--window", "4"])
    assert send_command.build_config(args).window == 4
