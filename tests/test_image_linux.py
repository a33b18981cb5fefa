"""The Linux guest image: config checking, the initramfs writer, the real build, a qemu boot.

The image is built before pytest starts, by the test command (`bash .ci/test`, with its
progress); these tests check that build and that a second one is a cache hit.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hv._errors import HostError
from hv.build import _image_linux as il

REPO = Path(__file__).resolve().parent.parent
OPENSBI = Path("/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin")

FAKE_CONFIG = """\
#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_64BIT=y
CONFIG_MMU=y
# CONFIG_MODULES is not set
CONFIG_SERIAL_8250=y
CONFIG_LOCALVERSION="-hvfabric"
CONFIG_HZ=100
"""


# ---------------------------------------------------------------- config checker


def test_parse_config_values_and_not_set() -> None:
    vals = il.parse_config(FAKE_CONFIG)
    assert vals["64BIT"] == "y"
    assert vals["MODULES"] == "n"
    assert vals["LOCALVERSION"] == '"-hvfabric"'
    assert vals["HZ"] == "100"
    assert "Automatically" not in "".join(vals)


def test_check_config_accepts_satisfied_requirements() -> None:
    required = {"64BIT": "y", "CONFIG_MMU": "y", "MODULES": "n", "IP_PNP": "n", "HZ": "100"}
    assert il.check_config(FAKE_CONFIG, required) == []


def test_check_config_reports_each_dropped_option() -> None:
    required = {"64BIT": "y", "VIRTIO_NET": "y", "SERIAL_8250": "n", "HZ": "250"}
    problems = il.check_config(FAKE_CONFIG, required)
    assert problems == [
        "CONFIG_VIRTIO_NET: wanted y, final .config has not set",
        "CONFIG_SERIAL_8250: wanted n, final .config has y",
        "CONFIG_HZ: wanted 250, final .config has 100",
    ]


def test_verify_config_fails_with_a_clear_message(tmp_path: Path) -> None:
    cfg = tmp_path / ".config"
    cfg.write_text(FAKE_CONFIG)
    with pytest.raises(HostError) as exc:
        il.verify_config(cfg, "CONFIG_64BIT=y\n")
    msg = str(exc.value)
    assert "CONFIG_VIRTIO_MMIO: wanted y" in msg  # from REQUIRED_SYMBOLS
    assert "config.fragment" in msg
    # the fragment's own lines are checked too
    good = "\n".join(f"CONFIG_{s}={v}" for s, v in il.REQUIRED_SYMBOLS.items() if v == "y")
    cfg.write_text(good + "\n")
    il.verify_config(cfg, "CONFIG_MMU=y\n")
    with pytest.raises(HostError, match="CONFIG_SMP: wanted y"):
        il.verify_config(cfg, "CONFIG_SMP=y\n")


def test_fragment_sets_every_required_symbol_it_can() -> None:
    frag = il.parse_config(il.FRAGMENT.read_text())
    # Symbols without a prompt (64BIT, RISCV_SBI, ...) come from select/default instead.
    for sym in ("MMU", "VIRTIO_MMIO", "VIRTIO_NET", "VIRTIO_BLK", "BLK_DEV_INITRD", "TTY"):
        assert frag.get(sym) == "y", sym


# ---------------------------------------------------------------- initramfs and key


def test_initramfs_is_a_newc_cpio_with_init(tmp_path: Path) -> None:
    binary = tmp_path / "hvbox"
    binary.write_bytes(b"\x7fELF" + b"x" * 1001)
    out = tmp_path / "initrd.cpio"
    il.write_initramfs(out, binary, ["sh", "init", "ping"])
    data = out.read_bytes()
    assert len(data) % 512 == 0
    names = il.read_cpio_names(data)
    assert names["init"] & 0o170000 == 0o120000  # symlink to bin/hvbox
    assert names["bin/hvbox"] & 0o170000 == 0o100000
    assert names["bin/sh"] & 0o170000 == 0o120000
    assert names["dev/console"] & 0o170000 == 0o020000
    assert "bin/init" not in names
    if shutil.which("cpio"):  # GNU cpio agrees
        listing = subprocess.run(
            ["cpio", "-it", "--quiet"], input=data, capture_output=True, check=True
        ).stdout.decode()
        assert "init" in listing.split()


def test_read_cpio_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        il.read_cpio_names(b"not a cpio archive at all" * 10)


def test_applets_come_from_the_dispatch_table() -> None:
    applets = il.userland_applets()
    for name in ("sh", "init", "ping", "ip", "dhcp", "dd", "stress", "poweroff", "traffic"):
        assert name in applets


def test_key_changes_with_any_input(tmp_path: Path) -> None:
    frag = tmp_path / "config.fragment"
    frag.write_text(il.FRAGMENT.read_text())
    userland = tmp_path / "userland"
    shutil.copytree(il.USERLAND_DIR, userland)
    k1 = il.image_key("6.1.192-2", frag, userland)
    assert k1 == il.image_key("6.1.192-2")  # same bytes, same key
    assert il.image_key("6.1.193-1", frag, userland) != k1
    frag.write_text(frag.read_text() + "CONFIG_SMP=y\n")
    k2 = il.image_key("6.1.192-2", frag, userland)
    assert k2 != k1
    (userland / "main.c").write_text((userland / "main.c").read_text() + "\n")
    assert il.image_key("6.1.192-2", frag, userland) not in (k1, k2)


def test_install_packages_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(HostError, match="apt-get install -y --no-install-recommends bc"):
        il.install_packages(["bc"])


def test_ci_script_installs_the_required_packages() -> None:
    script = (REPO / ".ci" / "linux-deps.sh").read_text()
    m = re.search(r'^build_pkgs="([^"]*)"', script, flags=re.MULTILINE)
    assert m is not None
    assert set(m.group(1).split()) == set(il.REQUIRED_PACKAGES)


# ---------------------------------------------------------------- the real build


# linux_image (conftest.py): the image the test command built before pytest started.


@pytest.mark.slow
def test_build_linux_produces_kernel_and_initramfs(linux_image: il.LinuxImage) -> None:
    img = linux_image
    assert img.kernel.is_file() and img.initrd.is_file()
    assert img.kernel.parent.name == f"linux-{img.key}"
    head = img.kernel.read_bytes()[:64]
    assert head[56:60] == b"RSC\x05"
    assert "console=ttyS0" in img.cmdline
    names = il.read_cpio_names(img.initrd.read_bytes())
    assert "init" in names and "bin/hvbox" in names and "bin/ping" in names
    config = il.parse_config((img.kernel.parent / "config").read_text())
    assert il.check_config((img.kernel.parent / "config").read_text(), il.REQUIRED_SYMBOLS) == []
    assert config["VIRTIO_MMIO"] == "y"


@pytest.mark.slow
def test_info_and_second_build_are_cache_hits(linux_image: il.LinuxImage) -> None:
    assert il.linux_image_info() == linux_image
    messages: list[str] = []
    t0 = time.monotonic()
    again = il.build_linux(progress=messages.append)
    assert time.monotonic() - t0 < 10
    assert again == linux_image
    assert any("cached" in m for m in messages), messages


# ---------------------------------------------------------------- boot under qemu


def _read_until(
    proc: subprocess.Popen[bytes], pattern: bytes, buf: bytearray, timeout: float
) -> bool:
    assert proc.stdout is not None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if re.search(pattern, bytes(buf)):
            return True
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                return bool(re.search(pattern, bytes(buf)))
            buf += chunk
    return False


@pytest.mark.slow
def test_boots_to_the_shell_in_qemu(linux_image: il.LinuxImage) -> None:
    qemu = shutil.which("qemu-system-riscv64")
    if qemu is None or not OPENSBI.is_file():
        why = "needs qemu-system-misc and opensbi (.ci/linux-deps.sh installs them)"
        if os.environ.get("CI"):
            pytest.fail(why)  # CI installs them: a skip there would hide a missing step
        pytest.skip(why)
    cmdline = f'{linux_image.cmdline} ip=10.0.2.15/24 hv.run="echo HV-RUN-OK; ip addr"'
    cmd = [
        qemu, "-M", "virt", "-m", "256M", "-nographic", "-no-reboot", "-bios", str(OPENSBI),
        "-kernel", str(linux_image.kernel), "-initrd", str(linux_image.initrd),
        "-append", cmdline, "-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0",
    ]  # fmt: skip
    buf = bytearray()

    def expect(pattern: bytes, timeout: float) -> None:
        assert _read_until(proc, pattern, buf, timeout), buf.decode(errors="replace")

    with subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as proc:
        assert proc.stdin is not None
        try:
            expect(rb"Run /init as init process", 60)
            expect(rb"inet 10\.0\.2\.15/24", 60)  # ip= applied; printed by hv.run
            expect(rb"# $", 30)
            proc.stdin.write(b"uname -r; echo sum=$?\r")
            proc.stdin.flush()
            expect(rb"hvfabric\r?\nsum=0", 30)
            proc.stdin.write(b"poweroff\r")
            proc.stdin.flush()
            expect(rb"reboot: Power down", 30)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    log = buf.decode(errors="replace")
    assert "HV-RUN-OK" in log
    assert "reboot: Power down" in log
    for bad in ("WARNING:", "BUG:", "Oops", "Kernel panic", "Call Trace"):
        assert bad not in log, log
