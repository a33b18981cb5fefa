"""A running lab's cables pulled and plugged back: what ``hv link`` shows and sets (the
control socket's ``link`` op, docs/CONTROL.md), as Mininet's ``link r1 s1 down`` or
``ip link set ... down`` on a veth.

Every cable has a link state, impaired or not: each NIC's (``VM.ethN``) and each ``[[links]]``
entry's (``links[N]``), named as ``hv netem`` names cables (hv.lab._netem: a link's ends
``lan-wan``, a NIC's ``a-lan``, a VM's name when it has one NIC).

A NIC's cable down: its switch port goes down (the switch forgets the MACs it learned there,
as a real switch flushes a port on link loss, and counts what arrives on the port and what it
would have sent out through it as drops by cause ``down``), and the NIC loses its carrier
(virtio-net's STATUS and a config interrupt: Linux reports NO-CARRIER at once). What the NIC
would send or take meanwhile is dropped by the device (``tx_link_down``, ``rx_link_down``),
which the lab's counters add to its port's ``down`` (``down_drops``). A link's cable down:
both its ports go down, in both switches. Up again: the ports come up and the carrier back;
the switches learn afresh. Frames on an impaired cable when it goes down arrive at a side
that is down and are counted there.

Time: a change happens when it is asked for, at the lab's current time. On real time at
once. On virtual time the switches' side at the fabric's time (as a frame from a host port,
or ``hv netem set``), and the guest's carrier as a frame the fabric hands it then: after the
frames delivered to it before, at the fabric's time plus the lookahead
(``VirtioNet.set_link``), so a guest never sees its carrier go before a frame the switch
gave it while the cable was still up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hv.lab._netem import Cabled, cable_ends, find_cable, link_index
from hv.virtio import VirtioMmio, VirtioNet

if TYPE_CHECKING:
    from netfabric.ports.base import Port

# What a NIC's device drops while its link is down (counted as the port's ``down``).
NIC_DOWN = ("tx_link_down", "rx_link_down")


def link_cables(run: Cabled) -> list[str]:
    """Every cable of the lab: ``links[N]`` for each ``[[links]]`` entry, then ``VM.ethN``
    for each NIC (the order ``hv netem`` lists impaired ones in)."""
    keys = [f"links[{i}]" for i in range(len(run.spec.links))]
    keys += [f"{vm.name}.eth{i}" for vm in run.spec.vms.values() for i in range(len(vm.nics))]
    return keys


def cable_ports(run: Cabled, key: str) -> list[tuple[str, Port]]:
    """The switch ports (with their switch's name) at the ends of cable ``key``."""
    i = link_index(key)
    if i is not None:
        if i >= len(run.links):
            return []
        spec, made = run.spec.links[i], run.links[i]
        return [(spec.a, made.port_a), (spec.b, made.port_b)]
    _, switch = cable_ends(run, key)
    sw = run.switches.get(switch)
    ports = sw.ports.values() if sw is not None else ()
    return [(switch, p) for p in ports if p.name == key]


def cable_nic(run: Cabled, key: str) -> VirtioNet | None:
    """The NIC device at the VM's end of cable ``key`` (None for a link, or a VM not
    started)."""
    if link_index(key) is not None:
        return None
    vm = run.vms.get(key.rpartition(".")[0])
    for dev in vm.machine.devices if vm is not None else ():
        if dev.name == key and isinstance(dev, VirtioMmio) and isinstance(dev.backend, VirtioNet):
            return dev.backend
    return None


def nic_down_drops(run: Cabled) -> dict[tuple[str, int], int]:
    """(switch, port id) -> what the NIC behind that port dropped while its link was down
    (added to the port's drops by cause ``down`` in the lab's counters)."""
    out: dict[tuple[str, int], int] = {}
    for vm in run.spec.vms.values():
        for i in range(len(vm.nics)):
            key = f"{vm.name}.eth{i}"
            net = cable_nic(run, key)
            n = sum(net.counters[c] for c in NIC_DOWN) if net is not None else 0
            if n:
                for switch, port in cable_ports(run, key):
                    out[(switch, port.id)] = out.get((switch, port.id), 0) + n
    return out


def set_link(run: Cabled, name: str, up: bool) -> dict[str, Any]:
    """Pull (``up=False``) or plug back cable ``name`` (any name ``find_cable`` takes, among
    ``link_cables``); its state after (``describe``). A LookupError for a name."""
    key = find_cable(run, name, link_cables(run))
    for _, port in cable_ports(run, key):
        port.set_up(up)
    net = cable_nic(run, key)
    if net is not None:
        net.set_link(up)
    if run.timeline is not None:
        run.timeline.poke()
    return describe(run, key)


def link_state(run: Cabled, name: str) -> dict[str, Any]:
    """Cable ``name``'s state (``describe``); a LookupError for a name."""
    return describe(run, find_cable(run, name, link_cables(run)))


def describe(run: Cabled, key: str) -> dict[str, Any]:
    """One cable, JSON-able: its names, whether it is up, the frames that entered it each
    way (a NIC's egress: what the VM sent; a link's: what ``a`` sent to ``b``) and what was
    dropped because it was down (``down_drops``: its ports' ``down`` and its NIC's)."""
    a, b = cable_ends(run, key)
    ports = cable_ports(run, key)
    up = all(p.up for _, p in ports)
    net = cable_nic(run, key)
    if link_index(key) is not None and len(ports) == 2:
        egress, ingress = ports[0][1].counters.tx_frames, ports[1][1].counters.tx_frames
    else:
        c = [p.counters for _, p in ports]
        egress, ingress = sum(x.rx_frames for x in c), sum(x.tx_frames for x in c)
    drops = sum(p.counters.drops["down"] for _, p in ports)
    drops += sum(net.counters[c] for c in NIC_DOWN) if net is not None else 0
    return {
        "name": key,
        "label": f"{a}-{b}",
        "kind": "link" if link_index(key) is not None else "nic",
        "up": up,
        "egress": {"from": a, "to": b, "frames": egress},
        "ingress": {"from": b, "to": a, "frames": ingress},
        "down_drops": drops,
    }


def link(run: Cabled, request: dict[str, Any]) -> dict[str, Any]:
    """The ``link`` op: ``{"cable": NAME, "state": "down"}`` (or ``"up"``) sets a cable's
    link state; without ``state`` it only shows. The answer: ``{"cable": describe(...)}``;
    without ``cable``, ``{"cables": [...]}`` (every cable). A LookupError for a name, a
    ValueError for a state."""
    name, state = request.get("cable"), request.get("state")
    if state is not None and state not in ("up", "down"):
        raise ValueError(f'state: {state!r} is not "up" or "down"')
    if name is None:
        if state is not None:
            raise ValueError("state: name the cable to set")
        return {"cables": [describe(run, key) for key in link_cables(run)]}
    if not isinstance(name, str):
        raise ValueError("cable: a cable's name, e.g. a.eth0 or links[0]")
    if state is None:
        return {"cable": link_state(run, name)}
    return {"cable": set_link(run, name, state == "up")}
