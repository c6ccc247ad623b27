"""The README's library example runs as printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_library_example_runs_and_prints_results() -> None:
    text = README.read_text()
    section = text[text.index("## Library") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    proc = subprocess.run([sys.executable, "-c", code.group(1)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "'delivered': 1000" in proc.stdout
    assert "ann@example.net delivered 250 2.0.0" in proc.stdout
    assert "bob@example.net delivered 250 2.0.0" in proc.stdout
