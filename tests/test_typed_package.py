"""bulkmail ships ``py.typed`` (PEP 561): a typed caller checks cleanly with
mypy instead of meeting ``import-not-found`` (issue 16, item 13)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import bulkmail

CALLER = '''\
import trio

from bulkmail import Mailer, MailerConfig, Relay, Result, Status, Summary, send


async def newsletter(addresses: list[str]) -> Summary:
    delivered: list[str] = []

    def on_result(result: Result) -> None:
        if result.status is Status.DELIVERED:
            delivered.append(result.recipient)

    config = MailerConfig(relay=Relay("127.0.0.1", 2525), secure="none")
    async with Mailer(config) as mailer:
        summary = await mailer.send("news@example.test", b"Subject: hi\\r\\n\\r\\nhi\\r\\n",
                                    addresses, on_result=on_result)
    once: Summary = await send("news@example.test", "Subject: hi\\n\\nhi\\n", addresses,
                               relay=Relay("127.0.0.1", 2525))
    return summary if summary.delivered >= once.delivered else once


trio.run(newsletter, ["a@example.test"])
'''

WRONG = "from bulkmail import Relay\n\nrelay: Relay = Relay(2525)\n"


def installed_python(tmp_path: Path) -> Path:
    """A Python with bulkmail installed as a user's project would see it: a
    plain copy of the package in site-packages (the test venv's editable
    install is an import hook mypy cannot follow), its dependencies on the path."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    (site,) = venv.glob("lib/python*/site-packages")
    shutil.copytree(Path(bulkmail.__file__).parent, site / "bulkmail",
                    ignore=shutil.ignore_patterns("__pycache__"))
    # trio, dnspython, ...: the test venv's packages (its .pth hooks are not run
    # for a directory added this way, so its editable bulkmail stays out)
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin" / "python"


def mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "caller.py"
    script.write_text(source)
    # from tmp_path, so the project's own mypy settings do not apply
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         "--python-executable", str(installed_python(tmp_path)), str(script)],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
    )


def test_the_package_is_marked_typed_and_the_wheel_ships_the_marker() -> None:
    assert (Path(bulkmail.__file__).parent / "py.typed").is_file()
    project = Path(__file__).resolve().parents[1]
    config = tomllib.loads((project / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["bulkmail"]


def test_a_typed_caller_checks_cleanly_with_mypy(tmp_path: Path) -> None:
    result = mypy(tmp_path, CALLER)
    assert result.returncode == 0, result.stdout
    assert "Success: no issues found in 1 source file" in result.stdout


def test_mypy_sees_the_librarys_types(tmp_path: Path) -> None:
    """Not just silenced: a wrong call is caught from bulkmail's annotations."""
    result = mypy(tmp_path, WRONG)
    assert result.returncode == 1
    assert 'Argument 1 to "Relay" has incompatible type "int"; expected "str"' in result.stdout
