"""Debian's U-Boot (qemu-riscv64_smode, unmodified) as a client: it boots on hv-virt, finds
its virtio-net NIC, and pings a Linux guest on the same switch under `hv up --attach`."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hv.build import _image_linux as il

UBOOT = Path("/usr/lib/u-boot/qemu-riscv64_smode/u-boot.bin")


def uboot() -> Path:
    if not UBOOT.is_file():
        if os.environ.get("CI"):
            pytest.fail("CI needs u-boot-qemu (.ci/linux-deps.sh)")
        pytest.skip("needs Debian's u-boot-qemu: run .ci/linux-deps.sh as root")
    return UBOOT


def demux(out: bytes, name: bytes = b"u") -> bytes:
    """VM ``name``'s console from hv up's prefixed output. U-Boot writes a character at a
    time, so another VM's lines can cut one of its lines in two (hv up then starts a new
    prefixed line); its own line ends are CR LF, so a piece without the CR is joined to the
    next one."""
    prefix = name + b" | "
    text = b""
    for line in out.split(b"\n"):
        if line.startswith(prefix):
            piece = line[len(prefix) :]
            text += piece + b"\n" if piece.endswith(b"\r") else piece
    return text


class Session:
    """hv up with the terminal's input going to VM u: wait for text, then type."""

    def __init__(self, args: list[str]) -> None:
        self.p = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.out = b""

    def wait_for(self, text: bytes, timeout: float = 30.0, since: int = 0) -> None:
        self.wait_any([text], timeout, since)

    def wait_any(self, texts: list[bytes], timeout: float = 30.0, since: int = 0) -> bytes:
        """Wait until one of ``texts`` appears after offset ``since``; return it."""
        assert self.p.stdout is not None
        end = time.monotonic() + timeout
        text = texts[0]
        while not any(t in self.out[since:] or t in demux(self.out[since:]) for t in texts):
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {text!r} in: {self.out[-1500:]!r}")
            ready, _, _ = select.select([self.p.stdout], [], [], left)
            if ready:
                chunk = os.read(self.p.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"hv exited before {text!r}: {self.out[-1500:]!r}")
                self.out += chunk
        return next(t for t in texts if t in self.out[since:] or t in demux(self.out[since:]))

    def type(self, text: bytes) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(text)
        self.p.stdin.flush()

    def close(self) -> int:
        try:
            rc = self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait(timeout=30)
        for f in (self.p.stdin, self.p.stdout):
            if f is not None:
                f.close()
        return rc


def test_uboot_pings_a_linux_guest_under_hv_up(linux_image: il.LinuxImage, tmp_path: Path) -> None:
    lab = tmp_path / "uboot.toml"
    lab.write_text(
        "[switches.lan]\n"
        f'[vms.u]\nkernel = "{uboot()}"\nnics = [{{ switch = "lan" }}]\n'
        '[vms.b]\nkernel = "linux"\nnics = [{ switch = "lan", ip = "10.0.0.2/24" }]\n'
    )
    s = Session([sys.executable, "-m", "hv.cli", "up", str(lab), "--attach", "u",
                 "--exit-code-from", "u"])  # fmt: skip
    try:
        s.wait_for(b"eth0: virtio-net#0")
        s.wait_for(b"Hit any key to stop autoboot")
        s.type(b"\r")
        s.wait_for(b"u | => ")
        s.wait_for(b"b | init: eth0 10.0.0.2/24", timeout=60)  # the peer is up
        s.type(b"setenv ipaddr 10.0.0.5\r")
        for _ in range(3):  # a first ARP can go unanswered while the peer settles: retry
            mark = len(s.out)
            s.type(b"ping 10.0.0.2\r")
            got = s.wait_any([b"host 10.0.0.2 is alive", b"is not alive"], since=mark)
            if got.endswith(b"is alive") and b"not" not in got:
                break
        assert got == b"host 10.0.0.2 is alive", s.out[-1500:]
        s.type(b"poweroff\r")
        s.wait_for(b"poweroff ...")
    finally:
        s.close()


