"""``hv exec`` and ``hv cp`` through a real lab run by ``hv up -d`` (separate processes, the
control socket's ``agent`` op, a Linux guest's agent over virtio-vsock)."""

from __future__ import annotations

import hashlib
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from test_control import Host

LAB = """
[vms.a]
kernel = "linux"

[vms.f]
kernel = "echo"
"""


@pytest.fixture(scope="module")
def lab(linux_image: Any) -> Iterator[tuple[Host, str]]:
    h = Host()
    try:
        r = h.hv("up", "-d", str(h.lab_file("ex", LAB)))
        assert r.returncode == 0, r.stderr
        yield h, "hv-ex"
    finally:
        h.cleanup()


def test_exec_status_output_and_stdin(lab: tuple[Host, str]) -> None:
    h, name = lab
    r = h.hv("exec", name, "a", "--", "sh", "-c", "echo hi; cat /nope; exit 3")
    assert (r.returncode, r.stdout) == (3, "hi\n"), r.stderr
    assert "/nope" in r.stderr
    data = os.urandom(500_000)
    cmd = [sys.executable, "-m", "hv.cli", "exec", "-i", name, "a", "--", "cat"]
    r2 = subprocess.run(cmd, input=data, capture_output=True, env=h.env, timeout=60, check=False)
    assert r2.returncode == 0 and r2.stdout == data, r2.stderr
    r = h.hv("exec", name, "a", "--", "cat", "/dev/null", stdin=subprocess.DEVNULL)
    assert r.returncode == 0


def test_exec_errors(lab: tuple[Host, str]) -> None:
    h, name = lab
    r = h.hv("exec", name, "a", "--", "nonesuch")
    assert r.returncode == 127 and "cannot run nonesuch: No such file" in r.stderr, r.stderr
    r = h.hv("exec", name, "zz", "--", "true")
    assert r.returncode == 1 and "no VM named 'zz'" in r.stderr, r.stderr
    r = h.hv("exec", name, "f", "--", "true")
    assert r.returncode == 1 and "VM f has no vsock device" in r.stderr, r.stderr
    r = h.hv("exec", "nolab", "a", "--", "true")
    assert r.returncode == 1 and "no lab named 'nolab'" in r.stderr, r.stderr
    r = h.hv("exec", name, "a")
    assert r.returncode == 4 and "name the command" in r.stderr, r.stderr
    r = h.hv("cp", "x", "y")
    assert r.returncode == 4 and "LAB:VM:/PATH" in r.stderr, r.stderr


def test_cp_in_and_out(lab: tuple[Host, str]) -> None:
    h, name = lab
    src = h.root / "blob.bin"
    src.write_bytes(os.urandom(2_500_000))
    r = h.hv("cp", str(src), f"{name}:a:/tmp/")
    assert r.returncode == 0, r.stderr
    back = h.root / "back.bin"
    r = h.hv("cp", f"{name}:a:/tmp/blob.bin", str(back))
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
    r = h.hv("cp", f"{name}:a:/tmp/none", str(h.root / "none"))
    assert r.returncode == 1 and "/tmp/none: No such file" in r.stderr, r.stderr
    assert not (h.root / "none").exists()


def test_exec_t_on_a_real_terminal(lab: tuple[Host, str]) -> None:
    h, name = lab
    master, slave = pty.openpty()
    cmd = [sys.executable, "-m", "hv.cli", "exec", "-t", name, "a", "--", "tty"]
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=h.env)
    os.close(slave)
    out = b""
    try:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every slave closed
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=60) == 0, out
    finally:
        os.close(master)
    assert b"/dev/pts/" in out, out
