"""Running a lab: its switches and VMs in one trio nursery, consoles prefixed by VM name.

``run_lab(spec)`` is what ``hv up`` runs, and is callable from trio. The lab ends when every
VM has stopped (status 0 only if all stopped cleanly), or, with ``exit_code_from``, when that
VM stops (the others are stopped; its status is the lab's, as ``docker compose up
--exit-code-from`` does). Cancellation (Ctrl-C) stops everything; switch captures are flushed
and closed on the way out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from hv._cores import Cores
from hv._disk import Disk, close_disks, open_disks, open_frozen_disks
from hv._errors import ConfigError, HostError, HvError, SnapshotError
from hv._log import get_logger
from hv._nic import Nic
from hv._snapshot import disk_entries, restore_fields
from hv._status import StopInfo
from hv._timeline import Timeline
from hv._vm import CLONE_ANNOUNCE_S, Vm, VmConfig, run_vm
from hv.board import load_file
from hv.build import StderrProgress, build_bundled, resolve_kernel
from hv.hw import DEFAULT_QUANTUM, default_jobs
from hv.lab._fabric_state import load_fabric
from hv.lab._hosts import run_command
from hv.lab._link import describe as describe_link
from hv.lab._link import link_cables, link_state, set_link
from hv.lab._snapshot import LabRestore, LabSnapshotInfo, snapshot_lab, vm_file
from hv.lab._spec import ImageSpec, LabSpec, NicSpec, VmSpec, check_captures, check_clock
from hv.lab._vxlan_keys import VxlanSpec
from netfabric.capture import CaptureError
from netfabric.impair import ImpairedLink, Impairment
from netfabric.ports.base import Cable, PortVlan
from netfabric.ports.link import Link
from netfabric.ports.tap import TapError, TapPort
from netfabric.ports.vxlan import VxlanEndpoint, VxlanError, VxlanPort
from netfabric.services import DhcpConfig, DnsConfig, ServiceHost, ServicesConfig
from netfabric.switch import Switch

log = get_logger("hv.lab")
# How long a clone's guest may take to take its identity, in host time: a lab's clones all
# do it at once (measured on 2 cores: 10 clones 0.9 s, 50 clones 6.5 s; bench/clones.py).
CLONE_EACH_S = 0.5

if TYPE_CHECKING:
    from hv.lab._shards import Mesh, Shards

Output = Callable[[bytes], None]


class PrefixedOutput:
    """Writes each VM's console as lines prefixed with its name; a partial line (a prompt)
    is written at once, and continued on the same line if the same VM goes on."""

    def __init__(self, write: Output, names: list[str]) -> None:
        self.write = write
        self.width = max(map(len, names), default=1)
        self._mid: str | None = None  # the VM whose line is open (no newline yet)

    def feed(self, name: str, data: bytes) -> None:
        out = bytearray()
        if self._mid is not None and self._mid != name:
            out += b"\n"
            self._mid = None
        for line in data.splitlines(keepends=True):
            if self._mid != name:
                out += f"{name:<{self.width}} | ".encode()
            out += line
            self._mid = None if line.endswith(b"\n") else name
        self.write(bytes(out))


@dataclass
class LabRun:
    spec: LabSpec
    switches: dict[str, Switch] = field(default_factory=dict)
    vms: dict[str, Vm] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    taps: dict[str, TapPort] = field(default_factory=dict)  # switch name -> its TAP
    vxlan: dict[str, VxlanPort] = field(default_factory=dict)  # switch name -> its uplink
    endpoints: dict[tuple[str, int], VxlanEndpoint] = field(default_factory=dict)  # UDP sockets
    services: dict[str, ServiceHost] = field(default_factory=dict)  # switch -> its services
    disks: dict[str, list[Disk]] = field(default_factory=dict)  # VM -> its disks (opened)
    status: int | None = None  # the lab's exit status once it has ended
    ended: trio.Event = field(default_factory=trio.Event)
    timeline: Timeline | None = None  # virtual time: the lab's clock (docs/TIME.md)
    cores: Cores | None = None  # real time: the host threads its VMs' slices run on
    # A lab over several processes (hv.lab._shards): this one's part (``vms`` holds its own
    # VMs; ``exits`` every VM's once the lab has ended).
    shards: Shards | None = None

    async def wait(self) -> int:
        """Wait for the lab to end (every VM stopped); its exit status."""
        await self.ended.wait()
        assert self.status is not None
        return self.status

    def stop(self, reason: str = "stopped") -> None:
        """Stop every VM (the lab then ends)."""
        for vm in self.vms.values():
            vm.stop(reason)

    async def snapshot(
        self, folder: str | os.PathLike[str], *, durable: bool = True
    ) -> LabSnapshotInfo:
        """Write the lab's snapshot into ``folder`` (made if missing; its files replaced):
        ``hv up --restore FOLDER`` or ``open_lab(..., restore=FOLDER)`` goes on from this
        instant. On virtual time the lab's clock holds while it is taken (the run is the
        same as one never snapshotted); on real time each VM is paused for it."""
        return await snapshot_lab(self, Path(folder), durable=durable)

    def set_link(self, cable: str, up: bool) -> dict[str, Any]:
        """Pull a cable out (``up=False``) or plug it back, as ``hv link LAB CABLE down|up``:
        a NIC's (``"r1.eth0"``, or the VM's name if it has one NIC) or a link's
        (``"links[0]"``, or its ends ``"s1-s2"``). Down, nothing crosses it either way
        (counted as drops by cause ``down``), the switches forget the MACs learned through
        it, and a NIC's guest loses its carrier; up, it all comes back. At the lab's current
        time (on virtual time, the guest sees it as a frame sent then: hv.lab._link). Returns
        the cable's state as ``link_state`` does; a LookupError listing the cables for a name
        that is none."""
        return set_link(self, cable, up)

    def link_state(self, cable: str) -> dict[str, Any]:
        """A cable's state: ``{"name", "label", "kind" ("nic" or "link"), "up", "egress":
        {"from", "to", "frames"}, "ingress": {...}, "down_drops"}`` (frames that entered it
        each way; what was dropped because it was down). A LookupError for a name."""
        return link_state(self, cable)

    def link_states(self) -> list[dict[str, Any]]:
        """Every cable's state (``link_state``): the lab's links, then each VM's NICs."""
        return [describe_link(self, key) for key in link_cables(self)]

    # Clones (``clone = {...}``): each one's guest told what it is now ("" once it took
    # it, else why not: hv.lab._runner.announce_clone); ``clones_told`` set when all were.
    told: dict[str, str] = field(default_factory=dict)
    clones_told: trio.Event = field(default_factory=trio.Event)
    # "links[0]", "a.eth0": the impairments on cables, changeable while the lab runs
    impairments: dict[str, ImpairedLink] = field(default_factory=dict)
    exits: dict[str, StopInfo] = field(default_factory=dict)


