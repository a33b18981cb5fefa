"""Lab files: a TOML description of switches and VMs, validated into typed structures.

    [switches.lan]
    capture = "lan.pcapng"            # optional: every frame on this switch

    [vms.a]
    kernel = "linux"                  # a bundled guest, an image name or a path
    append = 'hv.run="ping -c 5 10.0.0.2"'
    mem = "256M"
    nics = [{ switch = "lan", ip = "10.0.0.1/24" }]   # mac optional: stable from the names

Every error names the key it is about (``vms.b.nics[0].switch: no switch named "lna"
(switches: lan)``) and is a ``ConfigError``. Paths are relative to the lab file. A NIC's
``ip`` reaches the guest on its command line as ``ip=``, the form both the Linux userland's
init and the firmware runtime read; ``append`` adds to the kernel's default command line,
``cmdline`` replaces it.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hv._errors import ConfigError
from hv._nic import default_mac, nic_cmdline
from hv.board import _platform as P

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)(i?B)?\s*$", re.IGNORECASE)
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$", re.IGNORECASE)

SWITCH_KEYS = {"capture"}
VM_KEYS = {"kernel", "append", "cmdline", "mem", "nics", "initrd", "quantum"}
NIC_KEYS = {"switch", "ip", "mac", "gateway", "capture"}
LAB_KEYS = {"name", "switches", "vms"}


@dataclass(frozen=True)
class SwitchSpec:
    name: str
    capture: Path | None = None


@dataclass(frozen=True)
class NicSpec:
    switch: str
    mac: bytes
    ip: ipaddress.IPv4Interface | None = None
    gateway: ipaddress.IPv4Address | None = None
    capture: Path | None = None  # this NIC's own pcapng file


@dataclass(frozen=True)
class VmSpec:
    name: str
    kernel: str  # a bundled guest, "linux", or a path (resolved against the lab's folder)
    mem: int = P.MEM_DEFAULT
    append: str = ""
    cmdline: str | None = None
    initrd: Path | None = None
    quantum: int | None = None
    nics: tuple[NicSpec, ...] = ()


@dataclass(frozen=True)
class LabSpec:
    name: str
    base: Path  # the folder paths are relative to
    switches: dict[str, SwitchSpec] = field(default_factory=dict)
    vms: dict[str, VmSpec] = field(default_factory=dict)


def _table(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table, got {type(value).__name__}")
    return value


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {type(value).__name__}")
    return value


def _unknown(keys: set[str], allowed: set[str], where: str) -> None:
    extra = sorted(keys - allowed)
    if extra:
        raise ConfigError(f"{where}.{extra[0]}: unknown key (known: {', '.join(sorted(allowed))})")


def _size(value: Any, key: str) -> int:
    text = _str(value, key) if not isinstance(value, int) else str(value)
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"{key}: {value!r} is not a size; use e.g. 128M or 1G")
    n = int(m.group(1)) << {"": 20, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]
    if not P.MEM_MIN <= n <= P.MEM_MAX:
        raise ConfigError(f"{key}: {value!r} is out of range 16M..16G")
    return n


def parse_lab(text: str, base: Path, default_name: str = "lab") -> LabSpec:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not a valid TOML file: {e}") from None
    _unknown(set(doc), LAB_KEYS, "lab")
    name = _str(doc.get("name", default_name), "name")
    switches: dict[str, SwitchSpec] = {}
    for sname, sval in _table(doc.get("switches", {}), "switches").items():
        key = f"switches.{sname}"
        if not _NAME.match(sname):
            raise ConfigError(f"{key}: switch names are lowercase letters, digits, - and _")
        t = _table(sval, key)
        _unknown(set(t), SWITCH_KEYS, key)
        cap = base / _str(t["capture"], f"{key}.capture") if "capture" in t else None
        switches[sname] = SwitchSpec(sname, cap)
    vms: dict[str, VmSpec] = {}
    raw_vms = _table(doc.get("vms", {}), "vms")
    if not raw_vms:
        raise ConfigError("vms: a lab needs at least one VM ([vms.NAME] with a kernel)")
    macs: dict[bytes, str] = {}
    for vname, vval in raw_vms.items():
        key = f"vms.{vname}"
        if not _NAME.match(vname):
            raise ConfigError(f"{key}: VM names are lowercase letters, digits, - and _")
        t = _table(vval, key)
        _unknown(set(t), VM_KEYS, key)
        if "kernel" not in t:
            raise ConfigError(f"{key}.kernel: missing (a bundled guest, linux, or a path)")
        nics = []
        raw_nics = t.get("nics", [])
        if not isinstance(raw_nics, list):
            raise ConfigError(f"{key}.nics: expected a list of tables")
        for i, nval in enumerate(raw_nics):
            nkey = f"{key}.nics[{i}]"
            n = _table(nval, nkey)
            _unknown(set(n), NIC_KEYS, nkey)
            sw = _str(n.get("switch"), f"{nkey}.switch") if "switch" in n else None
            if sw is None:
                raise ConfigError(
                    f"{nkey}.switch: missing (switches: {', '.join(switches) or 'none'})"
                )
            if sw not in switches:
                known = ", ".join(switches) or "none defined"
                raise ConfigError(f'{nkey}.switch: no switch named "{sw}" (switches: {known})')
            ip = None
            if "ip" in n:
                text = _str(n["ip"], f"{nkey}.ip")
                try:
                    ip = ipaddress.IPv4Interface(text if "/" in text else text + "/24")
                except ValueError:
                    raise ConfigError(
                        f"{nkey}.ip: {text!r} is not an IPv4 address like 10.0.0.1/24"
                    ) from None
            gateway = None
            if "gateway" in n:
                text = _str(n["gateway"], f"{nkey}.gateway")
                try:
                    gateway = ipaddress.IPv4Address(text)
                except ValueError:
                    raise ConfigError(f"{nkey}.gateway: {text!r} is not an IPv4 address") from None
                if ip is None or gateway not in ip.network:
                    raise ConfigError(f"{nkey}.gateway: {text} is not in the NIC's subnet")
            if "mac" in n:
                text = _str(n["mac"], f"{nkey}.mac")
                if not _MAC.match(text):
                    raise ConfigError(f"{nkey}.mac: {text!r} is not a MAC like 52:54:00:12:34:56")
                mac = bytes(int(x, 16) for x in text.split(":"))
                if mac[0] & 1:
                    raise ConfigError(f"{nkey}.mac: {text} is a multicast address")
            else:
                mac = default_mac(vname, i)
            if mac in macs:
                raise ConfigError(f"{nkey}.mac: {mac.hex(':')} is also {macs[mac]}'s")
            macs[mac] = nkey
            cap = base / _str(n["capture"], f"{nkey}.capture") if "capture" in n else None
            nics.append(NicSpec(sw, mac, ip, gateway, cap))
        quantum = t.get("quantum")
        if quantum is not None and not isinstance(quantum, int):
            raise ConfigError(f"{key}.quantum: expected a whole number of instructions")
        vms[vname] = VmSpec(
            name=vname,
            kernel=_str(t["kernel"], f"{key}.kernel"),
            mem=_size(t["mem"], f"{key}.mem") if "mem" in t else P.MEM_DEFAULT,
            append=_str(t.get("append", ""), f"{key}.append"),
            cmdline=_str(t["cmdline"], f"{key}.cmdline") if "cmdline" in t else None,
            initrd=base / _str(t["initrd"], f"{key}.initrd") if "initrd" in t else None,
            quantum=quantum,
            nics=tuple(nics),
        )
    return LabSpec(name=name, base=base, switches=switches, vms=vms)


def load_lab(path: Path) -> LabSpec:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read lab file {str(path)!r}: {e.strerror or e}") from None
    return parse_lab(text, path.resolve().parent, default_name=path.stem)


__all__ = [
    "LabSpec",
    "NicSpec",
    "SwitchSpec",
    "VmSpec",
    "default_mac",
    "load_lab",
    "nic_cmdline",
    "parse_lab",
]
