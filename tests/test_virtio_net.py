"""virtio-net: the device against a driver in plain memory (TX, RX, the bounded backlog, link
state, hostile rings), then two real Linux guests (its unmodified virtio_net driver) pinging
each other through the learning switch, with the capture read back by tshark."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import trio

import hv
from hv.build import _image_linux as il
from hv.hw._device import DeviceContext
from hv.hw._memory import GuestMemory
from hv.virtio import _mmio as M
from hv.virtio._net import (
    F_GUEST_CSUM,
    F_GUEST_TSO4,
    F_MRG_RXBUF,
    HDR_LEN,
    RX_BACKLOG,
    VirtioNet,
)
from hv.virtio.testing import DriverQueue, Used, activate
from netfabric.frame import Frame
from netfabric.offload import GSO_TCPV4, Offload
from netfabric.switch import Switch

RAM, SIZE = 0x8000_0000, 1 << 20
MAC_A, MAC_B = bytes.fromhex("525400000001"), bytes.fromhex("525400000002")


class Nic:
    """A VirtioNet behind its transport, driven by hand like the Linux driver would."""

    def __init__(self, features: int = 0, rx_size: int = 16) -> None:
        self.mem = GuestMemory(RAM, SIZE)
        self.net = VirtioNet(MAC_A)
        self.sent: list[bytes] = []
        self.net.connect(lambda frame: self.sent.append(frame.data))
        self.dev = M.VirtioMmio("eth0", self.net)
        self.irq: list[bool] = []
        self.dev.attach(
            DeviceContext("eth0", self.mem, self.irq.append, lambda: None, lambda w: None)
        )
        self.rx = DriverQueue(self.mem, rx_size, RAM + 0x1000, RAM + 0x10000)
        self.tx = DriverQueue(self.mem, 16, RAM + 0x3000, RAM + 0x80000)
        activate(self.dev, M.F_VERSION_1 | features, (self.rx, self.tx))
        assert self.dev.running


def test_config_space_has_mac_status_and_mtu() -> None:
    nic = Nic()
    cfg = bytes(nic.dev.mmio_read(M.CONFIG + i, 1) for i in range(12))
    assert (
        cfg[:6] == MAC_A
        and cfg[6:8] == b"\x01\x00"
        and int.from_bytes(cfg[10:12], "little") == 1500
    )
    nic.net.set_link(False)
    assert nic.dev.mmio_read(M.CONFIG + 6, 2) == 0 and nic.dev.interrupt_status & M.INT_CONFIG


def test_transmit_strips_the_header() -> None:
    nic = Nic()
    frame = MAC_B + MAC_A + b"\x08\x00" + bytes(50)
    nic.tx.add(readable=[bytes(HDR_LEN), frame])
    nic.dev.mmio_write(M.R_QUEUE_NOTIFY, 4, 1)
    assert nic.sent == [frame] and len(nic.tx.take_used()) == 1
    assert nic.dev.stats()["tx_frames"] == 1


def test_receive_waits_for_buffers_and_the_backlog_is_bounded() -> None:
    nic = Nic()
    frame = MAC_A + MAC_B + b"\x08\x00" + bytes(50)
    for _ in range(RX_BACKLOG + 10):
        nic.net.deliver(Frame(frame))
    assert nic.net.counters["rx_dropped"] == 10 and len(nic.net.backlog) == RX_BACKLOG
    for _ in range(4):
        nic.rx.add(writable=[HDR_LEN + 1514])
    nic.dev.mmio_write(M.R_QUEUE_NOTIFY, 4, 0)
    got = nic.rx.take_used()
    assert len(got) == 4 and got[0].data[HDR_LEN:] == frame
    assert int.from_bytes(got[0].data[10:12], "little") == 1  # num_buffers
    assert nic.irq and nic.irq[-1] is True


def _num_buffers(used: Used) -> int:
    return int.from_bytes(used.data[10:12], "little")


def test_mergeable_buffers_carry_a_frame_bigger_than_one_buffer() -> None:
    nic = Nic(F_MRG_RXBUF)
    assert nic.net.mergeable
    frame = MAC_A + MAC_B + b"\x08\x00" + bytes(range(256)) * 15
    for _ in range(2):
        nic.rx.add(writable=[1526])
    nic.net.deliver(Frame(frame))  # 3 buffers needed, 2 posted: it waits, nothing is taken
    assert nic.rx.take_used() == [] and len(nic.net.backlog) == 1
    nic.rx.add(writable=[1526])
    nic.dev.mmio_write(M.R_QUEUE_NOTIFY, 4, 0)
    got = nic.rx.take_used()
    assert [_num_buffers(got[0]), len(got)] == [3, 3]
    assert b"".join(u.data for u in got)[HDR_LEN:] == frame
    assert nic.net.counters["rx_merged"] == 1


def test_mergeable_offloaded_segment_keeps_its_gso_header() -> None:
    nic = Nic(F_MRG_RXBUF | F_GUEST_CSUM | F_GUEST_TSO4)
    frame = MAC_A + MAC_B + b"\x08\x00" + bytes(20000)
    off = Offload(True, 34, 16, GSO_TCPV4, 1448, 54)
    for _ in range(16):
        nic.rx.add(writable=[4096])
    nic.net.deliver(Frame(frame, off))
    got = nic.rx.take_used()
    assert len(got) == 5 and _num_buffers(got[0]) == 5
    flags, gso, hdr_len, gso_size = (
        got[0].data[0],
        got[0].data[1],
        *struct.unpack_from("<HH", got[0].data, 2),
    )
    assert (flags, gso, hdr_len, gso_size) == (1, GSO_TCPV4, 54, 1448)
    assert b"".join(u.data for u in got)[HDR_LEN:] == frame


def test_mergeable_frame_that_can_never_fit_is_dropped_not_stuck() -> None:
    nic = Nic(F_MRG_RXBUF, rx_size=4)
    for _ in range(4):
        nic.rx.add(writable=[100])
    nic.net.deliver(Frame(MAC_A + MAC_B + b"\x08\x00" + bytes(1000)))  # 4 x 100 B is all there is
    assert len(nic.rx.take_used()) == 4 and nic.net.counters["rx_too_small"] == 1
    small = MAC_A + MAC_B + b"\x08\x00" + bytes(46)
    for _ in range(4):
        nic.rx.add(writable=[100])
    nic.net.deliver(Frame(small))
    got = nic.rx.take_used()
    assert len(got) == 1 and got[0].data[HDR_LEN:] == small and not nic.net.backlog


def test_mergeable_buffer_with_no_room_needs_reset() -> None:
    nic = Nic(F_MRG_RXBUF)
    nic.rx.add(readable=[b"x"])  # no device-writable part at all
    nic.net.deliver(Frame(MAC_A + MAC_B + b"\x08\x00" + bytes(50)))
    assert nic.dev.status & M.STATUS_NEEDS_RESET


def test_a_broken_rx_ring_is_the_receivers_fault_not_the_senders() -> None:
    nic = Nic()
    nic.rx.write_desc(nic.rx.desc, 0, RAM + 0x10000, 8, 1, 0)  # loops
    nic.rx.make_available(0)
    nic.net.deliver(Frame(MAC_A + MAC_B + b"\x08\x00" + bytes(50)))  # no exception here
    assert nic.dev.status & M.STATUS_NEEDS_RESET and nic.dev.counters["needs_reset"] == 1


async def test_two_linux_guests_ping_through_the_switch(
    linux_image: il.LinuxImage, tmp_path: Path
) -> None:
    img = linux_image
    capture = tmp_path / "lan.pcapng"
    sw = Switch("lan", capture=capture)
    base = img.cmdline
    a = hv.VmConfig(
        kernel=img.kernel,
        initrd=img.initrd,
        name="a",
        cmdline=base + ' ip=10.0.0.1/24 hv.run="ping -c 3 -i 0.2 10.0.0.2"',
        devices=(hv.Nic(sw, mac=MAC_A).device("a", 0),),
    )
    b = hv.VmConfig(
        kernel=img.kernel,
        initrd=img.initrd,
        name="b",
        cmdline=base + " ip=10.0.0.2/24",
        devices=(hv.Nic(sw, mac=MAC_B).device("b", 0),),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sw.run)
        vb: hv.Vm = await nursery.start(hv.run_vm, b)
        va: hv.Vm = await nursery.start(hv.run_vm, a)
        with trio.fail_after(60):
            await va.console.wait_for("packet loss")
        out = va.console.transcript.decode()
        stats = va.stats
        va.stop()
        vb.stop()
        nursery.cancel_scope.cancel()
    assert "3 packets transmitted, 3 received, 0% packet loss" in out, out[-800:]
    assert stats["a.eth0.tx_frames"] >= 4 and stats["a.eth0.rx_frames"] >= 4
    tshark = shutil.which("tshark")
    assert tshark
    r = subprocess.run(
        [
            tshark,
            "-r",
            str(capture),
            "-T",
            "fields",
            "-e",
            "frame.interface_name",
            "-e",
            "_ws.col.Protocol",
            "-e",
            "_ws.col.Info",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = r.stdout.splitlines()
    assert any("ARP" in ln and "Who has 10.0.0.2" in ln for ln in lines), r.stdout
    requests = [ln for ln in lines if "Echo (ping) request" in ln]
    replies = [ln for ln in lines if "Echo (ping) reply" in ln]
    assert len(requests) == 3 and len(replies) == 3
    assert all(ln.startswith("a.eth0") for ln in requests)
    assert all(ln.startswith("b.eth0") for ln in replies)