def services_config(spec: LabSpec, switch: str) -> ServicesConfig:
    """What the built-in services on ``switch`` are told: its subnet, the DHCP pool and the
    static leases of the lab's NICs there, every VM's name for the DNS server, TFTP."""
    s = spec.switches[switch]
    assert s.subnet is not None
    static = {mac: (ip, name) for mac, (ip, name) in spec.static_leases(switch).items()}
    dhcp = dns = None
    if s.dhcp is not None:
        hostnames = {
            nic.mac: vm.name
            for vm in spec.every_vm().values()
            for nic in vm.nics
            if nic.ip == "dhcp" and switch in spec.reaches(nic.switch)
        }
        dhcp = DhcpConfig(
            pool=s.dhcp.pool, lease=s.dhcp.lease, static=static, hostnames=hostnames,
            boot=s.dhcp.boot,
        )  # fmt: skip
    if s.dns:
        names: dict[str, list[ipaddress.IPv4Address]] = {}
        for vm in spec.every_vm().values():
            for nic in vm.nics:
                if isinstance(nic.ip, ipaddress.IPv4Interface):
                    names.setdefault(vm.name, []).append(nic.ip.ip)
        dns = DnsConfig(names=names)
    try:
        return ServicesConfig(
            subnet=s.subnet, dhcp=dhcp, dns=dns, tftp_root=s.tftp, router=s.gateway
        )
    except ValueError as e:
        raise ConfigError(f"switches.{switch}: {e}") from None


