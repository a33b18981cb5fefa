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

Virtual time (docs/TIME.md): ``Lab("x", clock="virtual", seed=3)`` as a file's ``clock``,
``seed`` and ``mips`` keys, or ``open_lab(spec, clock="virtual", seed=3)`` over what the
lab says (as ``hv up --clock virtual --seed 3``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from hv._errors import ConfigError
from hv.lab._runner import LabRun, Output, run_lab
from hv.lab._snapshot import LabRestore
from hv.lab._spec import LabSpec, check_captures, load_lab, parse_doc, with_clock


class Lab:
    """A lab built in code: ``Lab("name").switch(...).vm(...).link(...)``; keys as in lab
    files (``nics=["lan"]`` is short for ``[{"switch": "lan"}]``), the lab's own ``clock``,
    ``seed`` and ``mips`` too (``Lab("name", clock="virtual", seed=3)``)."""

    def __init__(
        self,
        name: str = "lab",
        base: Path | str = ".",
        *,
        clock: str | None = None,
        seed: int | None = None,
        mips: int | None = None,
    ) -> None:
        self.doc: dict[str, Any] = {"name": name, "switches": {}, "vms": {}}
        for key, value in (("clock", clock), ("seed", seed), ("mips", mips)):
            if value is not None:
                self.doc[key] = value
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

    def spec(self, *, clock: str | None = None) -> LabSpec:
        """The parsed lab (``clock``: in place of its own, as ``hv up --clock``)."""
        return parse_doc(self.doc, self.base.resolve(), str(self.doc["name"]), clock=clock)


def as_spec(spec: LabSpec | Lab | str | Path, *, clock: str | None = None) -> LabSpec:
    """The parsed lab; ``clock`` in place of the lab's own (a TAP lab whose file says
    "virtual" is taken with "real")."""
    if isinstance(spec, LabSpec):
        return with_clock(spec, clock)
    if isinstance(spec, Lab):
        return spec.spec(clock=clock)
    return load_lab(Path(spec), clock=clock)


@asynccontextmanager
async def open_lab(
    spec: LabSpec | Lab | str | Path | None,
    output: Output | None = None,
    *,
    force: bool = False,
    clock: str | None = None,
    seed: int | None = None,
    mips: int | None = None,
    jobs: int | None = None,
    restore: str | Path | None = None,
) -> AsyncIterator[LabRun]:
    """Run a lab (a parsed file, a ``Lab``, or a lab file's path) for the body of the
    ``async with``: its switches, services and VMs are up when the body starts; leaving it
    stops every VM (captures flushed and closed). ``await lab.wait()`` waits for every VM
    to stop on its own and gives the lab's status. A capture overwrites an existing file
    that is not pcapng only with ``force`` (as ``hv up --force``); a ConfigError otherwise.

    ``clock`` ("real" or "virtual"), ``seed`` and ``mips`` replace the lab's own keys, as
    ``hv up --clock --seed --mips`` do (docs/TIME.md); a ConfigError for a lab with a TAP on
    virtual time, or ``mips`` on real time. ``lab.timeline.stats()`` then gives the virtual
    time, the wall time and their ratio. ``jobs`` is how many host threads run the VMs of a
    virtual-time lab (default: every core; the run is the same for any number).

    ``restore``: a lab snapshot's folder (``LabRun.snapshot``): the lab goes on from there,
    with the tables, clock, seed and rate it was taken with (``spec`` is then None)."""
    saved: LabRestore | None = None
    if restore is not None:
        if spec is not None:
            raise ConfigError("open_lab: give a lab or restore=FOLDER, not both")
        saved = LabRestore(restore)
        parsed = saved.spec(jobs=jobs)
    elif spec is None:
        raise ConfigError("open_lab: give a lab (or restore=FOLDER)")
    else:
        parsed = with_clock(as_spec(spec, clock=clock), clock, seed, mips, jobs=jobs)
    check_captures(parsed, force)  # a plain ConfigError here, not one from inside the nursery
    async with trio.open_nursery() as nursery:
        run: LabRun = await nursery.start(_run, parsed, output, force, saved)
        try:
            yield run
        finally:
            nursery.cancel_scope.cancel()


async def _run(
    spec: LabSpec,
    output: Output | None,
    force: bool,
    restore: LabRestore | None,
    *,
    task_status: trio.TaskStatus[LabRun],
) -> None:
    await run_lab(spec, output, force=force, restore=restore, task_status=task_status)
