"""A running lab's fabric as saved state: its switches, impaired cables and services (issue
21; the lab's snapshot puts this beside its VMs' and its clock's).

What holds state, and where a ``LabRun`` keeps it:

- ``run.switches[NAME]`` (``netfabric.switch.Switch``): the MAC table with its ages, each
  port's link state (``hv link``), counters; its capture's interfaces are checked.
- ``run.impairments[KEY]`` (``netfabric.impair.ImpairedLink``, keyed ``links[N]`` or
  ``VM.ethN``): per direction the settings as changed live (``hv netem``), the generator's
  exact state, the rate limiter's queue and bucket, the frames in flight.
- ``run.services[SWITCH]`` (``netfabric.services.ServiceHost``): DHCP bindings and lease
  ends, the names its DNS answers, the next IPv4 identification and TFTP port.

Nothing else of the fabric holds state that decides a frame's fate: links
(``run.links``), NIC ports and the services' port are wiring built from the lab file.

Restore into a lab built from the same lab file, once every port is plugged in (the VMs
made: their NICs' ports are the switches' last) and before its timeline runs. The parts
are independent (loading one sends nothing); they are loaded switches first, then cables,
then services, each checked whole before it changes.
"""

from __future__ import annotations

from typing import Any, Protocol

from hv.hw import Fields, State
from netfabric.impair import ImpairedLink
from netfabric.services import ServiceHost
from netfabric.switch import Switch

_PARTS = ("switches", "cables", "services")


class Fabric(Protocol):
    """A running lab as its fabric is found in it (``hv.lab.LabRun``)."""

    @property
    def switches(self) -> dict[str, Switch]: ...
    @property
    def impairments(self) -> dict[str, ImpairedLink]: ...
    @property
    def services(self) -> dict[str, ServiceHost]: ...


def _parts(run: Fabric) -> dict[str, dict[str, Any]]:
    return {"switches": run.switches, "cables": run.impairments, "services": run.services}


def save_fabric(run: Fabric) -> State:
    """The lab's fabric state: ``{"switches": {NAME: ...}, "cables": {KEY: ...},
    "services": {SWITCH: ...}}``."""
    return {
        part: {k: v.save_state() for k, v in objs.items()} for part, objs in _parts(run).items()
    }


def load_fabric(run: Fabric, st: Fields) -> None:
    """Take back ``save_fabric``'s into ``run`` (see the module's docstring for when); a
    ``SnapshotError`` naming the value if it is not this lab's or not sane."""
    parts = _parts(run)
    for part in _PARTS:
        saved = st.sub(part)
        names, mine = sorted(saved.keys()), sorted(parts[part])
        st.check(
            names == mine, part,
            f"the snapshot's lab has {', '.join(names) or 'none'}; this one"
            f" {', '.join(mine) or 'none'}",
        )  # fmt: skip
    for part in _PARTS:
        saved = st.sub(part)
        for name, obj in parts[part].items():
            obj.load_state(saved.sub(name))