def test_uboot_dhcp_ping_and_tftpboot_from_the_switch_services(tmp_path: Path) -> None:
    """The switch's built-in services as U-Boot sees them on qemu's user network: `dhcp` gets
    a lease (and the next-server), `ping $serverip` answers, `tftpboot` loads a 3 MB file
    whose CRC-32 U-Boot computes the same as ours."""
    import random
    import zlib

    root = tmp_path / "tftp"
    root.mkdir()
    data = random.Random(5).randbytes(3_000_000)
    (root / "blob.bin").write_bytes(data)
    lab = tmp_path / "uboot.toml"
    lab.write_text(
        '[switches.lan]\nsubnet = "10.0.0.0/24"\ndhcp = true\ntftp = "tftp"\n'
        f'[vms.u]\nkernel = "{uboot()}"\nmem = "256M"\nnics = [{{ switch = "lan" }}]\n'
    )
    s = Session([sys.executable, "-m", "hv.cli", "up", str(lab), "--attach", "u",
                 "--exit-code-from", "u"])  # fmt: skip
    try:
        s.wait_for(b"Hit any key to stop autoboot")
        s.type(b"\r")
        s.wait_for(b"=> ")
        s.type(b"setenv autoload no; dhcp\r")
        s.wait_for(b"DHCP client bound to address 10.0.0.")
        mark = len(s.out)
        s.type(b"echo server=$serverip; ping $serverip\r")
        s.wait_for(b"host 10.0.0.1 is alive", since=mark)
        assert b"server=10.0.0.1" in s.out[mark:]
        mark = len(s.out)
        s.type(b"tftpboot ${kernel_addr_r} blob.bin; crc32 ${kernel_addr_r} ${filesize}\r")
        s.wait_for(b"Bytes transferred = 3000000", timeout=60, since=mark)
        crc = f"{zlib.crc32(data):08x}".encode()
        s.wait_for(b"==> " + crc, since=mark)
        s.type(b"poweroff\r")
        s.wait_for(b"poweroff ...")
    finally:
        s.close()


def test_uboot_reads_ext4_and_writes_raw_sectors_on_virtio_disks(tmp_path: Path) -> None:
    """U-Boot as a virtio-blk client: `virtio scan/info`, `ext4ls` and `ext4load` on a
    host-made ext4 image, `virtio write` of raw sectors on a second disk that the host then
    reads back."""
    import subprocess

    fs, raw = tmp_path / "fs.img", tmp_path / "raw.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(fs), "16M"], check=True)
    note = tmp_path / "note.txt"
    note.write_text("hello from the host's ext4\n")
    subprocess.run(["debugfs", "-w", "-R", f"write {note} note.txt", str(fs)], check=True,
                   capture_output=True)  # fmt: skip
    raw.write_bytes(bytes(1 << 20))
    lab = tmp_path / "disks.toml"
    lab.write_text(
        f'[vms.u]\nkernel = "{uboot()}"\nmem = "256M"\n'
        'disks = ["fs.img,serial=fs0", { file = "raw.img", format = "raw" }]\n'
    )
    s = Session([sys.executable, "-m", "hv.cli", "up", str(lab), "--attach", "u",
                 "--exit-code-from", "u"])  # fmt: skip
    try:
        s.wait_for(b"Hit any key to stop autoboot")
        s.type(b"\r")
        s.wait_for(b"=> ")
        mark = len(s.out)
        s.type(b"virtio scan; virtio info\r")
        s.wait_for(b"Capacity: 16.0 MB", since=mark)
        mark = len(s.out)
        s.type(b"ext4ls virtio 0\r")
        s.wait_for(b"note.txt", since=mark)
        mark = len(s.out)
        s.type(b"ext4load virtio 0 ${kernel_addr_r} note.txt; md.b ${kernel_addr_r} 0x10\r")
        s.wait_for(b"27 bytes read", since=mark)
        s.wait_for(b"hello from the h", since=mark)
        mark = len(s.out)
        s.type(b"mw.b ${kernel_addr_r} 0xa5 0x1000; virtio dev 1; "
               b"virtio write ${kernel_addr_r} 8 8\r")  # fmt: skip
        s.wait_for(b"8 blocks written: OK", since=mark)
        mark = len(s.out)
        s.type(b"mw.b ${kernel_addr_r} 0 0x1000; virtio read ${kernel_addr_r} 8 1; "
               b"md.b ${kernel_addr_r} 4\r")  # fmt: skip
        s.wait_for(b"a5 a5 a5 a5", since=mark)
        s.type(b"poweroff\r")
        s.wait_for(b"poweroff ...")
    finally:
        s.close()
    data = raw.read_bytes()
    assert data[8 * 512 : 16 * 512] == b"\xa5" * 4096 and data[: 8 * 512] == bytes(4096)
