"""A running lab's counters, sampled: what the live view (``hv up``, ``hv top``) shows.

``snapshot(run)`` reads the cumulative counters of every VM and switch port into a plain,
JSON-able dict (cheap: a few attribute reads per VM and port, meant for once a second);
``rates(prev, cur)`` turns two snapshots into per-second figures.

A snapshot::

    {"lab": "demo", "time": 1234.5,                # time.monotonic() of the sample
     "vms": {"a": {"name": "a", "state": "running", "uptime": 3.2,
                   "guest_insns": 123456789, "insns_counter": "blocks",
                   "exits": 4567, "exits_native": 120, "slices": 900,
                   "host_ns": 1500000000, "exit": None}},
     "switches": {"lan": {"name": "lan", "ports": [
         {"id": 0, "name": "a.eth0", "rx_frames": 10, "rx_bytes": 980, "tx_frames": 9,
          "tx_bytes": 882, "drops": 0, "drops_by": {}}]}}}

What the VM counters are (the vCPU's ``VcpuStats``, hv/engine/_vcpu.py):

- ``guest_insns``: guest instructions run. With ``count_instructions`` the exact count
  (``insns_counter`` "exact"); else on the fast engine the instructions the engine charges
  per translated block entered ("blocks": exact unless a block ends early on an exception),
  on a stock Unicorn with the native block hook an estimate from code bytes ("estimate"),
  and with count slicing (no zig) nothing ("none": 0).
- ``exits``: times the guest left translated code for the hypervisor: slice ends (budget
  spent, a stop request, ``wfi``), SBI calls (those the native hook answers included),
  forwarded traps, emulated ``rdtime`` and MMIO accesses. ``exits_native`` is the part the
  native hook answered without Python (SBI console putchar). Time CSR reads the fast
  engine's clock answers inline are not exits (no trap).
- ``host_ns``: host time spent inside the vCPU's slices (the engine running the guest and
  the exits handled inside it); per wall second, the VM's share of a host CPU.
- ``uptime``: guest time since boot in seconds (paused time does not count); None once the
  VM has stopped.

Port counters are the switch's (netfabric.switch.PortCounters): ``rx`` is what the port's
device sent into the switch, ``tx`` what the switch delivered to it, ``drops`` what the
switch dropped on that port's ingress, by reason.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hv._vm import Vm
    from hv.lab._runner import LabRun
    from netfabric.fabric import Switch

Snapshot = dict[str, Any]
Rates = dict[str, Any]


def _insns(vm: Vm) -> tuple[int, str]:
    vcpu = vm.machine.vcpu
    if vm.config.count_instructions:
        return vcpu.stats.instructions, "exact"
    kind = {"engine": "blocks", "block-hook": "estimate"}.get(vcpu.slicing, "none")
    return vcpu.stats.guest_insns, kind


def vm_snapshot(vm: Vm) -> dict[str, Any]:
    """One VM's cumulative counters (see the module docstring)."""
    s = vm.machine.vcpu.stats
    insns, counter = _insns(vm)
    exits = s.slices + s.sbi_calls + s.traps_forwarded + s.rdtime_emulated
    exits += s.mmio_reads + s.mmio_writes
    stopped = vm.exit is not None
    clock = vm.machine.clock
    return {
        "name": vm.name,
        "state": vm.state.value,
        "uptime": None if stopped else clock.ticks() / clock.hz,
        "guest_insns": insns,
        "insns_counter": counter,
        "exits": exits,
        "exits_native": s.sbi_native,
        "slices": s.slices,
        "host_ns": s.host_ns,
        "exit": None
        if vm.exit is None
        else {"kind": str(vm.exit.kind), "reason": vm.exit.reason, "code": vm.exit.exit_code},
    }


def switch_snapshot(switch: Switch) -> dict[str, Any]:
    """One switch's ports and their cumulative counters."""
    ports = []
    for pid, port in switch.ports.items():
        c = port.counters
        ports.append(
            {
                "id": pid,
                "name": port.name,
                "rx_frames": c.rx_frames,
                "rx_bytes": c.rx_bytes,
                "tx_frames": c.tx_frames,
                "tx_bytes": c.tx_bytes,
                "drops": sum(c.drops.values()),
                "drops_by": dict(c.drops),
            }
        )
    return {"name": switch.name, "ports": ports}


