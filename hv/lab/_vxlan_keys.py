"""The keys of labs beyond one machine: a switch's ``vxlan`` uplink and the lab's ``[hosts]``
(read by hv.lab._spec; how a lab is split over its hosts is hv.lab._hosts)."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from hv._errors import ConfigError
from hv._values import string, table, unknown
from netfabric.ports.vxlan import VNI_MAX, VXLAN_PORT, Addr, parse_addr

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
