"""``hv logs``: every VM's console of a lab from the bounded logs it keeps on disk, prefixed
by VM name, followed with -f until the lab ends, and still there after ``hv down``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import wait_until_sync
from test_control import Host, host, read_until  # noqa: F401 (host: the fixture)

from hv.lab._logs import ConsoleLog, Follower, read_log


def test_hv_logs_prefixes_follows_and_outlives_the_lab(host: Host) -> None:  # noqa: F811
    r = host.hv("up", "-d", str(host.lab_file("logs")))
    assert r.returncode == 0, r.stdout + r.stderr
    with host.popen("logs", "-f", "hv-logs") as follow:
        # what was printed before, then new lines as they come (c pings every 20 ms)
        seen = read_until(follow, b"s | udpecho: echoing on port 7")
        seen += read_until(follow, b"c | ping: reply", timeout=30)
        r = host.hv("logs", "hv-logs", "c")
        assert r.returncode == 0 and r.stdout.startswith("c | "), r.stderr
        assert "s | " not in r.stdout and "ping: reply" in r.stdout
        down = host.hv("down", "hv-logs")
        assert down.returncode == 0, down.stderr
        rest, err = follow.communicate(timeout=30)  # -f ends with the lab
        assert follow.returncode == 0, err
    text = (seen + rest).decode()
    assert all(line[:4] in ("s | ", "c | ", "e | ") for line in text.splitlines()), text[-500:]
    assert "\x1b[" not in text  # colours on a terminal only
    after = host.hv("logs", "hv-logs")  # the lab is down: its logs are not
    assert after.returncode == 0, after.stderr
    assert "s | udpecho: echoing on port 7" in after.stdout and "c | ping: reply" in after.stdout
    assert host.hv("logs", "--tail", "1", "hv-logs", "c").stdout.count("\n") == 1
    missing = host.hv("logs", "hv-logs", "zz")
    assert missing.returncode == 1 and "no VM named zz (VMs: c, e, s)" in missing.stderr
    nolab = host.hv("logs", "nosuchlab")
    assert nolab.returncode == 1 and "no lab named nosuchlab" in nolab.stderr


def test_logs_are_coloured_on_a_terminal(host: Host) -> None:  # noqa: F811
    r = host.hv("up", "-d", str(host.lab_file("tty")))
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until_sync(lambda: "echoing" in host.hv("logs", "hv-tty", "s").stdout, timeout=30,
                    what="s's first line in its log")  # fmt: skip
    primary, secondary = os.openpty()
    cmd = [sys.executable, "-m", "hv.cli", "logs", "hv-tty", "s"]
    with subprocess.Popen(cmd, env=host.env, stdout=secondary) as p:
        os.close(secondary)
        assert p.wait(30) == 0
        out = os.read(primary, 65536)
    os.close(primary)
    assert out.startswith(b"\x1b[") and b"s | \x1b[0m" in out


def test_a_console_log_is_bounded_and_keeps_the_tail(tmp_path: Path) -> None:
    """A guest printing forever: at most 2 x cap on disk, the newest bytes kept, and a
    follower sees every byte written after it started, across the rotations."""
    log = ConsoleLog("lab", "vm", tmp_path, cap=1000)
    follower = Follower("lab", "vm", tmp_path)
    written = b"".join(b"line %05d\n" % i for i in range(3000))  # 30 kB
    got = b""
    for i in range(0, len(written), 700):
        log.write(written[i : i + 700])
        got += follower.read()
    log.close()
    follower.close()
    assert got == written
    d = tmp_path / "logs" / "lab"
    assert sum(p.stat().st_size for p in d.iterdir()) <= 2000
    kept = read_log("lab", "vm", tmp_path)
    assert written.endswith(kept) and len(kept) > 1000 and log.rotations >= 28
