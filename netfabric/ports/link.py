"""A cable between two switches, and the loop check a lab's links pass."""

from __future__ import annotations

from collections.abc import Callable

from netfabric.switch import Deliver, PortVlan, Switch


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


class Link:
    """A cable between two switches: a port on each, frames crossing as between two real
    switches (``wrap_ab``/``wrap_ba`` may put an impairment on each direction). It carries
    every VLAN tagged, VLAN 1 untagged, once either switch is VLAN-aware."""

    def __init__(
        self,
        a: Switch,
        b: Switch,
        wrap_ab: Callable[[Deliver], Deliver] | None = None,
        wrap_ba: Callable[[Deliver], Deliver] | None = None,
    ) -> None:
        if a is b:
            raise ValueError(f"a link from switch {a.name!r} to itself is a loop")
        self.a, self.b = a, b
        to_b: Deliver = lambda f, off: self.port_b.send(f, off)  # noqa: E731
        to_a: Deliver = lambda f, off: self.port_a.send(f, off)  # noqa: E731
        # what leaves switch a's link port travels to b, and the other way round
        self.port_a = a.attach(f"link:{b.name}", wrap_ab(to_b) if wrap_ab else to_b)
        self.port_b = b.attach(f"link:{a.name}", wrap_ba(to_a) if wrap_ba else to_a)
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
