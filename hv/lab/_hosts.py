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

from hv._errors import ConfigError
from hv.lab._spec import LabSpec, LinkSpec, SwitchSpec, placement
from hv.lab._vxlan_keys import VxlanSpec


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
