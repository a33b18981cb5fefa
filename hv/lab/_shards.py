"""A virtual-time lab over several processes (shards), coordinated with MPI (docs/SCALING.md).

Each shard is one ``hv up`` process, an MPI rank (``mpiexec -n N hv up LAB``, or ``hv up
--shards N``, which starts mpiexec itself), and runs the lab's VMs that are its own: ``shard
= K`` in a VM's table, or else the next VM in the lab's order goes to the shard with the
fewest so far. Every shard has every switch. A switch with VMs on several shards gets, in
each shard's copy, a *shard port* per other shard: a frame the copy sends out through one at
fabric time t enters the other shard's copy at t plus the lookahead W, and what that copy
hands its VMs arrives there at once (at t + W, not t + 2W): the boundary takes the place of
the NIC cable's latency, so a guest sees the same run as with every VM in one process (the
shard copies' captures show a frame from another shard a W later). Learning and flooding are
as across any cable; a frame that came in through a shard port never goes out through another
one (split horizon), so a broadcast crosses once; a NIC's static address is bound to the
shard port toward its VM on the other copies, so ARP asks it as one switch would. What lies
between switches (links and their impairments) and the built-in services run on shard 0
alone, so the lab stays a tree however many copies its switches have (a path through them
from another shard takes W more than in one process).

The window. At the start of every round of its timeline (hv._timeline), each shard sends
each other one, in one message: the frames that crossed to it (with their times, in the
order they crossed), the VMs of its own that have stopped, and how soon it could next act
(its VMs', its fabric's, and the times those frames left). From the messages every shard
knows the lab's lower bound L (the least of those) and the frames that came to it; it posts
them on its timeline in a fixed order (time, source shard, order of crossing); none of its
fabric runs at or past L + W (a frame from elsewhere could still enter there), and none of
its VMs past L + W (where such a frame could reach them). An idle lab jumps: L is the next
event anywhere. The shards end together, at the round where the stopped VMs of all of them
end the lab.

Failures end every shard. A shard that fails (a bad VM of its own, a host error) tells the
others before it exits (an ``abort`` message: they stop with its reason). One that dies
without a word: ``hv up --shards`` starts mpiexec with ``-disable-auto-cleanup``, and MPICH's
process manager then tells the others with SIGUSR1 (plain ``mpiexec`` kills them itself);
every wait for the others is also bounded (``HV_SHARD_TIMEOUT``, 120 s of host time without
a message).

mpi4py is imported only when a process is one of several ranks (``mpi_size``), so a plain
``hv`` starts as fast as before.
"""

from __future__ import annotations

import ipaddress
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from hv._errors import ConfigError, HostError
from hv._timeline import Timeline
from netfabric.frame import Frame
from netfabric.ports.base import PortVlan, SwitchPort, SwitchSide

if TYPE_CHECKING:
    from hv.lab._spec import LabSpec
    from netfabric.offload import Offload

# MPI tags: a round's message, a failing shard's last word, the exits at the end, and
# the start (shard 0 has built the bundled guests: the others find them built).
TAG_ROUND, TAG_ABORT, TAG_FINAL, TAG_READY = 1, 2, 3, 4
TIMEOUT_S = 120.0  # host seconds without a word from a shard that is waited for
START_TIMEOUT_S = 3600.0  # at the start: shard 0 may be building a guest image
SPIN_S = 0.002  # host time spent polling before backing off to sleeps


