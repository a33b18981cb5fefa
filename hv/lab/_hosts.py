"""Labs beyond one machine: a switch's VXLAN uplink, and a lab spread over ``[hosts]``.

A switch's uplink (``[switches.lan] vxlan = { vni = 42, local = "10.9.0.1", remote =
"10.9.0.2" }``) puts a VXLAN port on it (``netfabric.ports.vxlan``): a Linux ``vxlan`` device
with that VNI, or another hv, joins the switch from another host.

A lab over several hosts names each host's VXLAN address in ``[hosts]`` (``a = "10.9.0.1"``,
or ``"10.9.0.1:4790"`` for another UDP port) and each VM's host (``host = "a"``). On each host
``hv up LAB --host NAME`` runs that host's part (``for_host``): its VMs, and every switch they
need. How the lab is split, the same on every host (each reads the same file):

- A switch runs on every host with a VM on it. Its *home* is the first of those hosts in
  ``[hosts]`` order (the first host if no VM uses it): there, and only there, run its built-in
  services (DHCP, DNS, TFTP), its TAP and its capture, so a split switch answers DHCP once.
- A ``[[links]]`` cable runs on the home of its switch ``a``; both its switches run there.
- A switch that runs on more than one host gets a VXLAN uplink on each, to the others (its
  ``vxlan`` table may add ``remote``s: a Linux box, say). Its VNI is ``vxlan.vni`` if given,
  else derived from its name (``vni_for``: SHA-256 of ``hv-vxlan:NAME``, into 1..2^24-1), so
  every host agrees without being told. Two switches whose names hash alike are refused
  (give one a ``vni``).

The instances of a switch on its hosts are joined in a full mesh, and a frame that came in
over VXLAN never goes back out of it: the halves act as one switch, and the lab's links stay a
forest (no loops). Such a lab runs on real time: the other hosts are on the wire.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hv._errors import ConfigError
from hv._values import string, table, unknown
from netfabric.ports.vxlan import VNI_MAX, VXLAN_PORT, Addr, parse_addr

if TYPE_CHECKING:
    from hv.lab._spec import LabSpec, LinkSpec, SwitchSpec

HOST_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,15}$")
VXLAN_KEYS = {"vni", "local", "remote", "port", "learning"}
EXAMPLE = '{ vni = 42, local = "10.9.0.1", remote = "10.9.0.2" }'


@dataclass(frozen=True)
class VxlanSpec:
    """A switch's VXLAN uplink: VNI ``vni`` on UDP ``local:port``, flooding to ``remotes``
    and (``learning``) to the VTEPs heard from."""

    vni: int | None  # None: in a lab over [hosts], derived from the switch's name
    local: str | None = None  # the address to bind (None: the host's, from [hosts])
    port: int = VXLAN_PORT
    remotes: tuple[Addr, ...] = ()
    learning: bool = True

    @property
    def label(self) -> str:
        far = ",".join(f"{h}:{p}" for h, p in self.remotes) or "learned"
        return f"vni {self.vni} on {self.local}:{self.port} to {far}"


def _int(value: Any, key: str, lo: int, hi: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(f"{key}: {value!r} is not {what} in {lo}..{hi}")
    return value


def parse_vxlan(value: Any, key: str, *, over_hosts: bool) -> VxlanSpec:
    """A switch's ``vxlan = {...}``. In a lab over ``[hosts]`` the address to bind is the
    host's own (``local`` and ``port`` are refused) and ``vni`` may be left out."""
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table like {EXAMPLE}")
    unknown(value, VXLAN_KEYS, key)
    if over_hosts:
        for k in ("local", "port"):
            if k in value:
                raise ConfigError(
                    f"{key}.{k}: in a lab over [hosts] each host's VXLAN address is its "
                    f"[hosts] entry; drop {k}"
                )
    elif "vni" not in value:
        raise ConfigError(f"{key}.vni: missing (the VXLAN network id, 1..{VNI_MAX})")
    elif "local" not in value:
        raise ConfigError(
            f'{key}.local: missing (this host\'s address to bind, like "10.9.0.1"; "0.0.0.0" '
            "for all of them)"
        )
    vni = _int(value["vni"], f"{key}.vni", 1, VNI_MAX, "a VNI") if "vni" in value else None
    port = _int(value.get("port", VXLAN_PORT), f"{key}.port", 1, 65535, "a UDP port")
    local = None
    if "local" in value:
        local = string(value["local"], f"{key}.local")
        try:
            ipaddress.IPv4Address(local)
        except ValueError:
            raise ConfigError(f"{key}.local: {local!r} is not an IPv4 address") from None
    raw = value.get("remote", [])
    raw = [raw] if isinstance(raw, str) else raw
    if not isinstance(raw, list):
        raise ConfigError(f'{key}.remote: expected an address or a list, like "10.9.0.2"')
    remotes = []
    for i, r in enumerate(raw):
        rkey = f"{key}.remote" if isinstance(value["remote"], str) else f"{key}.remote[{i}]"
        try:
            remotes.append(parse_addr(string(r, rkey), port))
        except ValueError as e:
            raise ConfigError(f"{rkey}: {e}") from None
    learning = value.get("learning", True)
    if not isinstance(learning, bool):
        raise ConfigError(f"{key}.learning: expected true or false")
    return VxlanSpec(vni, local, port, tuple(remotes), learning)


