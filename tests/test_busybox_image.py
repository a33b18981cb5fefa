"""Debian's busybox in the Linux image: the applet table read out of the binary
(hv/build/_busybox.py) and the pinned, offline-capable download (hv/build/_debian.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hv._errors import HostError
from hv.build import _busybox as bb
from hv.build import _debian as deb


def fake_busybox(names: list[str], dirs: dict[str, str]) -> bytes:
    """Bytes laid out as busybox's: the nibble table of install dirs, then the names."""
    table = bytearray((len(names) + 1) // 2)
    for i, n in enumerate(names):
        loc = bb.DIRS.index(dirs.get(n, "usr/bin"))
        table[i // 2] |= loc << 4 if i & 1 else loc
    text = b"\x7fELF" + b"\xff" * 64 + bytes(table) + b"\xee" * 9
    text += b"\0".join(n.encode() for n in names) + b"\0\0" + b"\0\x1b[6n\0more"
    return text


NAMES = sorted({*bb.ANCHORS, "[[", "cat", "linuxrc", "busybox", "ping", "dd", "init", "true"} | {
    f"x{i:02d}" for i in range(60)
})  # fmt: skip
DIRS = {**bb.ANCHORS, "cat": "bin", "linuxrc": "", "ping": "bin", "init": "sbin"}


def test_applet_dirs_come_from_the_binary() -> None:
    dirs = bb.applet_dirs(fake_busybox(NAMES, DIRS))
    assert dirs["sh"] == "bin" and dirs["ip"] == "sbin" and dirs["httpd"] == "usr/sbin"
    assert dirs["x07"] == "usr/bin" and len(dirs) == len(NAMES)


def test_a_binary_without_a_table_is_refused() -> None:
    with pytest.raises(HostError, match="applet"):
        bb.applet_dirs(b"\x7fELF" + b"\0" * 1000)
    wrong = dict(DIRS, sh="usr/sbin")  # the anchors no longer hold: no table matches
    with pytest.raises(HostError, match="0 candidates"):
        bb.applet_dirs(fake_busybox(NAMES, wrong))


def test_links_ours_win_where_decided() -> None:
    links = bb.links(bb.applet_dirs(fake_busybox(NAMES, DIRS)), ["sh", "init", "ping", "stress"])
    assert links["bin/sh"] == "busybox" and links["usr/bin/wget"] == "../../bin/busybox"
    assert links["bin/ping"] == "hvbox" and links["bin/stress"] == "hvbox"
    for absent in ("sbin/ip", "sbin/init", "bin/init", "linuxrc", "usr/bin/busybox"):
        assert absent not in links
    assert "usr/bin/ping" not in links and links.get("sbin/ip") is None


def test_quiet_prompt_empties_the_cursor_query_only() -> None:
    data = fake_busybox(NAMES, DIRS)
    quiet = bb.quiet_prompt(data)
    assert len(quiet) == len(data) and b"\x1b[6n" not in quiet
    assert sum(a != b for a, b in zip(data, quiet, strict=True)) == 1
    with pytest.raises(HostError, match="exactly once"):
        bb.quiet_prompt(quiet)


def test_profile_defines_our_shell_functions() -> None:
    text = bb.profile().decode()
    assert 'ping() { /bin/hvbox ping "$@"; }' in text and set(bb.SHELL_FUNCTIONS) <= bb.OURS


def test_pinned_download_is_reused_without_apt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline: a .deb in the lock, present and of its sha256, never runs apt-get."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    f = tmp_path / "busybox-static_1.0_riscv64.deb"
    f.write_bytes(b"a deb")
    (tmp_path / deb.LOCK_NAME).write_text(
        json.dumps({"busybox-static": {"file": f.name, "version": "1.0", "sha256": deb._sha256(f)}})
    )

    def no_network(*a: Any, **k: Any) -> None:
        raise AssertionError(f"ran {a[0]}")

    monkeypatch.setattr(subprocess, "run", no_network)
    assert deb.apt_download(["busybox-static"], tmp_path) == [f]
    pin = deb.pinned("busybox-static", tmp_path)
    assert pin is not None and pin.version == "1.0"
    f.write_bytes(b"tampered")  # no longer what was pinned: asks apt again
    with pytest.raises(AssertionError, match="apt-get"):
        deb.apt_download(["busybox-static"], tmp_path)


def test_apt_options_keep_the_host_configuration_out(tmp_path: Path) -> None:
    opts = deb.apt_options(tmp_path)
    text = " ".join(opts)
    assert f"Dir::State={tmp_path}/state" in text and "APT::Architecture=riscv64" in text
    assert "Dir::Etc::SourceParts=/dev/null" in text and f"Dir::Cache={tmp_path}/cache" in text
