"""Lab files: a TOML description of switches and VMs, validated into typed structures.

    [switches.lan]
    capture = "lan.pcapng"            # optional: every frame on this switch
    subnet = "10.0.0.0/24"            # built-in services at its first address (10.0.0.1)
    gateway = "10.0.0.254"            # the router DHCP hands out (default: the services)
    dhcp = true                       # or { pool = "10.0.0.100-10.0.0.199", lease = "1h" }
    dns = true                        # answers a.lab, b.lab with the VMs' addresses
    tftp = "tftp-root"                # read-only, relative to the lab file
    tap = "hvtap0"                    # the host on this switch
    vxlan = { vni = 42, local = "10.9.0.1", remote = "10.9.0.2" }  # other hosts (hv.lab._hosts)

    [switches.wan]

    [[links]]
    a = "lan"
    b = "wan"
    impair = { delay = "20ms", jitter = "5ms", loss = 0.01, rate = "50Mbit", seed = 7 }

    [vms.a]
    kernel = "linux"                  # a bundled guest, an image name or a path
    image = "debian"                  # optional: a Debian root disk (or { packages = [...] })
    append = 'hv.run="ping -c 5 10.0.0.2"'
    mem = "256M"
    nics = [{ switch = "lan", ip = "10.0.0.1/24" }]   # mac optional: stable from the names
    # more NIC keys: ip = "dhcp", vlan = 10 (access port), trunk = [10, 20] with native = 1,
    # gateway, capture, impair = {...} (on the cable: each direction, or egress/ingress)

Every error names the key it is about (``vms.b.nics[0].switch: no switch named "lna"
(switches: lan)``) and is a ``ConfigError``. Paths are relative to the lab file. ``ip =
"dhcp"`` needs a DHCP server the NIC's untagged frames reach in VLAN 1 (where the built-in
services answer): on its switch or one cabled to it through ``[[links]]``. A capture never
destroys a file (``check_captures``, before anything starts): not the lab file, a disk, or
another capture, and an existing file that is not pcapng only with ``hv up --force``. A NIC's
``ip`` reaches the guest on its command line as ``ip=``, the form both the Linux userland's
init and the firmware runtime read; ``append`` adds to the kernel's default command line,
``cmdline`` replaces it. ``image`` (with ``kernel = "linux"``) boots a Debian root file system
from ``hv image build debian``: the default package set (``"debian"``), another one
(``{ packages = ["iperf3"] }``) or a qcow2 file; each VM gets its own throwaway overlay on the
read-only base as its first disk (``/dev/vda``, ``root=/dev/vda``, ``hostname=NAME`` on its
command line), and 512M of RAM unless ``mem`` says otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockdev.open import DiskSpec, parse_disk_spec
from hv._errors import ConfigError
from hv._nic import default_mac, nic_cmdline
from hv._timeline import DEFAULT_LOOKAHEAD_PS
from hv._values import (
    MIB,
    BadValue,
    duration,
    host_threads,
    ipv4_address,
    ipv4_interface,
    ipv4_network,
    mac,
    size,
    string,
    table,
    unknown,
)
from hv.hw import DEFAULT_MIPS, VirtualClock
from hv.hw import _platform as P
from hv.lab._impair import parse_impairment
from hv.lab._vxlan_keys import VxlanSpec, parse_hosts, parse_vxlan, vni_for
from netfabric.impair import Impairment

IMAGE_MEM_DEFAULT = 512 * MIB  # a Debian VM's RAM (apt, dpkg, FRR want more than 128M)

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

SWITCH_KEYS = {"capture", "subnet", "gateway", "dhcp", "dns", "tftp", "tap", "vxlan"}
DHCP_KEYS = {"pool", "lease", "boot"}
VM_KEYS = {
    "kernel", "append", "cmdline", "mem", "nics", "initrd", "quantum", "disks", "image", "host",
    "shard", "smp", "clone",
}  # fmt: skip
CLONE_KEYS = {"from", "count"}
CLONE_MAX = 10_000
# What a clone takes from its snapshot, not from the lab file.
CLONE_FROM_SNAPSHOT = ("kernel", "append", "cmdline", "mem", "initrd", "disks", "image", "smp")
SHARD_MAX = 1023  # a lab over several processes (hv.lab._shards): shards 0..SHARD_MAX
IMAGE_KEYS = {"packages"}
DISK_KEYS = {"file", "ro", "format", "snapshot", "serial", "backing_dirs"}
NIC_KEYS = {"switch", "ip", "mac", "gateway", "capture", "vlan", "trunk", "native", "impair"}
LINK_KEYS = {"a", "b", "impair", "vlans"}
LAB_KEYS = {"name", "switches", "vms", "links", "clock", "seed", "mips", "lookahead", "hosts"}
LOOKAHEAD_MIN_PS = 1_000_000  # 1 us
LOOKAHEAD_MAX_PS = 1_000_000_000_000  # 1 s
CLOCKS = ("real", "virtual")
TAP_NAME_MAX = 15  # IFNAMSIZ - 1
LAB_FILE_MAX = 1 << 20  # bytes: a lab file is a page or two of TOML
# The VLAN the built-in services (DHCP, DNS, TFTP) answer in: untagged on their switch, and
# VLAN 1 is what links carry untagged (netfabric.ports.link.Link).
SERVICES_VLAN = 1


@dataclass(frozen=True)
class DhcpSpec:
    pool: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]  # first, last (inclusive)
    lease: float = 3600.0  # seconds
    boot: str | None = None  # boot file name offered (with the TFTP server as next-server)


@dataclass(frozen=True)
class SwitchSpec:
    name: str
    capture: Path | None = None
    subnet: ipaddress.IPv4Network | None = None
    dhcp: DhcpSpec | None = None
    dns: bool = False
    tftp: Path | None = None
    tap: str | None = None
    gateway: ipaddress.IPv4Address | None = None  # the router DHCP hands out (default: services)
    vxlan: VxlanSpec | None = None  # an uplink to other hosts (hv.lab._hosts)

    @property
    def service_ip(self) -> ipaddress.IPv4Address | None:
        """Where the built-in services answer: the subnet's first address."""
        return None if self.subnet is None else self.subnet.network_address + 1

    @property
    def services(self) -> bool:
        return self.dhcp is not None or self.dns or self.tftp is not None


