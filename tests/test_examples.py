"""The examples run as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_many_guests() -> None:
    p = run(str(EXAMPLES / "many_guests.py"), "2")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 5
    assert any(line.startswith("fault-2") and "exit   2" in line for line in lines), p.stdout
    assert sum("checksum: 0x" in line for line in lines) == 2, p.stdout


def test_linux_command(linux_image: object) -> None:
    p = run(str(EXAMPLES / "linux_command.py"), "echo", "example-ok")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "example-ok", p.stdout
