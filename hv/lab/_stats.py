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
          "tx_bytes": 882, "rx_wire_frames": 10, "rx_wire_bytes": 980,
          "tx_wire_frames": 9, "tx_wire_bytes": 882, "drops": 3,
          "drops_by": {"loss": 3}, "cable": "a.eth0",
          "cable_counts": {"duplicated": 0, "corrupted": 0, "reordered": 0}}]}},
     "impairments": {"a.eth0": {...}},      # hv.lab._netem.describe, per cable
     "vxlan": {"lan": {"vni": 42, "local": "10.9.0.1:4789", "remotes": ["10.9.0.2:4789"],
                       "macs": 3, "counters": {"rx_frames": 12, "rx_bad_header": 0, ...}}},
     "clock": {"mode": "virtual", "virtual_s": 12.345, "wall_s": 0.402, "ratio": 30.7,
               "mips": 1000, "seed": 7, "rounds": 812, "events": 96}}

``clock`` is the lab's clock (docs/TIME.md): ``{"mode": "real", "seed": ...}`` on real time;
on virtual time also the lab's virtual time (seconds since it started: the time every VM
has reached), the wall time it has run for, their ratio (virtual seconds per wall second),
the harts' rate, and the timeline's rounds and events so far.

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
device sent into the switch, ``tx`` what the switch delivered to it. ``*_frames`` and
``*_bytes`` count frames as the devices handed them over (an offloaded TCP frame of up to
64 KiB once), ``*_wire_frames`` and ``*_wire_bytes`` as the wire and a capture carry them
(that frame as its segments); without offloads they are equal. ``drops`` is every frame the
port's traffic lost: the switch's drops on the port's ingress, by reason, and, when the
port has an impaired cable (``cable``, a ``LabRun.impairments`` key), the cable's drops
(wire frames) by cause: ``loss``, ``queue`` (the rate limiter's queue was full), ``mtu``. A
cable direction counts on the port its frames leave the switch by (a link's two directions
on the link's two ports; a NIC's cable, both ways, on the NIC's port: hv.lab._netem), and
``down``: what a port whose cable is down (``hv link``) missed, each way, with what its NIC
dropped meanwhile (hv.lab._link).
``cable_counts``: what the cable did to frames it passed on (``duplicated``, ``corrupted``,
``reordered``). ``impairments``: each cable's settings and counters per direction.
``vxlan``: each switch's VXLAN uplink (netfabric.ports.vxlan.VxlanPort.stats): its VNI, the
local and remote VTEPs (fixed and learned), the MACs learned behind them, and the counters of
the port and its UDP socket (``rx_bad_header``, ``rx_bad_flags``, ``rx_unknown_vni``,
``rx_runt``, ``rx_oversize``, ``rx_kernel_drops``, ``tx_no_remote``, ``tx_dropped``, ...).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hv._vm import Vm
    from hv.lab._runner import LabRun
    from netfabric.impair import ImpairedDirection
    from netfabric.switch import Switch

Snapshot = dict[str, Any]
Rates = dict[str, Any]


def _insns(vm: Vm) -> tuple[int, str]:
    stats = vm.machine.hart_stats()  # (every hart's, summed)
    if vm.config.count_instructions:
        return stats.instructions, "exact"
    kind = {"engine": "blocks", "block-hook": "estimate"}.get(vm.machine.vcpu.slicing, "none")
    return stats.guest_insns, kind


def vm_snapshot(vm: Vm) -> dict[str, Any]:
    """One VM's cumulative counters (see the module docstring)."""
    s = vm.machine.hart_stats()
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


# A cable direction's drops, by the cause ``drops_by`` names them: loss (random or in
# bursts), the rate limiter's queue overflowing, a frame over the cable's MTU.
CABLE_DROPS = {"dropped_loss": "loss", "dropped_queue": "queue", "dropped_mtu": "mtu"}
# What a cable direction did to frames it passed on (counted, not dropped).
CABLE_COUNTS = ("duplicated", "corrupted", "reordered")


def switch_snapshot(
    switch: Switch,
    cables: Mapping[int, list[tuple[str, ImpairedDirection]]] | None = None,
    nic_down: Mapping[int, int] | None = None,
) -> dict[str, Any]:
    """One switch's ports and their cumulative counters; ``cables``: port id -> the cable
    directions whose drops count on that port (``hv.lab._netem.cable_ports``); ``nic_down``:
    port id -> what the NIC behind it dropped while its link was down (``hv link``)."""
    ports = []
    for pid, port in switch.ports.items():
        c = port.counters
        drops_by = dict(c.drops)
        if nic_down and nic_down.get(pid):
            drops_by["down"] = drops_by.get("down", 0) + nic_down[pid]
        on = cables.get(pid, []) if cables else []
        counts = dict.fromkeys(CABLE_COUNTS, 0)
        for _, d in on:
            for counter, cause in CABLE_DROPS.items():
                if d.counters[counter]:
                    drops_by[cause] = drops_by.get(cause, 0) + d.counters[counter]
            for counter in CABLE_COUNTS:
                counts[counter] += d.counters[counter]
        ports.append(
            {
                "id": pid,
                "name": port.name,
                "rx_frames": c.rx_frames,
                "rx_bytes": c.rx_bytes,
                "tx_frames": c.tx_frames,
                "tx_bytes": c.tx_bytes,
                "rx_wire_frames": c.rx_wire_frames,
                "rx_wire_bytes": c.rx_wire_bytes,
                "tx_wire_frames": c.tx_wire_frames,
                "tx_wire_bytes": c.tx_wire_bytes,
                "drops": sum(drops_by.values()),
                "drops_by": drops_by,
                "cable": on[0][0] if on else None,
                "cable_counts": counts if on else {},
            }
        )
    return {"name": switch.name, "ports": ports}


def snapshot(run: LabRun, now: float | None = None) -> Snapshot:
    """The lab's cumulative counters now: a JSON-able dict (see the module docstring).
    ``now`` is the sample's time (``time.monotonic()`` unless given)."""
    # here, not at the top: hv stats's client renders snapshots without loading the fabric
    from hv.lab._link import nic_down_drops
    from hv.lab._netem import cable_ports, describe

    on: dict[str, dict[int, list[tuple[str, ImpairedDirection]]]] = {}
    for (switch, pid), dirs in cable_ports(run).items():
        on.setdefault(switch, {})[pid] = dirs
    down: dict[str, dict[int, int]] = {}
    for (switch, pid), n in nic_down_drops(run).items():
        down.setdefault(switch, {})[pid] = n
    return {
        "lab": run.spec.name,
        "time": time.monotonic() if now is None else now,
        "vms": {name: vm_snapshot(vm) for name, vm in run.vms.items()},
        "switches": {
            name: switch_snapshot(sw, on.get(name), down.get(name))
            for name, sw in run.switches.items()
        },
        "impairments": {key: describe(run, key) for key in run.impairments},
        "vxlan": {name: port.stats() for name, port in run.vxlan.items()},
        "clock": clock_snapshot(run),
    }


def clock_snapshot(run: LabRun) -> dict[str, Any]:
    """The lab's clock: its mode, and on virtual time where it is (see the docstring)."""
    from hv._timeline import PS
    from hv.hw import VirtualClock

    tl = run.timeline
    if tl is None:
        return {"mode": "real", "seed": run.spec.seed}
    s = tl.stats()
    virtual, wall = s["virtual_s"], s["wall_s"]
    if run.vms and all(vm.exit is not None for vm in run.vms.values()):
        # Every VM has left the timeline, which then reports only its fabric's time: where
        # the lab got to is where its VMs stopped.
        ps = [vm.machine.clock.ps for vm in run.vms.values()
              if isinstance(vm.machine.clock, VirtualClock)]  # fmt: skip
        virtual = max([virtual, *(p / PS for p in ps)])
    if tl.wall_s > 0:  # its task has ended: the wall time it ran, not the time since
        wall = tl.wall_s
    return {
        "mode": "virtual",
        "virtual_s": virtual,
        "wall_s": wall,
        "ratio": virtual / wall if wall > 0 else 0.0,
        "mips": run.spec.mips,
        "seed": run.spec.seed,
        "rounds": s["rounds"],
        "events": s["events"],
    }


def clock_fields(clock: Mapping[str, Any] | None) -> str:
    """`` clock=real`` or `` clock=virtual virtual=12.345s wall=0.402s ratio=30.7x`` (the
    end of the ``lab`` line of ``hv stats`` and of the live view's lines; nothing for a
    snapshot without a clock, from an older lab)."""
    if not clock:
        return ""
    if clock["mode"] != "virtual":
        return f" clock={clock['mode']}"
    return (
        f" clock=virtual virtual={clock['virtual_s']:.3f}s wall={clock['wall_s']:.3f}s "
        f"ratio={clock['ratio']:.1f}x"
    )


def clock_text(clock: Mapping[str, Any] | None) -> str:
    """``clock: virtual 12.345 s in 0.402 s wall (30.7x)``, or ``clock: real``."""
    if not clock:
        return ""
    if clock["mode"] != "virtual":
        return f"clock: {clock['mode']}"
    return (
        f"clock: virtual {clock['virtual_s']:.3f} s in {clock['wall_s']:.3f} s wall "
        f"({clock['ratio']:.1f}x)"
    )


def _per_s(cur: int, prev: int, dt: float) -> float:
    return max(0, cur - prev) / dt if dt > 0 else 0.0


def _wire_rates(port: dict[str, Any], before: dict[str, Any], dt: float) -> dict[str, float]:
    """Wire frames and bytes per second (a snapshot without them: the frames as sent)."""
    out = {}
    for way in ("rx", "tx"):
        for unit, rate in (("frames", "fps"), ("bytes", "bps")):
            cur = port.get(f"{way}_wire_{unit}", port[f"{way}_{unit}"])
            prev = before.get(f"{way}_wire_{unit}", before.get(f"{way}_{unit}", 0))
            out[f"{way}_wire_{rate}"] = _per_s(cur, prev, dt)
    return out


def rates(prev: Snapshot | None, cur: Snapshot) -> Rates:
    """Per-second figures between two snapshots of the same lab (``prev`` None, or no time
    between them: every rate is 0). A VM or port that ``prev`` lacks counts from 0.

    ``{"lab", "time", "interval", "clock", "vms": {name: {name, state, uptime, mips,
    exits_per_s, cpu, guest_insns, insns_counter, exits, exit}}, "switches": {name: {name,
    ports: [{id, name, rx_fps, rx_bps, tx_fps, tx_bps, rx_wire_fps, rx_wire_bps,
    tx_wire_fps, tx_wire_bps, drops_per_s, drops, drops_by, cable, cable_counts}]}},
    "total": {mips, exits_per_s, cpu}}``: ``mips`` millions of guest instructions per
    second, ``cpu`` the share of one host CPU spent in the VM's vCPU (host time over wall
    time: 0.5 is half a core), ``*_fps`` frames and ``*_bps`` bytes per second (``*_wire_*``
    on the wire); ``clock`` the current snapshot's (``clock_snapshot``)."""
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
                    **_wire_rates(port, b, dt),
                    "cable": port.get("cable"),
                    "cable_counts": port.get("cable_counts", {}),
                }
            )
        switches[name] = {"name": name, "ports": ports}
    return {
        "lab": cur.get("lab", ""),
        "time": cur["time"],
        "interval": dt,
        "clock": cur.get("clock"),  # the snapshot's (``clock_snapshot``); None from an old lab
        "vms": vms,
        "switches": switches,
        "total": {
            "mips": sum(v["mips"] for v in vms.values()),
            "exits_per_s": sum(v["exits_per_s"] for v in vms.values()),
            "cpu": sum(v["cpu"] for v in vms.values()),
        },
    }