@dataclass(frozen=True)
class Impair:
    """A cable's impairment (``impair = {...}``): each direction's settings."""

    egress: Impairment
    ingress: Impairment


@dataclass(frozen=True)
class LinkSpec:
    a: str
    b: str
    impair: Impair | None = None
    vlans: frozenset[int] | None = None  # tagged VLANs it carries (None: all)


@dataclass(frozen=True)
class NicSpec:
    switch: str
    mac: bytes
    ip: ipaddress.IPv4Interface | str | None = None  # or "dhcp"
    gateway: ipaddress.IPv4Address | None = None
    capture: Path | None = None  # this NIC's own pcapng file
    vlan: int | None = None  # an access port of this VLAN
    trunk: frozenset[int] | None = None  # a trunk carrying these VLANs tagged
    native: int | None = None  # and this one untagged
    impair: Impair | None = None


@dataclass(frozen=True)
class ImageSpec:
    """A VM's root disk: the Debian image built for ``packages``, or a qcow2 ``file``."""

    packages: tuple[str, ...] = ()
    file: Path | None = None


@dataclass(frozen=True)
class VmSpec:
    name: str
    kernel: str  # a bundled guest, "linux", or a path (resolved against the lab's folder)
    mem: int = P.MEM_DEFAULT
    append: str = ""
    cmdline: str | None = None
    initrd: Path | None = None
    quantum: int | None = None
    smp: int = 1  # harts
    nics: tuple[NicSpec, ...] = ()
    disks: tuple[DiskSpec, ...] = ()  # FILE relative to the lab's folder
    image: ImageSpec | None = None  # a root disk before ``disks`` (vda)
    host: str | None = None  # in a lab over [hosts]: the host it runs on
    # The process (MPI rank) that runs it when the lab runs over several (hv.lab._shards);
    # None: placed automatically. A lab in one process runs every VM, whatever this says.
    shard: int | None = None
    # Restored from this VM snapshot (``clone = { from, count }``: VMs NAME-1..NAME-count).
    clone: Path | None = None


@dataclass(frozen=True)
class LabSpec:
    name: str
    base: Path  # the folder paths are relative to
    switches: dict[str, SwitchSpec] = field(default_factory=dict)
    vms: dict[str, VmSpec] = field(default_factory=dict)
    links: tuple[LinkSpec, ...] = ()
    source: Path | None = None  # the lab file (resolved), when read from one
    clock: str = "virtual"  # "real" or "virtual" (docs/TIME.md); a lab with a TAP: real
    seed: int | None = None  # mixed into every impairment's seed
    mips: int = DEFAULT_MIPS  # virtual time: a hart's nominal rate
    lookahead_ps: int = DEFAULT_LOOKAHEAD_PS  # virtual time: a NIC cable's minimum latency
    # Host threads that run the VMs; None: all the host's cores. A choice of the host's,
    # not of the lab's: the same run for any number on virtual time (hv up --jobs).
    jobs: int | None = None
    # A lab over several hosts (hv.lab._hosts): host name -> its VXLAN address; once one
    # host's part is taken (``for_host``), that host, the VMs on the others and every link.
    hosts: dict[str, tuple[str, int]] = field(default_factory=dict)
    host: str | None = None
    remote_vms: dict[str, VmSpec] = field(default_factory=dict)
    all_links: tuple[LinkSpec, ...] | None = None
    # The tables it was parsed from (a snapshot keeps them: hv.lab._snapshot).
    doc: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def every_vm(self) -> dict[str, VmSpec]:
        """The lab's VMs, those on other hosts too."""
        return {**self.vms, **self.remote_vms}

    def reaches(self, switch: str) -> frozenset[str]:
        """The switches whose built-in services ``switch``'s untagged frames reach (itself
        and those cabled to it, directly or through others, on any host)."""
        return connected(switch, self.links if self.all_links is None else self.all_links)

    def static_leases(self, switch: str) -> dict[bytes, tuple[ipaddress.IPv4Address, str]]:
        """MAC -> (address, host name) for the NICs on ``switch`` with a fixed address."""
        out = {}
        for vm in self.every_vm().values():
            for nic in vm.nics:
                if nic.switch == switch and isinstance(nic.ip, ipaddress.IPv4Interface):
                    out[nic.mac] = (nic.ip.ip, vm.name)
        return out


def _clone(value: Any, key: str, base: Path) -> tuple[Path, int]:
    """``clone = { from = "SNAPSHOT", count = N }``: a VM snapshot file (``hv snapshot LAB VM
    PATH``, or a lab snapshot's ``vms/NAME.hvsnap``) and how many VMs start from it."""
    t = table(value, key)
    unknown(t, CLONE_KEYS, key)
    if "from" not in t:
        raise ConfigError(f"{key}.from: missing (a VM snapshot file)")
    src = base / string(t["from"], f"{key}.from")
    count = t.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= CLONE_MAX:
        raise ConfigError(f"{key}.count: {count!r} is not a number of clones in 1..{CLONE_MAX}")
    return src, count