def snapshot(run: LabRun, now: float | None = None) -> Snapshot:
    """The lab's cumulative counters now: a JSON-able dict (see the module docstring).
    ``now`` is the sample's time (``time.monotonic()`` unless given)."""
    return {
        "lab": run.spec.name,
        "time": time.monotonic() if now is None else now,
        "vms": {name: vm_snapshot(vm) for name, vm in run.vms.items()},
        "switches": {name: switch_snapshot(sw) for name, sw in run.switches.items()},
    }


def _per_s(cur: int, prev: int, dt: float) -> float:
    return max(0, cur - prev) / dt if dt > 0 else 0.0


def rates(prev: Snapshot | None, cur: Snapshot) -> Rates:
    """Per-second figures between two snapshots of the same lab (``prev`` None, or no time
    between them: every rate is 0). A VM or port that ``prev`` lacks counts from 0.

    ``{"lab", "time", "interval", "vms": {name: {name, state, uptime, mips, exits_per_s,
    cpu, guest_insns, insns_counter, exits, exit}}, "switches": {name: {name, ports: [{id,
    name, rx_fps, rx_bps, tx_fps, tx_bps, drops_per_s, drops, drops_by}]}}, "total": {mips,
    exits_per_s, cpu}}``: ``mips`` millions of guest instructions per second, ``cpu`` the
    share of one host CPU spent in the VM's vCPU (host time over wall time: 0.5 is half a
    core), ``*_fps`` frames and ``*_bps`` bytes per second."""
    dt = cur["time"] - prev["time"] if prev is not None else 0.0
    pvms: dict[str, Any] = prev["vms"] if prev is not None else {}
    vms: dict[str, Any] = {}
    for name, v in cur["vms"].items():
        p = pvms.get(name, {})
        vms[name] = {
            "name": name,
            "state": v["state"],
            "uptime": v["uptime"],
            "mips": _per_s(v["guest_insns"], p.get("guest_insns", 0), dt) / 1e6,
            "exits_per_s": _per_s(v["exits"], p.get("exits", 0), dt),
            "cpu": _per_s(v["host_ns"], p.get("host_ns", 0), dt) / 1e9,
            "guest_insns": v["guest_insns"],
            "insns_counter": v["insns_counter"],
            "exits": v["exits"],
            "exit": v["exit"],
        }
    switches: dict[str, Any] = {}
    psw: dict[str, Any] = prev["switches"] if prev is not None else {}
    for name, sw in cur["switches"].items():
        before = {p["id"]: p for p in psw.get(name, {}).get("ports", [])}
        ports = []
        for port in sw["ports"]:
            b = before.get(port["id"], {})
            ports.append(
                {
                    "id": port["id"],
                    "name": port["name"],
                    "rx_fps": _per_s(port["rx_frames"], b.get("rx_frames", 0), dt),
                    "rx_bps": _per_s(port["rx_bytes"], b.get("rx_bytes", 0), dt),
                    "tx_fps": _per_s(port["tx_frames"], b.get("tx_frames", 0), dt),
                    "tx_bps": _per_s(port["tx_bytes"], b.get("tx_bytes", 0), dt),
                    "drops_per_s": _per_s(port["drops"], b.get("drops", 0), dt),
                    "drops": port["drops"],
                    "drops_by": port["drops_by"],
                }
            )
        switches[name] = {"name": name, "ports": ports}
    return {
        "lab": cur.get("lab", ""),
        "time": cur["time"],
        "interval": dt,
        "vms": vms,
        "switches": switches,
        "total": {
            "mips": sum(v["mips"] for v in vms.values()),
            "exits_per_s": sum(v["exits_per_s"] for v in vms.values()),
            "cpu": sum(v["cpu"] for v in vms.values()),
        },
    }