# -- plain text: cumulative counters (hv stats) and cable settings (hv netem) -----------------


def _num(x: float) -> str:
    return f"{x:g}"


def duration_text(seconds: float) -> str:
    """0.02 -> 20ms, as a lab file spells it."""
    if seconds == 0:
        return "0"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{_num(round(seconds / scale, 6))}{unit}"
    return f"{_num(round(seconds / 1e-9, 3))}ns"


def percent_text(p: float) -> str:
    return f"{_num(round(p * 100, 6))}%"


def rate_text(bps: float | None) -> str:
    if bps is None:
        return "none"
    for unit, scale in (("Gbit", 1e9), ("Mbit", 1e6), ("kbit", 1e3)):
        if bps >= scale:
            return f"{_num(round(bps / scale, 6))}{unit}"
    return f"{_num(bps)}bit"


def size_text(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


def settings_text(s: Mapping[str, Any]) -> str:
    """A cable direction's settings (``Impairment`` fields, as ``describe`` gives them) as
    ``delay=20ms jitter=5ms loss=1% ...``: what is always there, then what is set."""
    parts = [f"delay={duration_text(s['delay'])}", f"jitter={duration_text(s['jitter'])}"]
    if s["jitter"] and s["jitter_dist"] != "uniform":
        parts.append(f"jitter_dist={s['jitter_dist']}")
    parts.append(f"loss={percent_text(s['loss'])}")
    ge = s.get("loss_burst")
    if ge:
        parts.append("loss_burst=" + ",".join(f"{k}:{_num(ge[k])}" for k in sorted(ge)))
    for k in ("duplicate", "corrupt", "reorder"):
        parts.append(f"{k}={percent_text(s[k])}")
    parts.append(f"rate={rate_text(s['rate'])}")
    if s["rate"] is not None:
        parts += [f"queue={size_text(s['queue'])}", f"burst={size_text(s['burst'])}"]
    parts.append(f"mtu={s['mtu'] if s['mtu'] is not None else 'none'}")
    parts.append(f"seed={s['seed']}")
    return " ".join(parts)


def cable_counters_text(d: Mapping[str, Any]) -> str:
    """A cable direction's counters and what it holds now."""
    c = d["counters"]
    names = ("frames_in", "frames_out", *CABLE_DROPS, *CABLE_COUNTS)
    return " ".join(f"{k}={c.get(k, 0)}" for k in names) + f" pending={d['pending']}"


def exit_fields(e: Mapping[str, Any] | None) -> str:
    """The end of a stopped VM's line: `` exit=CODE kind=KIND reason="..."``."""
    if e is None:
        return ""
    return f" exit={e['code']} kind={e['kind']} reason={json.dumps(e['reason'])}"


def drops_by_field(drops_by: Mapping[str, int]) -> str:
    """`` drops_by=CAUSE:N,...`` (nothing without drops)."""
    if not drops_by:
        return ""
    return " drops_by=" + ",".join(f"{k}:{n}" for k, n in sorted(drops_by.items()))


def render_snapshot(snap: Snapshot) -> list[str]:
    """A snapshot's cumulative counters as plain lines (``hv stats``; a stable format,
    fields separated by single spaces)::

        lab NAME vms=3 running=2 clock=real
        lab NAME vms=3 running=2 clock=virtual virtual=12.345s wall=0.402s ratio=30.7x
        vm NAME STATE guest_insns=N exits=N cpu_time=1.234s uptime=12.3s [exit=0 ...]
        port SWITCH PORT rx=N rx_bytes=N rx_wire=N rx_wire_bytes=N tx=N tx_bytes=N
             tx_wire=N tx_wire_bytes=N drops=N [drops_by=CAUSE:N,...]
             [cable=KEY duplicated=N corrupted=N reordered=N]                 (one line)
        cable KEY A-B DIRECTION FROM->TO delay=... (settings) frames_in=N ... pending=N
        vxlan SWITCH vni=N local=ADDR:PORT remotes=ADDR:PORT,... macs=N COUNTER=N ...

    The ``lab`` line ends with the lab's clock: ``real``, or ``virtual`` with the lab's
    virtual time, the wall time it took and their ratio (``clock_snapshot``).
    ``rx``/``tx`` count frames as the devices handed them over, ``*_wire`` as the wire
    carries them (an offloaded TCP frame as its segments). ``drops`` are the switch's on the
    port's ingress plus its cable's (by the port the frames leave by: see hv.lab._netem),
    by cause: the switch's reasons (``down``: its cable is down, ``hv link``), and
    ``loss``, ``queue`` (the rate limiter's queue full) and ``mtu`` on a cable."""
    vms = snap["vms"].values()
    running = sum(v["state"] == "running" for v in vms)
    out = [f"lab {snap['lab'] or '-'} vms={len(vms)} running={running}"]
    out[0] += clock_fields(snap.get("clock"))
    for v in vms:
        uptime = "-" if v["uptime"] is None else f"{v['uptime']:.1f}s"
        line = (
            f"vm {v['name']} {v['state']} guest_insns={v['guest_insns']} exits={v['exits']} "
            f"cpu_time={v['host_ns'] / 1e9:.3f}s uptime={uptime}"
        )
        out.append(line + exit_fields(v["exit"]))
    for sw in snap["switches"].values():
        for p in sw["ports"]:
            line = f"port {sw['name']} {p['name']}"
            for way in ("rx", "tx"):
                line += (
                    f" {way}={p[f'{way}_frames']} {way}_bytes={p[f'{way}_bytes']}"
                    f" {way}_wire={p.get(f'{way}_wire_frames', p[f'{way}_frames'])}"
                    f" {way}_wire_bytes={p.get(f'{way}_wire_bytes', p[f'{way}_bytes'])}"
                )
            line += f" drops={p['drops']}"
            line += drops_by_field(p["drops_by"])
            if p.get("cable"):
                counts = p.get("cable_counts", {})
                line += f" cable={p['cable']} " + " ".join(
                    f"{k}={counts.get(k, 0)}" for k in CABLE_COUNTS
                )
            out.append(line)
    for cable in snap.get("impairments", {}).values():
        for way in ("egress", "ingress"):
            d = cable[way]
            out.append(
                f"cable {cable['name']} {cable['label']} {way} {d['from']}->{d['to']} "
                f"{settings_text(d['settings'])} {cable_counters_text(d)}"
            )
    for name, v in snap.get("vxlan", {}).items():
        counts = " ".join(f"{k}={n}" for k, n in sorted(v["counters"].items()))
        out.append(
            f"vxlan {name} vni={v['vni']} local={v['local']} "
            f"remotes={','.join(v['remotes']) or '-'} macs={v['macs']} {counts}".rstrip()
        )
    return out