def _vid(value: Any, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4094:
        raise ConfigError(f"{key}: {value!r} is not a VLAN id in 1..4094")
    return value


def _vids(value: Any, key: str) -> frozenset[int]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: expected a list of VLAN ids, e.g. [10, 20]")
    return frozenset(_vid(v, f"{key}[{i}]") for i, v in enumerate(value))


def parse_switch(
    name: str, t: dict[str, Any], base: Path, *, over_hosts: bool = False
) -> SwitchSpec:
    key = f"switches.{name}"
    unknown(t, SWITCH_KEYS, key)
    cap = base / string(t["capture"], f"{key}.capture") if "capture" in t else None
    subnet = None
    if "subnet" in t:
        subnet = ipv4_network(t["subnet"], f"{key}.subnet")
        if subnet.num_addresses < 4:
            raise ConfigError(f"{key}.subnet: {subnet} is too small for hosts (at most /30)")
    wants = [k for k in ("dhcp", "dns", "tftp") if t.get(k, False) is not False]
    if wants and subnet is None:
        raise ConfigError(f"{key}.{wants[0]}: the built-in services need {key}.subnet")
    dhcp = None
    raw = t.get("dhcp", False)
    if raw is True or isinstance(raw, dict):
        assert subnet is not None
        d = raw if isinstance(raw, dict) else {}
        unknown(d, DHCP_KEYS, f"{key}.dhcp")
        hosts = list(subnet.hosts())
        if "pool" in d:
            text = string(d["pool"], f"{key}.dhcp.pool")
            first_s, sep, last_s = text.partition("-")
            if not sep:
                raise ConfigError(f"{key}.dhcp.pool: {text!r} is not a range like A.B.C.D-A.B.C.E")
            first = ipv4_address(first_s, f"{key}.dhcp.pool")
            last = ipv4_address(last_s, f"{key}.dhcp.pool")
            if last < first:
                raise ConfigError(f"{key}.dhcp.pool: {text} ends before it starts")
            for a in (first, last):
                if a not in subnet or a in (subnet.network_address, subnet.broadcast_address):
                    raise ConfigError(f"{key}.dhcp.pool: {a} is not a host of {subnet}")
            if first <= subnet.network_address + 1 <= last:
                raise ConfigError(
                    f"{key}.dhcp.pool: {text} holds the services' address "
                    f"{subnet.network_address + 1}"
                )
        else:  # the upper half of the subnet's hosts but the last (often a router's)
            first, last = hosts[len(hosts) // 2], hosts[-2]
        lease = duration(d.get("lease", 3600), f"{key}.dhcp.lease")
        if not 60 <= lease <= 86400 * 365:
            raise ConfigError(f"{key}.dhcp.lease: {lease:g} s is out of range 60 s..365 d")
        boot = string(d["boot"], f"{key}.dhcp.boot") if "boot" in d else None
        dhcp = DhcpSpec((first, last), lease, boot)
    elif raw is not False:
        raise ConfigError(f"{key}.dhcp: expected true, false or a table (pool, lease, boot)")
    dns = t.get("dns", False)
    if not isinstance(dns, bool):
        raise ConfigError(f"{key}.dns: expected true or false")
    tftp = None
    if "tftp" in t:
        tftp = base / string(t["tftp"], f"{key}.tftp")
        if not tftp.is_dir():
            raise ConfigError(f"{key}.tftp: {str(tftp)!r} is not a directory")
    tap = None
    if "tap" in t:
        tap = string(t["tap"], f"{key}.tap")
        if not 0 < len(tap.encode()) <= TAP_NAME_MAX or "/" in tap or tap.strip() != tap:
            raise ConfigError(
                f"{key}.tap: {tap!r} is not an interface name (1..{TAP_NAME_MAX} bytes)"
            )
    gateway = None
    if "gateway" in t:
        gateway = ipv4_address(string(t["gateway"], f"{key}.gateway"), f"{key}.gateway")
        if subnet is None or gateway not in subnet:
            raise ConfigError(f"{key}.gateway: {gateway} is not in {key}.subnet")
    vxlan = parse_vxlan(t["vxlan"], f"{key}.vxlan", over_hosts=over_hosts) if "vxlan" in t else None
    return SwitchSpec(name, cap, subnet, dhcp, bool(dns), tftp, tap, gateway, vxlan)


def _impair(value: Any, key: str) -> Impair:
    return Impair(*parse_impairment(value, key))


def _untagged_vlan(n: dict[str, Any], nkey: str) -> int | None:
    """The VLAN a NIC's untagged frames are in: its access VLAN, a trunk's native one (None:
    a trunk without one drops them), else VLAN 1."""
    if "vlan" in n:
        return _vid(n["vlan"], f"{nkey}.vlan")
    if "trunk" in n:
        return _vid(n["native"], f"{nkey}.native") if "native" in n else None
    return SERVICES_VLAN


def _nic(
    n: dict[str, Any],
    nkey: str,
    vname: str,
    i: int,
    switches: dict[str, SwitchSpec],
    base: Path,
    reach: dict[str, frozenset[str]],
) -> NicSpec:
    """One NIC; ``reach``: the switches each switch's VLAN-1 frames reach over links."""
    unknown(n, NIC_KEYS, nkey)
    sw = string(n.get("switch"), f"{nkey}.switch") if "switch" in n else None
    if sw is None:
        raise ConfigError(f"{nkey}.switch: missing (switches: {', '.join(switches) or 'none'})")
    if sw not in switches:
        known = ", ".join(switches) or "none defined"
        raise ConfigError(f'{nkey}.switch: no switch named "{sw}" (switches: {known})')
    spec = switches[sw]
    ip: ipaddress.IPv4Interface | str | None = None
    if "ip" in n:
        text = string(n["ip"], f"{nkey}.ip")
        if text == "dhcp":
            vid = _untagged_vlan(n, nkey)
            if vid != SERVICES_VLAN or not any(switches[x].dhcp for x in reach.get(sw, (sw,))):
                where = "" if vid == SERVICES_VLAN else (
                    f" (this port's untagged frames are in VLAN {vid}; the built-in services "
                    f"answer VLAN {SERVICES_VLAN}, untagged)" if vid else
                    " (a trunk without a native VLAN sends no untagged frames)"
                )  # fmt: skip
                raise ConfigError(
                    f"{nkey}.ip: dhcp needs a DHCP server on switch {sw} or one linked to it"
                    f"{where} ([switches.{sw}] subnet = ..., dhcp = true)"
                )
            ip = "dhcp"
        else:
            try:
                ip = ipv4_interface(
                    text, f"{nkey}.ip", spec.subnet.prefixlen if spec.subnet else 24
                )
            except BadValue as e:
                raise BadValue(f"{e} or dhcp") from None
            if spec.subnet is not None:
                if ip.ip not in spec.subnet:
                    raise ConfigError(
                        f"{nkey}.ip: {ip.ip} is outside switch {sw}'s subnet {spec.subnet}"
                    )
                if ip.ip == spec.service_ip:
                    raise ConfigError(
                        f"{nkey}.ip: {ip.ip} is the built-in services' address on {sw}"
                    )
    gateway = None
    if "gateway" in n:
        gateway = ipv4_address(n["gateway"], f"{nkey}.gateway")
        if not isinstance(ip, ipaddress.IPv4Interface) or gateway not in ip.network:
            raise ConfigError(f"{nkey}.gateway: {gateway} is not in the NIC's subnet")
    nic_mac = mac(n["mac"], f"{nkey}.mac") if "mac" in n else default_mac(vname, i)
    cap = base / string(n["capture"], f"{nkey}.capture") if "capture" in n else None
    vlan = _vid(n["vlan"], f"{nkey}.vlan") if "vlan" in n else None
    trunk = _vids(n["trunk"], f"{nkey}.trunk") if "trunk" in n else None
    native = _vid(n["native"], f"{nkey}.native") if "native" in n else None
    if vlan is not None and (trunk is not None or native is not None):
        raise ConfigError(f"{nkey}.vlan: a port is either an access port (vlan) or a trunk")
    if native is not None and trunk is None:
        raise ConfigError(f"{nkey}.native: only a trunk has a native VLAN (add trunk = [...])")
    impair = _impair(n["impair"], f"{nkey}.impair") if "impair" in n else None
    return NicSpec(sw, nic_mac, ip, gateway, cap, vlan, trunk, native, impair)


def _disks(raw: Any, key: str, nics: int = 0) -> tuple[DiskSpec, ...]:
    """``disks = ["base.qcow2,snapshot", { file = "data.img", ro = true, serial = "x" }]``;
    a table may allow backing files outside the image's folder: ``backing_dirs = ["../base"]``
    (relative to the lab file)."""
    if not isinstance(raw, list):
        raise ConfigError(f"{key}: expected a list of disk specs or tables")
    if len(raw) + nics > P.VIRTIO_SLOTS:
        raise ConfigError(
            f"{key}: {len(raw)} disks and {nics} NICs, but hv-virt has {P.VIRTIO_SLOTS} virtio "
            "slots (one per disk or NIC)"
        )
    return tuple(_disk(val, f"{key}[{i}]") for i, val in enumerate(raw))


def _disk(val: Any, dkey: str) -> DiskSpec:
    if not isinstance(val, dict):
        try:
            return parse_disk_spec(string(val, dkey))
        except ValueError as e:
            raise ConfigError(f"{dkey}: {e}") from None
    unknown(val, DISK_KEYS, dkey)
    if "file" not in val:
        raise ConfigError(f"{dkey}.file: missing (the image file)")
    flags = {}
    for flag in ("ro", "snapshot"):
        flags[flag] = val.get(flag, False)
        if not isinstance(flags[flag], bool):
            raise ConfigError(f"{dkey}.{flag}: expected true or false")
    opts = {o: string(val[o], f"{dkey}.{o}") for o in ("format", "serial") if o in val}
    dirs = val.get("backing_dirs", [])
    if not isinstance(dirs, list) or not all(isinstance(d, str) and d for d in dirs):
        raise ConfigError(f"{dkey}.backing_dirs: expected a list of folder names")
    try:
        return DiskSpec(
            string(val["file"], f"{dkey}.file"), flags["ro"], opts.get("format"),
            flags["snapshot"], opts.get("serial"), tuple(dirs),
        )  # fmt: skip
    except ValueError as e:
        raise ConfigError(f"{dkey}: {e}") from None


def _image(val: Any, key: str, kernel: Any, base: Path) -> ImageSpec:
    """``image = "debian"``, ``image = { packages = [...] }`` or ``image = "FILE.qcow2"``."""
    from hv.build import DEFAULT_PACKAGES, parse_packages

    if kernel != "linux":
        raise ConfigError(
            f'{key}: needs kernel = "linux" (hvfabric\'s init mounts the image as its root)'
        )
    if isinstance(val, dict):
        unknown(val, IMAGE_KEYS, key)
        if "packages" not in val:
            raise ConfigError(f"{key}.packages: missing (a list of Debian package names)")
        if not isinstance(val["packages"], list):
            raise ConfigError(f"{key}.packages: expected a list of Debian package names")
        return ImageSpec(packages=parse_packages(val["packages"], f"{key}.packages"))
    name = string(val, key)
    if name == "debian":
        return ImageSpec(packages=DEFAULT_PACKAGES)
    if not name:
        raise ConfigError(f'{key}: give "debian", {{ packages = [...] }} or a qcow2 file')
    return ImageSpec(file=base / name)


def _shared_disks(vms: dict[str, VmSpec], base: Path) -> None:
    """Refuse an image that one disk writes and another disk uses too (the same file under
    any name: relative, through a symlink or a hard link), before anything starts; the image
    locks would refuse it when the second disk opens (``blockdev.raw.lock_image``)."""
    seen: dict[object, tuple[str, bool]] = {}
    for vname, vm in vms.items():
        for i, spec in enumerate(vm.disks):
            path = os.path.realpath(base / spec.path)
            ident: object = path
            with contextlib.suppress(OSError):
                st = os.stat(path)
                ident = (st.st_dev, st.st_ino)
            writes = not (spec.read_only or spec.snapshot)
            key = f"vms.{vname}.disks[{i}]"
            if ident in seen and (writes or seen[ident][1]):
                other, other_writes = seen[ident]
                writer = other if other_writes else key
                raise ConfigError(
                    f"{key}: {spec.path} is also {other}, and {writer} writes it: an image has "
                    "one writer or any number of readers (give both ro or snapshot)"
                )
            if writes or ident not in seen:
                seen[ident] = (key, writes)


def _links(raw: Any, switches: dict[str, SwitchSpec]) -> tuple[LinkSpec, ...]:
    from netfabric.ports.link import find_loop

    if not isinstance(raw, list):
        raise ConfigError("links: expected [[links]] tables with a and b")
    links = []
    for i, val in enumerate(raw):
        key = f"links[{i}]"
        t = table(val, key)
        unknown(t, LINK_KEYS, key)
        ends = []
        for end in ("a", "b"):
            if end not in t:
                raise ConfigError(f"{key}.{end}: missing (the switches the link joins)")
            name = string(t[end], f"{key}.{end}")
            if name not in switches:
                known = ", ".join(switches) or "none defined"
                raise ConfigError(f'{key}.{end}: no switch named "{name}" (switches: {known})')
            ends.append(name)
        impair = _impair(t["impair"], f"{key}.impair") if "impair" in t else None
        vlans = _vids(t["vlans"], f"{key}.vlans") if "vlans" in t else None
        links.append(LinkSpec(ends[0], ends[1], impair, vlans))
        loop = find_loop([(x.a, x.b) for x in links])
        if loop is not None:
            raise ConfigError(
                f"{key}: this link closes a loop ({' - '.join(loop)}); hv has no spanning "
                "tree, so a loop would send every broadcast around forever: remove a link"
            )
    return tuple(links)


def connected(switch: str, links: tuple[LinkSpec, ...]) -> frozenset[str]:
    """The switches ``switch`` reaches over ``links`` (itself included) in VLAN 1, where the
    built-in services answer: every link carries VLAN 1 untagged, whatever else it carries."""
    seen, todo = {switch}, [switch]
    while todo:
        here = todo.pop()
        for link in links:
            for a, b in ((link.a, link.b), (link.b, link.a)):
                if a == here and b not in seen:
                    seen.add(b)
                    todo.append(b)
    return frozenset(seen)


def parse_lab(
    text: str, base: Path, default_name: str = "lab", *, clock: str | None = None
) -> LabSpec:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not a valid TOML file: {e}") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ConfigError(
            "not a valid lab file: arrays or tables nested too deeply (a lab needs a few levels)"
        ) from None
    return parse_doc(doc, base, default_name, clock=clock)


def parse_doc(
    doc: dict[str, Any], base: Path, default_name: str = "lab", *, clock: str | None = None
) -> LabSpec:
    """A lab from its tables (what a TOML file holds, or what ``Lab`` builds in code);
    ``clock`` in place of its ``clock`` key (``hv up --clock``: a TAP lab whose file says
    "virtual" runs with "real")."""
    unknown(doc, LAB_KEYS, "lab")
    name = check_lab_name(string(doc.get("name", default_name), "name"), "name")
    hosts = parse_hosts(doc["hosts"]) if "hosts" in doc else {}
    switches: dict[str, SwitchSpec] = {}
    taps: dict[str, str] = {}
    vnis: dict[tuple[str | None, int, int | None], str] = {}
    for sname, sval in table(doc.get("switches", {}), "switches").items():
        key = f"switches.{sname}"
        if not _NAME.match(sname):
            raise ConfigError(f"{key}: switch names are lowercase letters, digits, - and _")
        switches[sname] = spec = parse_switch(sname, table(sval, key), base, over_hosts=bool(hosts))
        if spec.tap is not None:
            if spec.tap in taps:
                raise ConfigError(f"{key}.tap: {spec.tap} is also on switch {taps[spec.tap]}")
            taps[spec.tap] = sname
        if spec.vxlan is not None and spec.vxlan.local is not None:
            v = spec.vxlan
            if (v.local, v.port, v.vni) in vnis:
                raise ConfigError(
                    f"{key}.vxlan.vni: {v.vni} on {v.local}:{v.port} is also switch "
                    f"{vnis[(v.local, v.port, v.vni)]}'s; each switch needs its own VNI"
                )
            vnis[(v.local, v.port, v.vni)] = sname
    links = _links(doc.get("links", []), switches)
    reach = {name: connected(name, links) for name in switches}
    vms: dict[str, VmSpec] = {}
    raw_vms = table(doc.get("vms", {}), "vms")
    if not raw_vms:
        raise ConfigError("vms: a lab needs at least one VM ([vms.NAME] with a kernel)")
    macs: dict[bytes, str] = {}
    addresses: dict[tuple[str, ipaddress.IPv4Address], str] = {}
    entries: list[tuple[str, str, dict[str, Any], Path | None]] = []
    for vname, vval in raw_vms.items():
        key = f"vms.{vname}"
        if not _NAME.match(vname):
            raise ConfigError(f"{key}: VM names are lowercase letters, digits, - and _")
        t = table(vval, key)
        unknown(t, VM_KEYS, key)
        if "clone" not in t:
            entries.append((vname, key, t, None))
            continue
        src, count = _clone(t["clone"], f"{key}.clone", base)
        for k in CLONE_FROM_SNAPSHOT:
            if k in t:
                raise ConfigError(f"{key}.{k}: a clone's {k} is its snapshot's (drop the key)")
        rest = {k: v for k, v in t.items() if k != "clone"}
        for i in range(1, count + 1):
            name = f"{vname}-{i}"
            if name in raw_vms:
                raise ConfigError(f"{key}.clone: clone {name} is also a VM of the lab")
            entries.append((name, f"{key}.clone[{name}]", rest, src))
    if len(entries) > CLONE_MAX:
        raise ConfigError(f"vms: {len(entries)} VMs, more than {CLONE_MAX}")
    for vname, key, t, clone in entries:
        if "kernel" not in t and clone is None:
            raise ConfigError(f"{key}.kernel: missing (a bundled guest, linux, or a path)")
        nics = []
        raw_nics = t.get("nics", [])
        if not isinstance(raw_nics, list):
            raise ConfigError(f"{key}.nics: expected a list of tables")
        for i, nval in enumerate(raw_nics):
            nkey = f"{key}.nics[{i}]"
            nic = _nic(table(nval, nkey), nkey, vname, i, switches, base, reach)
            if nic.mac in macs:
                raise ConfigError(f"{nkey}.mac: {nic.mac.hex(':')} is also {macs[nic.mac]}'s")
            macs[nic.mac] = nkey
            if isinstance(nic.ip, ipaddress.IPv4Interface):
                where = (nic.switch, nic.ip.ip)
                if where in addresses:
                    raise ConfigError(f"{nkey}.ip: {nic.ip.ip} is also {addresses[where]}'s")
                addresses[where] = nkey
                dhcp = switches[nic.switch].dhcp
                if dhcp is not None and dhcp.pool[0] <= nic.ip.ip <= dhcp.pool[1]:
                    raise ConfigError(
                        f"{nkey}.ip: {nic.ip.ip} is inside switch {nic.switch}'s DHCP pool "
                        f"{dhcp.pool[0]}-{dhcp.pool[1]} (a static lease must not overlap it)"
                    )
            nics.append(nic)
        quantum = t.get("quantum")
        if quantum is not None and (
            not isinstance(quantum, int)
            or isinstance(quantum, bool)
            or not P.QUANTUM_MIN <= quantum <= P.QUANTUM_MAX
        ):
            raise ConfigError(
                f"{key}.quantum: {quantum!r} is not a number of instructions per slice in "
                f"{P.QUANTUM_MIN}..{P.QUANTUM_MAX} (default {P.DEFAULT_QUANTUM})"
            )
        smp = t.get("smp", 1)
        if not isinstance(smp, int) or isinstance(smp, bool) or not 1 <= smp <= P.SMP_MAX:
            raise ConfigError(
                f"{key}.smp: {smp!r} is not a number of harts in 1..{P.SMP_MAX} (default 1)"
            )
        image = _image(t["image"], f"{key}.image", t["kernel"], base) if "image" in t else None
        slots = len(nics) + (image is not None)
        disks = _disks(t["disks"], f"{key}.disks", slots) if "disks" in t else ()
        if slots > P.VIRTIO_SLOTS:
            raise ConfigError(
                f"{key}.image: the image's disk and {len(nics)} NICs, but hv-virt has "
                f"{P.VIRTIO_SLOTS} virtio slots"
            )
        if len(nics) > P.VIRTIO_SLOTS:
            raise ConfigError(
                f"{key}.nics: {len(nics)} NICs, but hv-virt has {P.VIRTIO_SLOTS} virtio slots"
            )
        vms[vname] = VmSpec(
            name=vname,
            kernel=string(t["kernel"], f"{key}.kernel") if clone is None else "",
            mem=size(t["mem"], f"{key}.mem", bare=MIB, lo=P.MEM_MIN, hi=P.MEM_MAX)
            if "mem" in t
            else (IMAGE_MEM_DEFAULT if image is not None else P.MEM_DEFAULT),
            append=string(t.get("append", ""), f"{key}.append"),
            cmdline=string(t["cmdline"], f"{key}.cmdline") if "cmdline" in t else None,
            initrd=base / string(t["initrd"], f"{key}.initrd") if "initrd" in t else None,
            quantum=quantum,
            smp=smp,
            nics=tuple(nics),
            disks=disks,
            image=image,
            host=string(t["host"], f"{key}.host") if "host" in t else None,
            shard=_shard(t["shard"], f"{key}.shard") if "shard" in t else None,
            clone=clone,
        )
    _shared_disks(vms, base)
    # Virtual time unless the host or other hosts are on the wire (a TAP, VXLAN): docs/TIME.md
    on_wire = any(s.tap is not None or s.vxlan is not None for s in switches.values())
    default = "real" if on_wire or hosts else "virtual"
    overridden = clock
    clock = clock_value(doc.get("clock", default) if clock is None else clock, "clock")
    seed = seed_value(doc.get("seed"), "seed")
    mips = mips_value(doc.get("mips", DEFAULT_MIPS), "mips")
    lookahead_ps = DEFAULT_LOOKAHEAD_PS
    if "lookahead" in doc:
        lookahead_ps = round(duration(doc["lookahead"], "lookahead") * 1e12)
        if not LOOKAHEAD_MIN_PS <= lookahead_ps <= LOOKAHEAD_MAX_PS:
            raise ConfigError(
                f"lookahead: {doc['lookahead']!r} is out of range 1us..1s (the least latency "
                "of a NIC's cable in virtual time; default 200us)"
            )
    if overridden is None and clock == "real":  # (an override keeps the file's keys quiet)
        for key in ("mips", "lookahead"):
            if key in doc:
                why = (
                    "it has a TAP, VXLAN or [hosts]"
                    if default == "real" and "clock" not in doc
                    else "it says so"
                )
                raise ConfigError(
                    f"{key}: only matters on virtual time, but this lab runs on real time "
                    f'({why}): drop {key}, or say clock = "virtual"'
                )
    lab = LabSpec(
        name=name, base=base, switches=switches, vms=vms, links=links, clock=clock, seed=seed,
        mips=mips, lookahead_ps=lookahead_ps, hosts=hosts, doc=doc,
    )  # fmt: skip
    check_hosts(lab)
    check_clock(lab)
    return lab


def _shard(value: Any, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= SHARD_MAX:
        raise ConfigError(
            f"{key}: {value!r} is not a shard number: use 0 to {SHARD_MAX} (the rank of the "
            "process that runs this VM when the lab runs over several: hv up --shards N)"
        )
    return value


def clock_value(value: Any, key: str) -> str:
    """A lab's ``clock``: "real" or "virtual" (a ConfigError naming ``key`` otherwise)."""
    if value not in CLOCKS:
        raise ConfigError(f'{key}: {value!r} is not "real" or "virtual"')
    return str(value)


def seed_value(value: Any, key: str) -> int | None:
    """A lab's ``seed``: None or a whole number >= 0."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ConfigError(f"{key}: {value!r} is not a whole number >= 0")
    return value


def mips_value(value: Any, key: str) -> int:
    """A lab's ``mips``: a rate ``VirtualClock`` takes."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{key}: {value!r} is not a whole number of million instructions/s")
    try:
        VirtualClock(value)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None
    return value


def with_clock(
    spec: LabSpec,
    clock: str | None = None,
    seed: int | None = None,
    mips: int | None = None,
    *,
    jobs: int | None = None,
    option: str = "",
) -> LabSpec:
    """``spec`` with the lab file's ``clock``, ``seed`` and ``mips`` replaced by those given
    (``hv up --clock``, ``open_lab(clock=...)``), checked as the file's are; ``option`` is
    put before the names in errors ("--" for the command line). ``mips`` only sets how fast
    virtual time runs, so it is refused for a lab that runs on real time."""
    name = {k: f"{option}{k}" for k in ("clock", "seed", "mips")}
    changes: dict[str, Any] = {}
    if clock is not None:
        changes["clock"] = clock_value(clock, name["clock"])
    if seed is not None:
        changes["seed"] = seed_value(seed, name["seed"])
    if mips is not None:
        changes["mips"] = mips_value(mips, name["mips"])
    if jobs is not None:
        changes["jobs"] = host_threads(jobs, f"{option}jobs")
    new = dataclasses.replace(spec, **changes)
    if mips is not None and new.clock != "virtual":
        virtual = "--clock virtual" if option == "--" else 'clock="virtual"'
        raise ConfigError(
            f"{name['mips']}: sets how fast virtual time runs, but lab {spec.name} runs on "
            f"real time: add {virtual}"
        )
    check_clock(new)
    return new


def check_clock(spec: LabSpec) -> None:
    """A TAP puts the host's kernel on the wire, a VXLAN uplink other hosts, and they live in
    real time: such a lab cannot run on virtual time (a ConfigError that says what to do)."""
    if spec.clock != "virtual":
        return
    if spec.hosts:
        raise ConfigError(
            "hosts: a lab over several hosts has VXLAN between them, and the hosts live in real "
            'time, so this lab cannot run on virtual time: use clock = "real" (or --clock real)'
        )
    for name, s in spec.switches.items():
        if s.tap is not None:
            raise ConfigError(
                f"switches.{name}.tap: a TAP puts the host on the wire, and the host lives in "
                'real time, so this lab cannot run on virtual time: use clock = "real" (or '
                "--clock real), or take the TAP out"
            )
        if s.vxlan is not None:
            raise ConfigError(
                f"switches.{name}.vxlan: VXLAN puts other hosts on the wire, and they live in "
                'real time, so this lab cannot run on virtual time: use clock = "real" (or '
                "--clock real), or take the uplink out"
            )


def read_lab_file(path: Path) -> str:
    """The text of a lab file, or a ConfigError naming it. Opened without blocking and
    checked to be a regular file first: a FIFO would otherwise wait for a writer forever."""
    what = f"lab file {str(path)!r}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {what}: {_why(e)}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what} is not a regular file ({file_kind(st.st_mode)})")
        try:
            data = f.read(LAB_FILE_MAX + 1)
        except OSError as e:
            raise ConfigError(f"cannot read {what}: {_why(e)}") from None
    if len(data) > LAB_FILE_MAX:
        raise ConfigError(f"{what} is over {LAB_FILE_MAX >> 10} KiB; is it a lab file?")
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: is not UTF-8 text (byte {e.start} is {data[e.start]:#04x}); "
            "lab files are TOML, which is UTF-8"
        ) from None


def load_lab(path: Path, default_name: str | None = None, *, clock: str | None = None) -> LabSpec:
    """The lab in file ``path``; its name is the file's ``name = "..."``, else
    ``default_name``, else the file's stem; ``clock`` in place of the file's."""
    text = read_lab_file(path)
    try:
        spec = parse_lab(
            text, path.resolve().parent, default_name=default_name or path.stem, clock=clock
        )
    except ConfigError as e:
        if str(e).startswith("not a valid"):  # about the whole file: say which
            raise ConfigError(f"{path}: {e}") from None
        raise
    return dataclasses.replace(spec, source=path.resolve())


PCAPNG_MAGIC = bytes.fromhex("0a0d0d0a")  # a pcapng file starts with a Section Header Block


def check_captures(spec: LabSpec, force: bool = False) -> None:
    """Refuse, before anything starts, a capture that would destroy a file: the lab file, a
    disk's image or a VM's ``image`` file, another capture's file (the same path or inode),
    anything but a regular file, or an existing file that is not pcapng (unless ``force``; an
    old capture is overwritten, as ``tcpdump -w`` does). Each error names the capture's key."""
    taken: dict[Path | tuple[int, int], str] = {}  # resolved path and (dev, inode) -> whose

    def claim(path: Path, whose: str) -> None:
        for ident in _identities(path):
            taken.setdefault(ident, whose)

    if spec.source is not None:
        claim(spec.source, "the lab file")
    for vm in spec.vms.values():
        if vm.image is not None and vm.image.file is not None:
            # (the image's own error, if any, comes when it is opened)
            with contextlib.suppress(ValueError, OSError):
                claim(vm.image.file, f"vms.{vm.name}.image's file")
        for i, disk in enumerate(vm.disks):
            try:
                claim(spec.base / disk.path, f"vms.{vm.name}.disks[{i}]'s image")
            except (ValueError, OSError):
                continue  # the disk's own error comes when it is opened
    captures = [(f"switches.{n}.capture", s.capture) for n, s in spec.switches.items()]
    captures += [
        (f"vms.{vm.name}.nics[{i}].capture", nic.capture)
        for vm in spec.vms.values()
        for i, nic in enumerate(vm.nics)
    ]
    for key, path in captures:
        if path is None:
            continue
        name = repr(str(path))
        try:
            idents = _identities(path)
            st = os.stat(path) if os.path.lexists(path) else None
        except (OSError, ValueError) as e:
            raise ConfigError(f"{key}: cannot use {name}: {_why(e)}") from None
        whose = next((taken[i] for i in idents if i in taken), None)
        if whose == "the lab file":
            raise ConfigError(f"{key}: {name} is the lab file; give the capture a file of its own")
        if whose is not None and whose.endswith(("'s image", "'s file")):
            raise ConfigError(f"{key}: {name} is {whose}; give the capture a file of its own")
        if whose is not None:
            raise ConfigError(f"{key}: {name} is also {whose}; each capture needs its own file")
        claim(path, key)
        if st is None:
            folder = path.parent
            if not folder.is_dir():
                raise ConfigError(f"{key}: folder {str(folder)!r} does not exist")
            continue
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(
                f"{key}: {name} is {file_kind(st.st_mode)}, not a regular file; "
                "a capture is written to a file"
            )
        if not force and not _is_pcapng(path, key):
            raise ConfigError(
                f"{key}: {name} exists and is not a pcapng file; pick another name, or "
                "overwrite it with --force"
            )


def _identities(path: Path) -> list[Path | tuple[int, int]]:
    """What makes two paths the same file: the resolved path, and (device, inode) when it
    exists (a hard link has another path)."""
    real = path.resolve()
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return [real]
    return [real, (st.st_dev, st.st_ino)]


def _is_pcapng(path: Path, key: str) -> bool:
    """Whether ``path`` (a regular file) is empty or starts as a pcapng file does."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            head = os.read(fd, len(PCAPNG_MAGIC))
        finally:
            os.close(fd)
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {str(path)!r}: {_why(e)}") from None
    return head in (b"", PCAPNG_MAGIC)


def check_lab_name(name: str, key: str) -> str:
    """``name`` if it may name a lab, else a ConfigError about ``key``."""
    if not _NAME.match(name):
        raise ConfigError(f"{key}: {name!r}: lab names are lowercase letters, digits, - and _")
    return name


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, for an error message."""
    kinds = [
        (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
    ]  # fmt: skip
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def _why(e: OSError | ValueError) -> str:
    return (e.strerror if isinstance(e, OSError) else None) or str(e)


__all__ = [
    "LabSpec",
    "NicSpec",
    "SwitchSpec",
    "VmSpec",
    "check_captures",
    "default_mac",
    "load_lab",
    "nic_cmdline",
    "parse_lab",
]


# -- a lab over [hosts] (hv.lab._hosts splits it) ---------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where a lab over hosts runs what: each switch's hosts (in ``[hosts]`` order) and home,
    each link's host."""

    runs: dict[str, tuple[str, ...]]
    home: dict[str, str]
    link_home: tuple[str, ...]
    vni: dict[str, int]


def placement(spec: LabSpec) -> Placement:
    """How ``spec`` (a lab with ``[hosts]``) is split over its hosts (see the module)."""
    order = list(spec.hosts)
    users: dict[str, set[str]] = {s: set() for s in spec.switches}
    for vm in spec.vms.values():
        for nic in vm.nics:
            assert vm.host is not None
            users[nic.switch].add(vm.host)
    home = {s: next((h for h in order if h in users[s]), order[0]) for s in spec.switches}
    link_home = tuple(home[link.a] for link in spec.links)
    on: dict[str, set[str]] = {s: users[s] | {home[s]} for s in spec.switches}
    for link, h in zip(spec.links, link_home, strict=True):
        on[link.a].add(h)
        on[link.b].add(h)
    runs = {s: tuple(h for h in order if h in on[s]) for s in spec.switches}
    vni: dict[str, int] = {}
    owner: dict[int, str] = {}
    for s, sw in spec.switches.items():
        if len(runs[s]) < 2 and sw.vxlan is None:
            continue
        given = sw.vxlan.vni if sw.vxlan is not None else None
        n = vni[s] = given if given is not None else vni_for(s)
        if n in owner:
            raise ConfigError(
                f"switches.{s}: its VXLAN network id {n} is also switch {owner[n]}'s: give one "
                "of them another (vxlan = { vni = N })"
            )
        owner[n] = s
    return Placement(runs, home, link_home, vni)


def check_hosts(spec: LabSpec) -> None:
    """Every VM of a lab over hosts names one of them (and none without ``[hosts]``)."""
    for vm in spec.vms.values():
        key = f"vms.{vm.name}.host"
        if not spec.hosts:
            if vm.host is not None:
                raise ConfigError(f'{key}: needs a [hosts] table naming it (a = "10.9.0.1")')
        elif vm.host is None:
            raise ConfigError(f"{key}: missing: this lab runs over hosts {', '.join(spec.hosts)}")
        elif vm.host not in spec.hosts:
            raise ConfigError(
                f'{key}: no host named "{vm.host}" in [hosts] ({", ".join(spec.hosts)})'
            )
    if spec.hosts:
        placement(spec)  # (refuses VNIs that collide)
