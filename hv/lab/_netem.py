"""A running lab's impaired cables by name: what ``hv netem`` shows and changes (the control
socket's ``netem`` op, docs/CONTROL.md) and where ``hv stats`` puts their drops.

A cable is named as ``LabRun.impairments`` keys it: ``links[N]`` for the lab file's Nth
``[[links]]`` entry, ``VM.ethN`` for a NIC's cable. Friendlier names are accepted when they
name one cable only: a link's ends (``lan-wan``, or ``wan-lan``), a NIC's ends (``c-lan``),
or a VM's name when one of its NICs is impaired. Directions: ``egress`` runs from a link's
``a`` to its ``b``, and out of the VM on a NIC's cable; ``ingress`` the other way.

Where drops show (``cable_ports``): a cable's direction counts on the switch port the frames
leave by, as a real interface's queueing discipline counts on its egress: a link's egress
on ``a``'s link port, its ingress on ``b``'s; both directions of a NIC's cable on the NIC's
port (the VM's side has no switch port).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from hv.lab._impair import parse_changes
from netfabric.impair import ImpairedDirection, ImpairedLink

if TYPE_CHECKING:
    from hv._timeline import Timeline
    from hv._vm import Vm
    from hv.lab._spec import LabSpec
    from netfabric.ports.link import Link
    from netfabric.switch import Switch


class Cabled(Protocol):
    """A running lab, as its cables are found in it (``hv.lab.LabRun``; a protocol, so that
    the lab's own methods can use this module: ``LabRun.set_link``)."""

    @property
    def spec(self) -> LabSpec: ...
    @property
    def switches(self) -> dict[str, Switch]: ...
    @property
    def vms(self) -> dict[str, Vm]: ...
    @property
    def links(self) -> list[Link]: ...
    @property
    def impairments(self) -> dict[str, ImpairedLink]: ...
    @property
    def timeline(self) -> Timeline | None: ...


DIRECTIONS = ("egress", "ingress")


def link_index(key: str) -> int | None:
    if key.startswith("links[") and key.endswith("]") and key[6:-1].isdigit():
        return int(key[6:-1])
    return None


def cable_ends(run: Cabled, key: str) -> tuple[str, str]:
    """Where ``key``'s egress direction runs from and to (ingress: the other way)."""
    i = link_index(key)
    if i is not None:
        link = run.spec.links[i]
        return link.a, link.b
    vm, _, eth = key.rpartition(".")
    return vm, run.spec.vms[vm].nics[int(eth.removeprefix("eth"))].switch


def _label(run: Cabled, key: str) -> str:
    a, b = cable_ends(run, key)
    return f"{a}-{b}"


def cable_names(run: Cabled, keys: Iterable[str] | None = None) -> list[str]:
    """Each cable (``keys``; default the impaired ones) as ``KEY (A-B)``, for messages."""
    return [f"{key} ({_label(run, key)})" for key in (run.impairments if keys is None else keys)]


def find_cable(run: Cabled, name: str, keys: Sequence[str] | None = None) -> str:
    """The key ``name`` stands for among ``keys`` (default: the ``LabRun.impairments``
    keys; ``hv link`` gives every cable's, ``link_cables``); a LookupError saying why not
    (unknown, or more than one cable by that name) and listing the cables."""
    impaired = keys is None
    keys = list(run.impairments) if keys is None else keys
    if name in keys:
        return name
    found: list[str] = []
    vm_cables: dict[str, list[str]] = {}
    for key in keys:
        a, b = cable_ends(run, key)
        if name in (f"{a}-{b}", f"{b}-{a}"):
            found.append(key)
        if link_index(key) is None:
            vm_cables.setdefault(a, []).append(key)
    if len(vm_cables.get(name, [])) == 1:
        found += vm_cables[name]
    if len(found) == 1:
        return found[0]
    cables = ", ".join(cable_names(run, keys)) or "none"
    if found:
        raise LookupError(f"{name!r} names several cables: {', '.join(found)} (cables: {cables})")
    if impaired and not keys:
        raise LookupError(
            f"no cable named {name!r}: lab {run.spec.name} has no impaired cables (a link or "
            "a NIC with impair = {...} in the lab file has one; impair = {} starts it clean)"
        )
    raise LookupError(f"no cable named {name!r} (cables: {cables})")


def _direction(d: ImpairedDirection, ends: tuple[str, str]) -> dict[str, Any]:
    return {
        "from": ends[0],
        "to": ends[1],
        "settings": dataclasses.asdict(d.impairment),
        "counters": dict(d.counters),
        "pending": d.pending,
        "queued_bytes": d.queued_bytes,
    }


def describe(run: Cabled, key: str) -> dict[str, Any]:
    """One cable, JSON-able: its names, and per direction its ends, settings (the
    ``Impairment`` fields: seconds, probabilities, bits/s, bytes), counters and what it
    holds now."""
    link = run.impairments[key]
    a, b = cable_ends(run, key)
    return {
        "name": key,
        "label": f"{a}-{b}",
        "kind": "link" if link_index(key) is not None else "nic",
        "egress": _direction(link.egress, (a, b)),
        "ingress": _direction(link.ingress, (b, a)),
    }


def netem(run: Cabled, request: dict[str, Any]) -> dict[str, Any]:
    """The ``netem`` op: ``{"cable": NAME, "set": {...}, "direction": "both"}`` changes the
    named settings (spelled as in a lab file's ``impair`` table; ``null`` takes a ``rate``,
    ``mtu`` or ``loss_burst`` away) of one or both directions and keeps the rest; without
    ``set`` it only shows. The answer: ``{"cable": describe(...)}``; without ``cable``,
    ``{"cables": [...]}`` (every cable). A LookupError for a name, a ValueError for a
    setting."""
    name = request.get("cable")
    if name is None:
        if "set" in request:
            raise ValueError("set: name the cable to change")
        return {"cables": [describe(run, key) for key in run.impairments]}
    if not isinstance(name, str):
        raise ValueError("cable: a cable's name, e.g. links[0]")
    key = find_cable(run, name)
    if "set" in request:
        direction = _which(request.get("direction", "both"))
        changes = parse_changes(request["set"], "set")
        if not changes:
            raise ValueError("set: nothing to set")
        _set(run.impairments[key], direction, changes)
    return {"cable": describe(run, key)}


def _which(direction: object) -> Literal["both", "egress", "ingress"]:
    if direction == "egress":
        return "egress"
    if direction == "ingress":
        return "ingress"
    if direction == "both":
        return "both"
    raise ValueError(f'direction: {direction!r} is not "both", "egress" or "ingress"')


def _set(
    link: ImpairedLink, which: Literal["both", "egress", "ingress"], changes: dict[str, Any]
) -> None:
    dirs = (link.egress, link.ingress) if which == "both" else (link.direction(which),)
    for d in dirs:  # all or nothing: check every direction before changing one
        dataclasses.replace(d.impairment, **changes)
    link.set(which, **changes)


def cable_ports(run: Cabled) -> dict[tuple[str, int], list[tuple[str, ImpairedDirection]]]:
    """(switch, port id) -> the cable directions whose drops count on that port (see the
    module docstring), each with its cable's key."""
    out: dict[tuple[str, int], list[tuple[str, ImpairedDirection]]] = {}
    for key, link in run.impairments.items():
        i = link_index(key)
        if i is not None:
            if i >= len(run.links):
                continue
            spec, made = run.spec.links[i], run.links[i]
            out.setdefault((spec.a, made.port_a.id), []).append((key, link.egress))
            out.setdefault((spec.b, made.port_b.id), []).append((key, link.ingress))
            continue
        _, switch = cable_ends(run, key)
        sw = run.switches.get(switch)
        for pid, port in sw.ports.items() if sw is not None else ():
            if port.name == key:
                out.setdefault((switch, pid), []).extend([(key, link.egress), (key, link.ingress)])
    return out