def mpi_size() -> int:
    """How many ranks this process's MPI job has, from the environment the process manager
    gives it (MPICH's hydra: PMI_SIZE; Open MPI: OMPI_COMM_WORLD_SIZE); 1 outside one."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def mpi_rank() -> int:
    """This process's rank in its MPI job, from the environment (0 outside one)."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def assign_shards(spec: LabSpec, shards: int) -> dict[str, int]:
    """Each VM's shard: its ``shard`` key, else (in the lab's order) the shard with the fewest
    VMs so far (the lowest on a tie). A ConfigError for a shard this run does not have."""
    counts = [0] * shards
    out: dict[str, int] = {}
    for name, vm in spec.vms.items():
        if vm.shard is not None and vm.shard >= shards:
            raise ConfigError(
                f"vms.{name}.shard: {vm.shard}, but this run has {shards} shard"
                f"{'s' if shards != 1 else ''} (numbered 0 to {shards - 1}): start more "
                f"(hv up --shards {vm.shard + 1}, or mpiexec -n {vm.shard + 1}) or change it"
            )
        if vm.shard is not None:
            out[name] = vm.shard
            counts[vm.shard] += 1
    for name in spec.vms:
        if name not in out:
            k = counts.index(min(counts))
            out[name] = k
            counts[k] += 1
    return {name: out[name] for name in spec.vms}


class Mesh:
    """The lab's processes, as MPI ranks: one message to each other per round, every wait
    bounded (a shard that died or failed ends this one with a clear error)."""

    def __init__(self, timeout_s: float | None = None, *, peer_died: bool = False) -> None:
        import mpi4py

        mpi4py.rc.thread_level = "single"  # only the trio thread calls MPI
        # No MPI_Finalize at exit: after a peer died it may wait for it forever (``close``
        # finalizes once every shard has ended).
        mpi4py.rc.finalize = False
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()
        env = os.environ.get("HV_SHARD_TIMEOUT", "")
        self.timeout_s = timeout_s or (float(env) if env else TIMEOUT_S)
        self._sends: list[Any] = []
        self._peer_died = peer_died  # (before this: hv.cli._early noted it)
        self.wait_s = 0.0  # host time spent waiting for the others
        self.exchanges = 0
        self.bytes_sent = 0
        if self.size > 1:
            # MPICH's hydra (with -disable-auto-cleanup) signals a rank's end to the others.
            signal.signal(signal.SIGUSR1, self._died)

    def _died(self, signum: int, frame: object) -> None:
        self._peer_died = True

    @property
    def peers(self) -> list[int]:
        return [k for k in range(self.size) if k != self.rank]

    async def swap(
        self, messages: dict[int, Any], tag: int = TAG_ROUND, timeout_s: float | None = None
    ) -> dict[int, Any]:
        """Send ``messages[k]`` to each other shard k and get theirs (by shard), waiting at
        most ``timeout_s`` (default: the mesh's) without a word from one."""
        timeout_s = timeout_s or self.timeout_s
        comm = self.comm
        for k in self.peers:
            data = pickle.dumps(messages[k], protocol=pickle.HIGHEST_PROTOCOL)
            self.bytes_sent += len(data)
            self._sends.append(comm.isend(data, dest=k, tag=tag))
        got: dict[int, Any] = {}
        waiting = self.peers
        start = last = time.monotonic()
        pause = 0.0
        while True:
            self._check()
            for k in list(waiting):
                if comm.iprobe(source=k, tag=tag):
                    got[k] = pickle.loads(comm.recv(source=k, tag=tag))
                    waiting.remove(k)
                    last = time.monotonic()
            if self._sends:
                self._sends = [r for r in self._sends if not r.Test()]
            if not waiting:
                break
            now = time.monotonic()
            if now - last > timeout_s:
                raise HostError(
                    f"shard {self.rank}: no word from shard {waiting[0]} of this lab for "
                    f"{timeout_s:g} s: it hangs or died; stopping (HV_SHARD_TIMEOUT "
                    "sets the wait)"
                )
            if now - start < SPIN_S:
                await trio.lowlevel.checkpoint()
            else:
                pause = min(0.005, max(pause * 2, 0.0001))
                await trio.sleep(pause)
        self.exchanges += 1
        self.wait_s += time.monotonic() - start
        return got

    def _check(self) -> None:
        comm = self.comm
        status = self.MPI.Status()
        if comm.iprobe(source=self.MPI.ANY_SOURCE, tag=TAG_ABORT, status=status):
            k = status.Get_source()
            why = pickle.loads(comm.recv(source=k, tag=TAG_ABORT))
            raise HostError(f"shard {k} of this lab failed ({why}): stopping shard {self.rank}")
        if self._peer_died:
            raise HostError(
                f"another shard of this lab ended without a word (killed?): stopping shard "
                f"{self.rank}"
            )

    def close(self) -> None:
        """The lab ended on every shard (their exits swapped): leave MPI cleanly, or the
        process manager takes this process's end for a failure and signals the others. It
        may still signal the end of the first to finish to the others: ignored from here."""
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        self.MPI.Finalize()

    def abort(self, why: str) -> None:
        """Tell the others this shard fails (``why``), waiting briefly for it to leave."""
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # (their end, when they take it)
        reqs = [self.comm.isend(pickle.dumps(why), dest=k, tag=TAG_ABORT) for k in self.peers]
        end = time.monotonic() + 1.0
        try:
            while reqs and time.monotonic() < end:
                reqs = [r for r in reqs if not r.Test()]
                time.sleep(0.001)
        except self.MPI.Exception:  # a shard that is gone: nothing more to tell it
            pass


