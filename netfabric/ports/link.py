"""A cable between two switches, and the loop check a lab's links pass."""

from __future__ import annotations

from netfabric.frame import Frame
from netfabric.ports.base import Cable, Deliver, PortVlan, SwitchPort, SwitchSide


def find_loop(edges: list[tuple[str, str]]) -> list[str] | None:
    """The first loop the edges (links between switches, in order) close, as the switches
    around it (``[a, b, c, a]``); None for a forest. Without spanning tree a loop would send
    every broadcast around forever."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    adjacent: dict[str, list[str]] = {}
    for a, b in edges:
        if a == b:
            return [a, a]
        ra, rb = root(a), root(b)
        if ra == rb:  # already connected: the path between them plus this edge
            path = _path(adjacent, a, b)
            return [*path, a]
        parent[ra] = rb
        adjacent.setdefault(a, []).append(b)
        adjacent.setdefault(b, []).append(a)
    return None


def _path(adjacent: dict[str, list[str]], a: str, b: str) -> list[str]:
    prev: dict[str, str | None] = {a: None}
    todo = [a]
    while todo:
        x = todo.pop(0)
        for y in adjacent.get(x, []):
            if y not in prev:
                prev[y] = x
                todo.append(y)
    out = [b]
    while (p := prev.get(out[-1])) is not None:
        out.append(p)
    return out[::-1]


class LinkPort(SwitchPort):
    """One end of a link: what its switch sends out through it crosses to the other end."""

    def __init__(self, switch: SwitchSide, name: str) -> None:
        super().__init__(switch, name)
        self._across: Deliver = _unconnected

    def connect(self, across: Deliver) -> None:
        """Where frames leaving through this end go (the other end's ``send``, or a cable's
        direction on the way there)."""
        self._across = across

    def deliver(self, frame: Frame) -> None:
        self._across(frame)


def _unconnected(frame: Frame) -> None:
    pass


class Link:
    """A cable between two switches: a ``LinkPort`` on each, frames crossing as between two
    real switches (``cable`` may impair each direction: egress is a to b, ingress b to a). It
    carries every VLAN tagged, VLAN 1 untagged, once either switch is VLAN-aware."""

    def __init__(self, a: SwitchSide, b: SwitchSide, cable: Cable | None = None) -> None:
        if a is b:
            raise ValueError(f"a link from switch {a.name!r} to itself is a loop")
        self.a, self.b = a, b
        self.port_a = LinkPort(a, f"link:{b.name}")
        self.port_b = LinkPort(b, f"link:{a.name}")
        # what leaves switch a's link port travels to b, and the other way round
        to_b: Deliver = self.port_b.send
        to_a: Deliver = self.port_a.send
        if cable is not None:
            to_b, to_a = cable.wrap(to_b, "egress"), cable.wrap(to_a, "ingress")
        self.port_a.connect(to_b)
        self.port_b.connect(to_a)
        for sw, port in ((a, self.port_a), (b, self.port_b)):
            sw.trunk_ports.add(port.id)
            if sw.core.vlans:
                port.set_vlan(PortVlan(access=None, native=1))

    def trunk(self, allowed: frozenset[int] | None = None, native: int | None = 1) -> None:
        """Restrict the VLANs the link carries (tagged ``allowed``, untagged ``native``)."""
        for port in (self.port_a, self.port_b):
            port.set_vlan(PortVlan(access=None, allowed=allowed, native=native))

    def set_up(self, up: bool) -> None:
        self.port_a.set_up(up)
        self.port_b.set_up(up)
