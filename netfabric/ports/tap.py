"""A TAP port: the host's own network stack as one more port on a switch.

Theory of operation. A Linux TAP interface is an Ethernet device whose "wire" is a file
descriptor: every frame the host kernel transmits on it is one ``read``, every ``write`` is one
frame the kernel receives from it. This is the only module that opens ``/dev/net/tun``.
``TapDevice`` opens (or, with CAP_NET_ADMIN, creates) the interface by name with
``IFF_TAP | IFF_NO_PI | IFF_VNET_HDR``, non-blocking; ``TapPort`` plugs it into a
``netfabric.switch.Switch`` as ``tap:NAME`` and runs the reading task. An interface this module
created lives as long as its descriptor; one made beforehand with
``ip tuntap add mode tap user NAME`` (persistent, owned by that user) is opened without root.
Its link state, addresses, MTU and routes are the host's business (``ip link set NAME up``):
while the link is down the kernel hands us nothing and refuses our writes.

Offloads, as virtio-net does them. Every frame, both ways, carries the 12-byte
``virtio_net_hdr`` in front (``TUNSETVNETHDRSZ`` 12: the VERSION_1 layout with
``num_buffers``, little-endian, the same bytes a guest's NIC uses). ``TUNSETOFFLOAD`` with
``TUN_F_CSUM | TUN_F_TSO4`` tells the kernel we take partial checksums and TCPv4 segments up
to 64 KiB, so a host TCP flow towards a guest crosses as one read and one trip through the
switch per 64 KiB, exactly like guest-to-guest traffic: the header becomes an ``Offload``
(``parse_vnet_header``) and receivers that cannot take it get it resolved by the fabric.
The other way needs no negotiation: a frame delivered with an ``Offload`` is written with a
header saying so (``build_vnet_header``) and the kernel finishes it (fills the checksum,
segments where it must). The kernel validates these headers (they are what QEMU hands it
from guests); one it refuses is dropped and counted. Headers the fabric cannot carry (GSO
types other than TCPv4: UDP, TCPv6) are dropped and counted; the ECN bit is masked, as the
NICs do (the segmenter already keeps CWR on the first segment only).

Never blocking, never unbounded. Writes (``deliver``, the switch's port protocol, called
synchronously on the trio thread) are one non-blocking ``writev`` of header and frame; a
write the kernel refuses (EAGAIN: no room; EIO: the link is down; EINVAL: a header it
rejects) is dropped and counted, never raised, so a host that is not listening costs the
fabric nothing. Reads happen in one trio task: it waits with ``wait_readable``, then reads
frames until EAGAIN, each into one preallocated buffer and straight into the switch, letting
the other tasks run every ``BATCH`` frames. Nothing queues here: frames waiting for us wait in
the kernel's own bounded queue (the interface's ``txqueuelen``; it drops and counts in the
link's TX statistics when we fall behind).

Counters (``counters``, a ``collections.Counter``), from our side of the descriptor: ``rx_*``
are frames from the host (read), ``tx_*`` frames to the host (written). ``tx_dropped`` counts
every dropped write; ``tx_busy``/``tx_link_down``/``tx_invalid``/``tx_error``/``tx_closed``
say why.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import functools
import os
import socket
import stat
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import trio

from netfabric.frame import Frame
from netfabric.offload import GSO_NONE, GSO_TCPV4, Offload
from netfabric.ports.base import SwitchPort, SwitchSide, read_until_closed

# What a frame read from the host goes to: its bytes and its Offload (None: a complete frame).
Handler = Callable[[bytes, Offload | None], None]

TUN_PATH = "/dev/net/tun"
IFNAMSIZ = 16  # with the trailing NUL: names have at most 15 bytes

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNSETVNETLE = 0x400454DC
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02

# <linux/virtio_net.h>: the header in front of every frame.
VNET_HDR_LEN = 12
VNET_F_NEEDS_CSUM = 1
VNET_F_DATA_VALID = 2  # the kernel checked the checksum already: a complete frame
VNET_GSO_NONE = 0
VNET_GSO_TCPV4 = 1
VNET_GSO_UDP = 3
VNET_GSO_TCPV6 = 4
VNET_GSO_UDP_L4 = 5
VNET_GSO_ECN = 0x80
_HDR = struct.Struct("<BBHHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start/offset, nbufs
_HDR_NONE = bytes(VNET_HDR_LEN)

ETH_HEADER = 14
# The largest frame the kernel hands us: a 64 KiB IPv4 packet, Ethernet and a VLAN tag.
MAX_FRAME = 0xFFFF + ETH_HEADER + 4
# Frames read before the reading task lets the others run.
BATCH = 64


class TapError(Exception):
    """A TAP interface cannot be opened or used: the message says why and what to do."""

    def __init__(self, message: str, err: int | None = None) -> None:
        super().__init__(message)
        self.errno = err


def parse_vnet_header(data: bytes | bytearray | memoryview) -> Offload | None:
    """The ``Offload`` a frame's ``virtio_net_hdr`` (its first 12 bytes) describes, or None
    for a complete frame. ``gso_type`` is the header's with the ECN bit masked: GSO_NONE,
    GSO_TCPV4, or another virtio type (``VNET_GSO_UDP``, ``VNET_GSO_TCPV6``, ...) the fabric
    cannot carry. ValueError if ``data`` is shorter than a header."""
    if len(data) < VNET_HDR_LEN:
        raise ValueError(f"a virtio_net_hdr has {VNET_HDR_LEN} bytes, not {len(data)}")
    flags, gso, hdr_len, gso_size, start, offset, _ = _HDR.unpack_from(data)
    gso &= ~VNET_GSO_ECN
    needs_csum = bool(flags & VNET_F_NEEDS_CSUM)
    if not needs_csum and gso == VNET_GSO_NONE:
        return None
    return Offload(needs_csum, start, offset, gso, gso_size, hdr_len)


def build_vnet_header(off: Offload | None, frame_len: int) -> bytes:
    """The ``virtio_net_hdr`` to write in front of a ``frame_len``-byte frame. A TCPv4
    segment without a segment size is written as a plain (partial-checksum) frame, as
    ``resolve`` treats it; ``hdr_len`` (only a hint to the kernel) is clamped to the frame."""
    if off is None:
        return _HDR_NONE
    gso = VNET_GSO_TCPV4 if off.gso_type == GSO_TCPV4 and off.gso_size else VNET_GSO_NONE
    return _HDR.pack(
        VNET_F_NEEDS_CSUM if off.needs_csum else 0,
        gso,
        min(off.hdr_len, frame_len) & 0xFFFF,
        off.gso_size & 0xFFFF,
        off.csum_start & 0xFFFF,
        off.csum_offset & 0xFFFF,
        0,
    )


def check_name(name: str) -> bytes:
    """``name`` as the kernel takes it; TapError with the reason if Linux would refuse it."""
    raw = name.encode()
    if not raw:
        raise TapError("a TAP interface needs a name, like hvtap0")
    if len(raw) >= IFNAMSIZ:
        raise TapError(
            f'TAP name "{name}" is {len(raw)} bytes long: Linux interface names have at most '
            f"{IFNAMSIZ - 1}; pick a shorter one"
        )
    if name in (".", "..") or any(c in "/:" or c.isspace() for c in name) or "\0" in name:
        raise TapError(
            f'"{name}" is not a valid interface name (no "/", ":", spaces or NUL, '
            'not "." or ".."); pick another one'
        )
    return raw


def _exists(name: str) -> bool:
    try:  # asks the calling thread's network namespace (/sys/class/net may be another's)
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _open_error(name: str, e: OSError) -> TapError:
    """The TapError for a failed open of /dev/net/tun."""
    if e.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return TapError(
            f'cannot open TAP "{name}": {TUN_PATH} is missing (load the tun module: sudo '
            f"modprobe tun; in a container, pass the device in: --device {TUN_PATH})",
            e.errno,
        )
    if e.errno in (errno.EACCES, errno.EPERM):
        try:
            mode = f"mode {stat.S_IMODE(os.stat(TUN_PATH).st_mode):04o}"
        except OSError:
            mode = "no access"
        return TapError(
            f'cannot open TAP "{name}": {TUN_PATH} is not open to you ({mode}; it is usually '
            f"0666): needs CAP_NET_ADMIN (run as root, or make {TUN_PATH} read-write for you "
            f"and pre-create it: sudo ip tuntap add mode tap user $USER name {name})",
            e.errno,
        )
    return TapError(f'cannot open TAP "{name}": {TUN_PATH}: {e.strerror}', e.errno)


def _setiff_error(name: str, e: OSError) -> TapError:
    """The TapError for a failed TUNSETIFF (attaching to, or creating, the interface)."""
    exists = _exists(name)
    if e.errno in (errno.EPERM, errno.EACCES):
        if exists:
            return TapError(
                f'cannot open TAP "{name}": it belongs to another user or group: needs '
                f"CAP_NET_ADMIN (run as root, or hand it to you: sudo ip tuntap del mode tap "
                f"name {name} && sudo ip tuntap add mode tap user $USER name {name})",
                e.errno,
            )
        return TapError(
            f'cannot create TAP "{name}": needs CAP_NET_ADMIN (run as root, or pre-create it: '
            f"sudo ip tuntap add mode tap user $USER name {name})",
            e.errno,
        )
    if e.errno == errno.EBUSY:
        return TapError(
            f'cannot open TAP "{name}": another process has it open (a TAP has one reader '
            "here); stop that process or pick another name",
            e.errno,
        )
    if e.errno == errno.EINVAL and exists:
        return TapError(
            f'cannot open TAP "{name}": an interface with that name exists and is not a '
            f"single-queue TAP (ip -d link show {name} says what it is); pick another name",
            e.errno,
        )
    verb = "open" if exists else "create"
    return TapError(f'cannot {verb} TAP "{name}": {e.strerror}', e.errno)


class TapDevice:
    """A TAP interface's descriptor: ``deliver`` writes a frame to the host, ``receive``
    reads the host's frames. ``offload=False`` asks the kernel for complete frames only
    (it checksums and segments for us); writes take offloads either way."""

    def __init__(self, name: str, *, offload: bool = True) -> None:
        raw = check_name(name)
        self.counters: collections.Counter[str] = collections.Counter()
        self.offload = offload
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise _open_error(name, e) from None
        try:
            try:
                ifr = fcntl.ioctl(
                    fd, TUNSETIFF, struct.pack("16sH22x", raw, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
                )
            except OSError as e:
                raise _setiff_error(name, e) from None
            self.name = ifr[:IFNAMSIZ].split(b"\0", 1)[0].decode()
            self._configure(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._buf = bytearray(VNET_HDR_LEN + MAX_FRAME)
        self._bufs = [self._buf]
        self._view = memoryview(self._buf)

    def _configure(self, fd: int) -> None:
        def ioctl(request: int, arg: int | bytes, what: str) -> None:
            try:
                fcntl.ioctl(fd, request, arg)
            except OSError as e:
                raise TapError(
                    f'TAP "{self.name}": the kernel refused {what} ({e.strerror})', e.errno
                ) from None

        ioctl(TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN), "a 12-byte virtio_net_hdr")
        if sys.byteorder == "big":  # little-endian hosts already speak VERSION_1's order
            ioctl(TUNSETVNETLE, struct.pack("i", 1), "a little-endian virtio_net_hdr")
        # by value, not through a pointer
        ioctl(TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 if self.offload else 0, "offloads")

    def fileno(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Close the descriptor (an interface this opened and created goes away with it);
        a waiting ``receive`` returns."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(RuntimeError):  # outside trio: nobody is waiting
                trio.lowlevel.notify_closing(fd)
            os.close(fd)

    def __enter__(self) -> TapDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- to the host -----------------------------------------------------------------------

    def deliver(self, frame: bytes, off: Offload | None = None) -> None:
        """Write one frame to the host (``TapPort.deliver``): never blocks, never raises;
        what the kernel will not take now is dropped and counted."""
        c = self.counters
        if self._fd < 0:
            c["tx_dropped"] += 1
            c["tx_closed"] += 1
            return
        try:
            os.writev(self._fd, (build_vnet_header(off, len(frame)), frame))
        except OSError as e:
            c["tx_dropped"] += 1
            if e.errno == errno.EAGAIN:
                c["tx_busy"] += 1
            elif e.errno == errno.EIO:  # the link is down
                c["tx_link_down"] += 1
            elif e.errno == errno.EINVAL:  # a runt, or a header the kernel refuses
                c["tx_invalid"] += 1
            else:
                c["tx_error"] += 1
            return
        c["tx_frames"] += 1
        c["tx_bytes"] += len(frame)

    # -- from the host ---------------------------------------------------------------------

    def read_available(self, handle: Handler, limit: int = BATCH) -> bool:
        """Read up to ``limit`` waiting frames, handing each to ``handle`` as it comes; True
        once none are left (EAGAIN). TapError if the interface was deleted under us."""
        c = self.counters
        buf, view = self._buf, self._view
        for _ in range(limit):
            if self._fd < 0:
                return True
            try:
                n = os.readv(self._fd, self._bufs)
            except BlockingIOError:
                return True
            except OSError as e:
                if e.errno == errno.EBADFD:
                    raise TapError(
                        f'TAP "{self.name}" is gone: the interface was deleted', e.errno
                    ) from None
                raise TapError(f'TAP "{self.name}": read failed: {e.strerror}', e.errno) from None
            if n < VNET_HDR_LEN + ETH_HEADER:
                c["rx_runt"] += 1
                continue
            off = parse_vnet_header(buf)
            if off is not None and off.gso_type not in (GSO_NONE, GSO_TCPV4):
                c["rx_gso_unsupported"] += 1
                continue
            frame = bytes(view[VNET_HDR_LEN:n])
            c["rx_frames"] += 1
            c["rx_bytes"] += len(frame)
            if off is not None:
                c["rx_offloaded"] += 1
            handle(frame, off)
        return False

    async def receive(self, handle: Handler) -> None:
        """Hand every frame the host sends to ``handle``, until the device is closed."""
        await read_until_closed(self.fileno, functools.partial(self.read_available, handle))


class TapPort(SwitchPort):
    """A TAP interface on a switch, as port ``tap:NAME``: ``run`` is its reading task.
    ``tap``: a TapDevice, or a name to open one with (TapError if that cannot be done). Its
    ``counters`` are the switch's for the port; ``tap.counters`` the descriptor's."""

    def __init__(
        self, switch: SwitchSide, tap: TapDevice | str, capture: Path | None = None
    ) -> None:
        self.tap = TapDevice(tap) if isinstance(tap, str) else tap
        super().__init__(switch, f"tap:{self.tap.name}", capture=capture)

    def deliver(self, frame: Frame) -> None:
        self.tap.deliver(frame.data, frame.offload)  # the kernel finishes offloaded frames

    def _from_host(self, data: bytes, offload: Offload | None) -> None:
        self.switch.send(self.id, Frame(data, offload))

    async def run(
        self, *, task_status: trio.TaskStatus[TapPort] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Move the host's frames onto the switch until cancelled; then close the TAP (the
        switch port goes down: frames for it are dropped and counted by the switch)."""
        try:
            task_status.started(self)
            await self.tap.receive(self._from_host)
        finally:
            self.set_up(False)
            self.tap.close()