def names_cmdline(spec: LabSpec, vm: VmSpec, given: str = "") -> str:
    """What a guest is told of its names: ``hostname=`` (the VM's name, unless ``given``, its
    command line so far, has one) and, for a NIC with a fixed address whose switch reaches a
    DNS server, ``nameserver=`` (the services' address) and ``hv.domain=`` (the zone), as the
    Linux userland's init reads them into /etc/hosts and /etc/resolv.conf (DHCP NICs hear
    the same from DHCP). Later words: the first of each in ``given`` wins."""
    words = [] if "hostname=" in given else [f"hostname={vm.name}"]
    servers: list[str] = []
    domain = None
    for nic in vm.nics:
        if not isinstance(nic.ip, ipaddress.IPv4Interface):
            continue
        for name in sorted(spec.reaches(nic.switch)):
            s = spec.switches[name]
            if s.dns and s.subnet is not None:
                config = services_config(spec, name)
                if str(config.service_ip) not in servers:
                    servers.append(str(config.service_ip))
                domain = domain or config.domain
    words += [f"nameserver={a}" for a in servers[:3]]
    if domain:
        words.append(f"hv.domain={domain}")
    return " ".join(words)


def open_tap(switch: Switch, name: str) -> TapPort:
    """The TAP ``name`` on ``switch`` (a HostError that says what to do if it can't be)."""
    try:
        return TapPort(switch, name)
    except TapError as e:
        raise HostError(f"switch {switch.name}: {e}") from None


async def open_uplink(
    nursery: trio.Nursery, run: LabRun, switch: Switch, spec: VxlanSpec
) -> VxlanPort:
    """``switch``'s VXLAN uplink, on the lab's endpoint for its local address and port (one
    UDP socket for every VNI there, its reading task in ``nursery``); a HostError that says
    what to do if it cannot be bound."""
    assert spec.local is not None and spec.vni is not None
    key = (spec.local, spec.port)
    endpoint = run.endpoints.get(key)
    if endpoint is None:
        try:
            endpoint = VxlanEndpoint(spec.local, spec.port)
        except VxlanError as e:
            raise HostError(f"switch {switch.name}: {e}") from None
        run.endpoints[key] = await nursery.start(endpoint.run)
    return VxlanPort(switch, endpoint, spec.vni, spec.remotes, learning=spec.learning)


def _port_vlan(nic: NicSpec) -> PortVlan | None:
    if nic.vlan is not None:
        return PortVlan(access=nic.vlan)
    if nic.trunk is not None:
        return PortVlan(access=None, allowed=nic.trunk, native=nic.native)
    return None


@dataclass(frozen=True)
class BootFiles:
    """A VM's kernel and initrd, read before anything of the lab starts."""

    kernel: bytes
    initrd: bytes | None
    cmdline: str | None  # the kernel's default command line (a built image's)


def boot_files(spec: LabSpec, vm: VmSpec) -> BootFiles:
    """Read ``vm``'s kernel and initrd; a ConfigError naming the key if one can't be used."""
    key = f"vms.{vm.name}"
    try:
        kernel, initrd, cmdline = resolve_kernel(vm.kernel, spec.base)
        data = load_file(kernel, "kernel")
    except ConfigError as e:
        raise ConfigError(f"{key}.kernel: {e}") from None
    if vm.initrd is not None:
        initrd = vm.initrd
    try:
        ramdisk = load_file(initrd, "initrd") if initrd is not None else None
    except ConfigError as e:
        raise ConfigError(f"{key}.initrd: {e}") from None
    return BootFiles(data, ramdisk, cmdline)


