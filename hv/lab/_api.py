"""Labs in code: a builder for the same structures lab files hold, and ``open_lab``.

    async with hv.open_lab(Lab().switch("lan", subnet="10.0.0.0/24", dhcp=True)
                           .vm("a", kernel="linux", nics=["lan"])) as lab:
        await lab.vms["a"].console.wait_for(b"hv:/# ")
        port = lab.switches["lan"].open_port("test")      # one more host on the wire
        port.send(frame)                                   # bytes or a scapy packet
        reply = await port.receive()

``Lab`` builds the tables a TOML file would hold, and ``parse_doc`` checks them the same
way, so a typo in code gets the same error, naming the key, as one in a file. ``open_lab``
runs the lab in a nursery of its own (``run_lab``) and stops every VM on the way out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from hv.lab._runner import LabRun, Output, run_lab
from hv.lab._spec import LabSpec, check_captures, load_lab, parse_doc


class Lab:
    """A lab built in code: ``Lab("name").switch(...).vm(...).link(...)``; keys as in lab
    files (``nics=["lan"]`` is short for ``[{"switch": "lan"}]``)."""

    def __init__(self, name: str = "lab", base: Path | str = ".") -> None:
        self.doc: dict[str, Any] = {"name": name, "switches": {}, "vms": {}}
        self.base = Path(base)

    def switch(self, name: str, **keys: Any) -> Lab:
        self.doc["switches"][name] = keys
        return self

    def vm(self, name: str, kernel: str | Path, **keys: Any) -> Lab:
        nics = [n if isinstance(n, Mapping) else {"switch": n} for n in keys.pop("nics", [])]
        table: dict[str, Any] = {"kernel": str(kernel), **keys}
        if nics:
            table["nics"] = [dict(n) for n in nics]
        self.doc["vms"][name] = table
        return self

    def link(self, a: str, b: str, **keys: Any) -> Lab:
        self.doc.setdefault("links", []).append({"a": a, "b": b, **keys})
        return self

    def spec(self) -> LabSpec:
        return parse_doc(self.doc, self.base.resolve(), str(self.doc["name"]))


def as_spec(spec: LabSpec | Lab | str | Path) -> LabSpec:
    if isinstance(spec, LabSpec):
        return spec
    if isinstance(spec, Lab):
        return spec.spec()
    return load_lab(Path(spec))


@asynccontextmanager
async def open_lab(
    spec: LabSpec | Lab | str | Path, output: Output | None = None, *, force: bool = False
) -> AsyncIterator[LabRun]:
    """Run a lab (a parsed file, a ``Lab``, or a lab file's path) for the body of the
    ``async with``: its switches, services and VMs are up when the body starts; leaving it
    stops every VM (captures flushed and closed). ``await lab.wait()`` waits for every VM
    to stop on its own and gives the lab's status. A capture overwrites an existing file
    that is not pcapng only with ``force`` (as ``hv up --force``); a ConfigError otherwise."""
    parsed = as_spec(spec)
    check_captures(parsed, force)  # a plain ConfigError here, not one from inside the nursery
    async with trio.open_nursery() as nursery:
        run: LabRun = await nursery.start(_run, parsed, output, force)
        try:
            yield run
        finally:
            nursery.cancel_scope.cancel()


async def _run(
    spec: LabSpec, output: Output | None, force: bool, *, task_status: trio.TaskStatus[LabRun]
) -> None:
    await run_lab(spec, output, force=force, task_status=task_status)