@dataclass
class _Crossing:
    at_ps: int
    switch: str
    data: bytes
    offload: Offload | None


class ShardPort(SwitchPort):
    """A switch's port toward its copy on shard ``peer``: what leaves through it crosses
    there (``Shards.cross``), and what crossed from there comes in through it."""

    def __init__(self, switch: SwitchSide, peer: int, shards: Shards) -> None:
        super().__init__(switch, f"shard:{peer}")
        self.peer = peer
        self._shards = shards
        switch.trunk_ports.add(self.id)
        if switch.core.vlans:
            self.set_vlan(PortVlan(access=None, native=1))
        split = getattr(switch.core, "split_horizon", None)
        if split is not None:  # (netfabric.switch.LearningSwitch)
            split(self.id)

    def deliver(self, frame: Frame) -> None:
        self._shards.cross(self.peer, self.switch.name, frame)


@dataclass
class Shards:
    """This process's part of a lab over several (the timeline's ``Window``)."""

    mesh: Mesh
    owner: dict[str, int]  # VM -> shard
    timeline: Timeline
    ends: Callable[[set[str]], bool]  # whether the lab ends once these VMs have stopped
    local_stopped: Callable[[], set[str]]
    ports: dict[tuple[str, int], ShardPort] = field(default_factory=dict)  # (switch, peer)
    remote_stopped: set[str] = field(default_factory=set)
    ended: trio.Event = field(default_factory=trio.Event)
    crossed: int = 0  # frames sent to other shards
    received: int = 0
    _out: dict[int, list[_Crossing]] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return self.mesh.rank

    def local(self, vm: str) -> bool:
        return self.owner[vm] == self.mesh.rank

    def wire(self, switches: Mapping[str, SwitchSide], spec: LabSpec) -> None:
        """A shard port on each switch toward each shard that has some of its VMs (shard 0
        too where it holds the switch's services or links: it holds those for everyone)."""
        on: dict[str, set[int]] = {name: set() for name in switches}
        for vm in spec.vms.values():
            for nic in vm.nics:
                on[nic.switch].add(self.owner[vm.name])
        for link in spec.links:
            on[link.a].add(0)
            on[link.b].add(0)
        for name, s in spec.switches.items():
            if s.services:
                on[name].add(0)
        for name, sw in switches.items():
            if self.rank in on[name]:
                for k in sorted(on[name] - {self.rank}):
                    self.ports[(name, k)] = ShardPort(sw, k, self)
        # A NIC's static address is bound to its port (an ARP request for it goes there
        # alone: netfabric.switch.Switch.bind_ip); on the other shards, to the port toward
        # its shard, so they ask it as one switch would.
        for vm in spec.vms.values():
            k = self.owner[vm.name]
            for nic in vm.nics:
                port = self.ports.get((nic.switch, k))
                if port is not None and isinstance(nic.ip, ipaddress.IPv4Interface):
                    switches[nic.switch].bind_ip(port.id, nic.ip.ip.packed, nic.mac)

    def cross(self, peer: int, switch: str, frame: Frame) -> None:
        tl = self.timeline
        self.crossed += 1
        self._out.setdefault(peer, []).append(
            _Crossing(tl.now_ps + tl.lookahead_ps, switch, bytes(frame.data), frame.offload)
        )

    async def sync(self, timeline: Timeline, next_ps: float) -> float:
        """One window (hv._timeline.Window): swap frames, stopped VMs and bounds; L."""
        out, self._out = self._out, {}
        stopped = sorted(self.local_stopped())
        # A frame that crossed counts at the time it left (it acts on the other side as if
        # from there: hv._timeline.Timeline.post_remote).
        wait = self.timeline.lookahead_ps
        least = min([next_ps, *(c.at_ps - wait for frames in out.values() for c in frames)])
        messages = {
            k: (least, stopped, [(c.at_ps, c.switch, c.data, c.offload) for c in out.get(k, [])])
            for k in self.mesh.peers
        }
        got = await self.mesh.swap(messages)
        lower = least
        posts: list[tuple[int, int, int, str, bytes, Offload | None]] = []
        for k in sorted(got):
            their_least, their_stopped, frames = got[k]
            lower = min(lower, their_least)
            self.remote_stopped.update(their_stopped)
            for i, (at, switch, data, off) in enumerate(frames):
                posts.append((at, k, i, switch, data, off))
        posts.sort(key=lambda p: (p[0], p[1], p[2]))
        for at, k, _, switch, data, off in posts:
            port = self.ports[(switch, k)]
            self.received += 1
            timeline.post_remote(at, k, _sender(port, Frame(data, off)))
        if self.ends(set(stopped) | self.remote_stopped):
            timeline.halt()
            self.ended.set()
        return lower

    async def finish(self, exits: dict[str, Any]) -> dict[str, Any]:
        """Every shard's VMs' exits (after the lab ended), for the lab's status."""
        got = await self.mesh.swap({k: exits for k in self.mesh.peers}, TAG_FINAL)
        out = dict(exits)
        for k in sorted(got):
            out.update(got[k])
        return out

    def stats(self) -> dict[str, float]:
        m = self.mesh
        return {
            "shard": m.rank,
            "shards": m.size,
            "exchanges": m.exchanges,
            "wait_s": m.wait_s,
            "crossed": self.crossed,
            "received": self.received,
            "bytes_sent": m.bytes_sent,
        }