def vm_config(
    spec: LabSpec,
    vm: VmSpec,
    switches: dict[str, Switch],
    cables: dict[tuple[str, int], Cable] | None = None,
    disks: Sequence[Disk] = (),
    boot: BootFiles | None = None,
    timeline: Timeline | None = None,
    cores: Cores | None = None,
) -> VmConfig:
    cables = cables or {}
    boot = boot or boot_files(spec, vm)
    cmdline = vm.cmdline if vm.cmdline is not None else (boot.cmdline or "")
    if vm.image is not None:  # our init mounts the image's disk (vda) as its root
        cmdline = f"{cmdline} root=/dev/vda".strip()
    if vm.append:
        cmdline = f"{cmdline} {vm.append}".strip()
    cmdline = f"{cmdline} {names_cmdline(spec, vm, cmdline)}".strip()
    nics = tuple(
        Nic(
            switches[n.switch],
            n.ip,
            n.mac,
            n.gateway,
            n.capture,
            vlan=_port_vlan(n),
            cable=cables.get((vm.name, i)),
        )
        for i, n in enumerate(vm.nics)
    )
    return VmConfig(
        kernel=boot.kernel,
        initrd=boot.initrd,
        cmdline=cmdline,
        mem_size=vm.mem,
        quantum=vm.quantum if vm.quantum is not None else DEFAULT_QUANTUM,
        smp=vm.smp,
        name=vm.name,
        nics=nics,
        disks=tuple(disks),
        clock="virtual" if spec.clock == "virtual" else "real",
        mips=spec.mips,
        timeline=timeline,
        cores=cores,
        seed=spec.seed,
    )


def image_file(image: ImageSpec, key: str) -> Path:
    """The qcow2 base of a VM's ``image``: a built Debian image, or the file it names; a
    ConfigError naming ``key`` (with the command that builds it) if there is none. Building
    is not done here: it needs root and the network and takes many minutes (like the Linux
    image, it is an explicit step)."""
    from hv.build import build_command, debian_image_info

    if image.file is not None:
        if not image.file.is_file():
            raise ConfigError(f"{key}: {image.file}: no such file")
        return image.file
    built = debian_image_info(image.packages)
    if built is None:
        what = ", ".join(image.packages) or "minbase only"
        raise ConfigError(
            f"{key}: the Debian image ({what}) is not built yet; run: "
            + build_command(image.packages)
        )
    return built.base


async def open_image(path: Path, owner: str) -> Disk:
    """A throwaway qcow2 overlay on the image ``path`` (read-only), checked to hold an ext4
    file system (the root our init mounts); a ConfigError naming ``OWNER.image`` if not."""
    from blockdev import BlockError
    from blockdev.open import DiskSpec, open_disk

    key = f"{owner}.image"
    try:
        backend = await open_disk(DiskSpec(str(path), format="qcow2", snapshot=True), owner=key)
    except (ValueError, BlockError) as e:
        raise ConfigError(f"{key}: {e}") from None
    disk = Disk(backend)
    try:
        superblock = await backend.read(1024, 1024) if backend.size >= 2048 else b""
        if superblock[56:58] != b"\x53\xef":
            raise ConfigError(
                f"{key}: {path} holds no ext4 file system (not a root disk from "
                "hv image build debian)"
            )
    except BaseException:
        await close_disks([disk])
        raise
    return disk