def parse_hosts(value: Any) -> dict[str, Addr]:
    """``[hosts]``: host name -> its VXLAN address (``"10.9.0.1"`` or ``"10.9.0.1:4790"``)."""
    t = table(value, "hosts")
    if not t:
        raise ConfigError('hosts: name at least one host, like a = "10.9.0.1"')
    out: dict[str, Addr] = {}
    for name, addr in t.items():
        key = f"hosts.{name}"
        if not HOST_NAME.match(name):
            raise ConfigError(f"{key}: host names are lowercase letters, digits, - and _")
        try:
            out[name] = parse_addr(string(addr, key))
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
        if out[name][0] == "0.0.0.0":
            raise ConfigError(f"{key}: the other hosts send to it: give its real address")
    seen: dict[Addr, str] = {}
    for name, addr in out.items():
        if addr in seen:
            raise ConfigError(f"hosts.{name}: {addr[0]}:{addr[1]} is also host {seen[addr]}'s")
        seen[addr] = name
    return out


def vni_for(switch: str) -> int:
    """The VNI a switch split over hosts gets without ``vxlan.vni``: stable, from its name."""
    digest = hashlib.sha256(f"hv-vxlan:{switch}".encode()).digest()
    return 1 + int.from_bytes(digest[:4], "big") % VNI_MAX


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


def run_command(spec: LabSpec) -> str:
    """What to run on each host of a lab over ``[hosts]`` (the error without ``--host``)."""
    what = "; ".join(
        f"on {name} ({addr}): hv up LAB --host {name}" for name, (addr, _) in spec.hosts.items()
    )
    return f"lab {spec.name} runs over hosts {', '.join(spec.hosts)}: {what}"


def for_host(spec: LabSpec, host: str, option: str = "--host") -> LabSpec:
    """The part of ``spec`` (a lab over ``[hosts]``) that host ``host`` runs: its VMs, the
    switches they need (with their VXLAN uplinks to the other hosts; services, TAP and capture
    only at a switch's home) and the links homed there. The other VMs stay known
    (``remote_vms``: the DNS names and DHCP leases of every VM), and so do all the links
    (``all_links``: what reaches what)."""
    if not spec.hosts:
        raise ConfigError(f"{option}: lab {spec.name} has no [hosts] table; drop {option}")
    if host not in spec.hosts:
        raise ConfigError(f'{option}: no host named "{host}" in [hosts] ({", ".join(spec.hosts)})')
    where = placement(spec)
    addr, port = spec.hosts[host]
    switches: dict[str, SwitchSpec] = {}
    for name, sw in spec.switches.items():
        if host not in where.runs[name]:
            continue
        if where.home[name] != host:
            sw = dataclasses.replace(
                sw, capture=None, subnet=None, dhcp=None, dns=False, tftp=None, tap=None,
                gateway=None,
            )  # fmt: skip
        if name in where.vni:
            extra = sw.vxlan.remotes if sw.vxlan is not None else ()
            others = tuple(spec.hosts[h] for h in where.runs[name] if h != host)
            learning = sw.vxlan.learning if sw.vxlan is not None else True
            sw = dataclasses.replace(
                sw, vxlan=VxlanSpec(where.vni[name], addr, port, others + extra, learning)
            )
        switches[name] = sw
    vms = {n: v for n, v in spec.vms.items() if v.host == host}
    if not vms:
        raise ConfigError(f"{option}: host {host} runs no VM of lab {spec.name}")
    links: tuple[LinkSpec, ...] = tuple(
        link for link, h in zip(spec.links, where.link_home, strict=True) if h == host
    )
    return dataclasses.replace(
        spec, switches=switches, vms=vms, links=links, host=host, all_links=spec.links,
        remote_vms={n: v for n, v in spec.vms.items() if v.host != host},
    )  # fmt: skip