def _sender(port: ShardPort, frame: Frame) -> Callable[[], None]:
    return lambda: port.send(frame)


def shard_captures(spec: LabSpec, rank: int) -> LabSpec:
    """``spec`` with each switch's capture file named for this shard (``lan.pcapng`` ->
    ``lan.shard1.pcapng``): every shard has every switch, and each records its copy."""
    import dataclasses

    switches = {
        name: dataclasses.replace(
            s, capture=s.capture.with_suffix(f".shard{rank}{s.capture.suffix}")
        )
        if s.capture is not None
        else s
        for name, s in spec.switches.items()
    }
    return dataclasses.replace(spec, switches=switches)


def mpiexec() -> str:
    """The mpiexec of the mpich wheel beside this Python (or on PATH); a ConfigError that
    says how to get it."""
    import shutil
    import sysconfig

    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        path = os.path.join(folder, "mpiexec")
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("mpiexec")
    if found is None:
        raise ConfigError(
            "--shards: no mpiexec found: install MPI with pip install mpi4py mpich "
            "(or hvfabric's shards extra)"
        )
    return found


def launch_argv(argv: Iterable[str], shards: int) -> list[str]:
    """The command ``hv up --shards N ARGS`` runs: mpiexec starting N copies of ``hv up
    ARGS`` (without --shards), which tells the others when one dies (no auto clean-up)."""
    rest: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--shards":
            skip = True
            continue
        if a.startswith("--shards="):
            continue
        rest.append(a)
    return [
        mpiexec(), "-disable-auto-cleanup", "-n", str(shards),
        sys.executable, "-m", "hv.cli", *rest,
    ]  # fmt: skip