async def run_lab(
    spec: LabSpec,
    output: Output | None = None,
    exit_code_from: str | None = None,
    *,
    until: frozenset[str] | None = None,
    force: bool = False,
    mesh: Mesh | None = None,
    restore: LabRestore | None = None,
    task_status: trio.TaskStatus[LabRun] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run ``spec`` to its end; return the lab's exit status. The end: every VM stopped; or
    ``exit_code_from`` stopped (its status is the lab's); or every VM in ``until`` stopped
    (the lab's status is 0 only if they all stopped cleanly). A capture may overwrite an
    existing file that is not pcapng only with ``force`` (see ``check_captures``). With a
    ``mesh`` of several processes (MPI ranks), this process runs its shard of the lab
    (hv.lab._shards); the status is the whole lab's, the same in every one. ``restore``: the
    lab (``spec`` parsed from its tables) goes on from that snapshot (hv.lab._snapshot)
    instead of booting."""
    if spec.hosts and spec.host is None:
        raise ConfigError(run_command(spec))
    if exit_code_from is not None and exit_code_from not in spec.vms:
        raise ConfigError(
            f"--exit-code-from: no VM named {exit_code_from!r} ({', '.join(spec.vms)})"
        )
    owner = {name: 0 for name in spec.vms}
    rank = 0
    if mesh is not None and mesh.size > 1:
        from hv.lab._shards import START_TIMEOUT_S, TAG_READY, assign_shards, shard_captures

        if spec.clock != "virtual":
            raise ConfigError(
                "a lab over several processes (shards) runs on virtual time: drop "
                'clock = "real" (or --clock real), or run it in one process'
            )
        owner, rank = assign_shards(spec, mesh.size), mesh.rank
        spec = shard_captures(spec, rank)
    else:
        mesh = None
    mine = [name for name in spec.vms if owner[name] == rank]
    check_captures(spec, force)  # before anything is opened or started
    check_clock(spec)
    if mesh is not None and rank > 0:  # shard 0 builds what is missing, the others then find it
        await mesh.swap({k: None for k in mesh.peers}, TAG_READY, START_TIMEOUT_S)
    if restore is not None:
        if mesh is not None:
            raise ConfigError("a lab restored from a snapshot runs in one process")
        missing = sorted(set(spec.vms) ^ set(restore.vms))
        if missing:
            raise SnapshotError(
                f"{restore.folder}: the snapshot's VMs and the lab's differ ({', '.join(missing)})"
            )
    else:
        build_bundled(
            (spec.vms[n].kernel for n in mine if spec.vms[n].clone is None),
            spec.base,
            StderrProgress("hv: "),
        )
    if mesh is not None and rank == 0:
        await mesh.swap({k: None for k in mesh.peers}, TAG_READY, START_TIMEOUT_S)
    # VMs that start from a snapshot: all of a restored lab's, and clones (``clone = {...}``)
    snapshots = {
        name: vm_file(restore.folder, name) if restore is not None else spec.vms[name].clone
        for name in mine
        if restore is not None or spec.vms[name].clone is not None
    }
    images = {
        name: image_file(v.image, f"vms.{name}.image")
        for name, v in spec.vms.items()
        if v.image is not None and name in mine and name not in snapshots
    }
    restored: dict[str, dict[str, Any]] = {}
    read_snap: dict[Path, dict[str, Any]] = {}
    for name, snap in snapshots.items():
        assert snap is not None
        if snap not in read_snap:  # (a thousand clones of one snapshot read it once)
            try:
                read_snap[snap] = restore_fields(snap)
            except ConfigError as e:
                raise ConfigError(f"vms.{name}: {e}") from None
        restored[name] = {**read_snap[snap], "restore": snap}
    # Read once per kernel and initrd, however many VMs boot them (a thousand guests of one
    # kind share the bytes, and the bundled guest's build check runs once).
    read: dict[tuple[str, Path | None], BootFiles] = {}
    boots: dict[str, BootFiles] = {}
    for name in mine:
        v = spec.vms[name]
        if name in restored:
            f = restored[name]
            boots[name] = BootFiles(f["kernel"], f["initrd"], f["cmdline"])
            continue
        key = (v.kernel, v.initrd)
        if key not in read:
            read[key] = boot_files(spec, v)
        boots[name] = read[key]
    run = LabRun(spec)
    virtual = spec.clock == "virtual"
    tl = run.timeline = Timeline(spec.lookahead_ps, jobs=spec.jobs) if virtual else None
    prefixed = PrefixedOutput(output, mine) if output is not None else None

    def ends(stopped: set[str]) -> bool:
        return (
            (exit_code_from is not None and exit_code_from in stopped)
            or stopped >= spec.vms.keys()
            or (until is not None and until <= stopped)
        )

    shards: Shards | None = None
    if mesh is not None:
        from hv.lab._shards import Shards

        assert tl is not None
        shards = run.shards = tl.window = Shards(
            mesh, owner, tl, ends,
            lambda: {n for n, v in run.vms.items() if v.machine.stop_info is not None},
        )  # fmt: skip
    fabric = rank == 0  # links and services: on shard 0 alone (hv.lab._shards)
    try:
        async with trio.open_nursery() as nursery:
            try:
                for name, s in spec.switches.items():
                    try:
                        switch = (
                            Switch(name, s.capture, clock=tl.now, stamp_ns=tl.now_ns)
                            if tl is not None
                            else Switch(name, s.capture)
                        )
                    except CaptureError as e:
                        raise ConfigError(f"switches.{name}.capture: {e}") from None
                    run.switches[name] = await nursery.start(switch.run)
                    if s.tap is not None:
                        run.taps[name] = await nursery.start(
                            open_tap(run.switches[name], s.tap).run
                        )
                    if s.vxlan is not None:
                        run.vxlan[name] = await open_uplink(
                            nursery, run, run.switches[name], s.vxlan
                        )
                    if s.subnet is not None and fabric:
                        if tl is None:
                            host = ServiceHost(services_config(spec, name))
                            host.attach(run.switches[name])
                            run.services[name] = await nursery.start(host.run)
                        else:  # its timers on the lab's clock
                            host = ServiceHost(services_config(spec, name), clock=tl.now)
                            host.attach(run.switches[name])
                            host.on_pending = tl.poke
                            tl.add_timed(host)
                            run.services[name] = host
                for i, link in enumerate(spec.links if fabric else ()):
                    imp = None
                    if link.impair is not None:
                        imp = run.impairments[f"links[{i}]"] = await _cable(
                            nursery, spec, tl, link.impair.egress, link.impair.ingress,
                            f"{link.a}-{link.b}",
                        )  # fmt: skip
                    made = Link(run.switches[link.a], run.switches[link.b], imp)
                    if link.vlans is not None:
                        made.trunk(link.vlans)
                    run.links.append(made)
                if shards is not None:
                    shards.wire(run.switches, spec)
                restore_state = restore.state() if restore is not None else None
                cables: dict[tuple[str, int], Cable] = {}
                for vspec in (spec.vms[n] for n in mine):
                    for i, nic in enumerate(vspec.nics):
                        if nic.impair is not None:
                            name = f"{vspec.name}.eth{i}"
                            imp = run.impairments[name] = await _cable(
                                nursery, spec, tl, nic.impair.egress, nic.impair.ingress, name
                            )
                            # egress: from the VM into the switch; ingress: the other way
                            cables[(vspec.name, i)] = imp
                for vspec in (spec.vms[n] for n in mine):
                    whose = f"vms.{vspec.name}"
                    snap = snapshots.get(vspec.name)
                    if snap is not None:  # its disks as they were, over private overlays
                        run.disks[vspec.name] = await _restored_disks(
                            spec, vspec, snap, nursery, whose
                        )
                        continue
                    if vspec.image is not None:  # the root disk first: vda
                        run.disks[vspec.name] = [await open_image(images[vspec.name], whose)]
                    run.disks.setdefault(vspec.name, []).extend(
                        await open_disks(vspec.disks, spec.base, whose)
                    )
                jobs = spec.jobs if spec.jobs is not None else default_jobs()
                if tl is None and jobs > 1 and len(mine) > 1:
                    # real time: the VMs' slices on up to ``jobs`` host threads (hv._cores)
                    run.cores = Cores(jobs)
                    nursery.start_soon(run.cores.run)
                configs = {
                    name: vm_config(
                        spec, spec.vms[name], run.switches, cables, run.disks.get(name, []),
                        boots[name], tl, run.cores,
                    )
                    for name in mine
                }  # fmt: skip
                if restored:
                    # Each VM takes its own state back when its task starts.
                    for name, f in restored.items():
                        configs[name] = dataclasses.replace(
                            configs[name],
                            cmdline=f["cmdline"], mem_size=f["mem_size"], quantum=f["quantum"],
                            smp=f["smp"], vsock=f["vsock"], rng=f["rng"], restore=f["restore"],
                        )  # fmt: skip
                    if tl is not None and restore_state is not None:
                        c = restore_state.sub("timeline")
                        now_ps = c.int("now_ps", 0, 1 << 62)
                        tl.load_clock(now_ps, c.float("now_s"), c.int("reached_ps", 0, 1 << 62))
                for name, cfg in configs.items():
                    try:
                        run.vms[name] = await nursery.start(run_vm, cfg)
                    except ConfigError as e:  # the kernel's content, a NIC's capture, ...
                        raise ConfigError(f"vms.{name}: {e}") from None
                if restore_state is not None:
                    # The fabric as it was: its objects built and every port plugged in (the
                    # NICs' are the last), before the lab's clock runs.
                    load_fabric(run, restore_state.sub("fabric"))
                clones = [n for n in snapshots if spec.vms[n].clone is not None and not restore]
                for name in clones:
                    nursery.start_soon(
                        announce_clone, run, run.vms[name], spec.vms[name], len(clones)
                    )
                if not clones:
                    run.clones_told.set()
                if tl is not None:
                    tl.set_islands(islands(spec))
                    # Once every VM has joined: a VM made while the clock already ran would
                    # join late, and what the others did meanwhile would depend on the host.
                    nursery.start_soon(tl.run)
            except BaseException:
                nursery.cancel_scope.cancel()
                raise
            task_status.started(run)
            done = trio.Event()

            if shards is not None:
                # Over several processes the end is decided at a window, by every shard at
                # once (hv.lab._shards.Shards.sync), from all of them's stopped VMs.
                async def ended() -> None:
                    assert shards is not None
                    await shards.ended.wait()
                    done.set()

                nursery.start_soon(ended)
            elif tl is not None:
                # Virtual time: the lab ends at the guest time its deciding VM stopped, from
                # inside the timeline, before anything else runs: the others are stopped and
                # the clock frozen there, so the end is the same on every run.
                def on_stop(member: object) -> None:
                    stopped = {n for n, v in run.vms.items() if v.machine.stop_info is not None}
                    if ends(stopped):
                        assert tl is not None
                        tl.halt()
                        for vm in run.vms.values():
                            vm.stop("the lab is ending")

                tl.on_stop = on_stop

            async def watch(name: str, vm: Vm) -> None:
                if prefixed is not None:
                    while data := await vm.console.receive_some():
                        prefixed.feed(name, data)
                run.exits[name] = await vm.wait()
                if shards is None and ends(set(run.exits)):
                    done.set()

            for name, vm in run.vms.items():
                nursery.start_soon(watch, name, vm)
            await done.wait()
            for vm in run.vms.values():
                vm.stop("the lab is ending")
            with trio.move_on_after(5):
                for name, vm in run.vms.items():
                    run.exits.setdefault(name, await vm.wait())
            nursery.cancel_scope.cancel()
    finally:  # after every VM has stopped: what the guests flushed is on disk
        await close_disks([disk for disks in run.disks.values() for disk in disks])
    if shards is not None:  # every shard's exits: the lab's status is the same everywhere
        run.exits = await shards.finish(dict(run.exits))
    run.status = _status(run, exit_code_from, until)
    run.ended.set()
    return run.status


def islands(spec: LabSpec) -> dict[str, int]:
    """The lab's VMs grouped by what can reach what: VMs whose NICs' switches are joined
    (directly or by links) share a number; a VM with no NIC is alone."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for name, vm in spec.vms.items():
        node = f"vm:{name}"
        root(node)
        for nic in vm.nics:
            for sw in spec.reaches(nic.switch):
                parent[root(f"sw:{sw}")] = root(node)
    numbers: dict[str, int] = {}
    return {name: numbers.setdefault(root(f"vm:{name}"), len(numbers)) for name in spec.vms}


async def _cable(
    nursery: trio.Nursery,
    spec: LabSpec,
    tl: Timeline | None,
    egress: Impairment | None,
    ingress: Impairment | None,
    name: str,
) -> ImpairedLink:
    """An impaired cable: on trio's clock with its own task, or on the lab's timeline. The
    lab's ``seed`` is mixed into each direction's seed."""
    if spec.seed is not None:
        egress = _seeded(egress, spec.seed)
        ingress = _seeded(ingress, spec.seed)
    if tl is None:
        link: ImpairedLink = await nursery.start(ImpairedLink(egress, ingress, name).run)
        return link
    link = ImpairedLink(egress, ingress, name, clock=tl.now)
    link.on_pending = tl.poke  # a frame from a host port may find the timeline idle
    tl.add_timed(link)
    return link


async def _restored_disks(
    spec: LabSpec, vm: VmSpec, path: Path, nursery: trio.Nursery, whose: str
) -> list[Disk]:
    """A restored VM's disks: the snapshot's frozen files, each under an overlay of this
    run's own (removed when the lab ends). Base images may be where the lab's images and
    disks are (the lab's folder, the Debian images' cache)."""
    entries = disk_entries(path)
    if not entries:
        return []
    work = Path(tempfile.mkdtemp(prefix=f"hv-{spec.name}-{vm.name}-"))
    nursery.start_soon(_remove_when_cancelled, work)
    bases: set[Path] = {spec.base}
    if vm.image is not None:
        with contextlib.suppress(ConfigError):
            bases.add(image_file(vm.image, f"{whose}.image").parent)
    return await open_frozen_disks(entries, path.parent, work, sorted(bases), owner=whose)


async def announce_clone(run: LabRun, vm: Vm, spec: VmSpec, clones: int) -> None:
    """Tell a clone's guest what it is now (``Vm.announce_clone``): its name, its NICs' MACs
    and addresses. A guest without hv's agent (a firmware guest) is not told."""
    try:
        run.told[vm.name] = await _announce(vm, spec, clones)
    finally:
        if len(run.told) >= clones:
            run.clones_told.set()


async def _announce(vm: Vm, spec: VmSpec, clones: int) -> str:
    if vm.vsock is None:
        log.info("clone has no agent to tell", vm=vm.name)
        return "no agent"
    addresses = [
        "dhcp"
        if n.ip == "dhcp"
        else (f"{n.ip}{f',{n.gateway}' if n.gateway else ''}" if n.ip is not None else "")
        for n in spec.nics
    ]
    try:
        # (host time: many clones share the host's cores while they take their identity)
        await vm.announce_clone(addresses, CLONE_ANNOUNCE_S + CLONE_EACH_S * clones)
    except HvError as e:
        log.warning("clone not told", vm=vm.name, error=str(e))
        return str(e) or type(e).__name__
    return ""


async def _remove_when_cancelled(folder: Path) -> None:
    try:
        await trio.sleep_forever()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _seeded(imp: Impairment | None, seed: int) -> Impairment | None:
    return None if imp is None else dataclasses.replace(imp, seed=f"{seed}/{imp.seed}")


def _status(run: LabRun, exit_code_from: str | None, until: frozenset[str] | None) -> int:
    if exit_code_from is not None:
        return run.exits[exit_code_from].exit_code
    watched = until if until is not None else run.exits.keys()
    for info in (run.exits[n] for n in watched):
        if info.exit_code:
            return info.exit_code
    return 0
