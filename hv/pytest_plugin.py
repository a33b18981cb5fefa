"""The hvfabric pytest plugin: VMs and labs as trio fixtures, their consoles in failure reports.

Installing hvfabric registers it (the ``hvfabric`` ``pytest11`` entry point); the tests need
pytest-trio (``trio_mode = true``, or ``@pytest.mark.trio`` on each test: a test that uses
the fixtures without either fails at setup with a line saying what to add)::

    from hv import Lab

    async def test_ping(hv_lab):
        lab = await hv_lab(
            Lab("pair")
            .switch("lan")
            .vm("s", kernel="udpecho", mem="16M", nics=[{"switch": "lan", "ip": "10.0.0.2/24"}])
            .vm("p", kernel="ping", mem="16M", append="peer=10.0.0.2 count=2",
                nics=[{"switch": "lan", "ip": "10.0.0.1/24"}])
        )
        assert (await lab.vms["p"].wait()).exit_code == 0

Fixtures (each an async factory; what it starts runs in the fixture's pytest-trio nursery
and is stopped when the test ends):

- ``hv_vm``: ``vm = await hv_vm(kernel="udpecho", mem="16M", nics=[...])`` or
  ``await hv_vm(VmConfig(...))`` gives a running ``hv.Vm``. A NIC is an ``hv.Nic``, a switch
  name, or a table as in lab files (``{"switch": "lan", "ip": "10.0.0.1/24"}``); a switch
  named is started on first use (``hv_vm.switches[name]``), or before with
  ``await hv_vm.switch("lan", subnet="10.0.0.0/24", dhcp=True, dns=True)``: the keys of a
  lab file's switch table, checked the same way, services in ``hv_vm.services[name]``.
  ``clock="virtual"`` (and ``mips=``) runs a VM without NICs on virtual time, on a
  timeline of its own (docs/TIME.md); VMs on a network share their lab's: use ``hv_lab``.
- ``hv_lab``: ``lab = await hv_lab("lab.toml")`` (relative to the test file) or
  ``await hv_lab(Lab()...)`` gives a running ``LabRun`` (``.vms``, ``.switches``, ...);
  ``await hv_lab(spec, clock="virtual", seed=3)`` runs it on virtual time.

A booted guest in each test in milliseconds: ``hv_snapshot`` (session-scoped, not async)
boots a VM once per session and configuration and snapshots it when it is ready;
``hv_vm(restore=...)`` starts each test's VM from that snapshot (its RAM mapped
copy-on-write from the file: what one test writes, the next never sees)::

    @pytest.fixture(scope="session")
    def booted(hv_snapshot):
        return hv_snapshot(kernel="linux", mem="128M")  # once per session

    async def test_fresh_guest(hv_vm, booted):
        vm = await hv_vm(restore=booted)  # a running shell in about 0.1 s
        assert (await vm.exec("uname")).stdout == b"Linux\n"

- ``hv_snapshot(VmConfig)`` or ``hv_snapshot(**keys)``, the keys of ``hv_vm`` (NICs as
  switch names or tables: each switch named is a plain switch of the boot's own), and
  ``ready``: when to take the snapshot. ``"exec"`` (the default: the guest's agent answers
  ``vm.exec("true")``, hv's Linux image), console text (``bytes``, ``str``, a compiled
  ``re.Pattern[bytes]``), or an async function of the ``hv.Vm`` that returns when it is
  (it may also prepare the guest: ``vm.exec``, ``vm.copy_in``); ``timeout`` (seconds,
  default 120). The boot runs in a trio run of its own (from a test: in a thread, the test
  waiting), the snapshot goes to a session temporary folder (deleted at the end) and the
  same configuration gives the same ``SessionSnapshot`` (``path``, ``bytes``, ``boot_s``,
  ``guest_s``: the guest's clock at the snapshot; a path-like). A guest that stops, fails
  or is not ready in time is a ``SnapshotNotReady`` with its console's last lines, raised
  again for the same configuration without booting it again.
- ``hv_vm(restore=snap, name=..., nics=[...], disks=...)``: a VM started from ``snap`` (what
  ``hv_snapshot`` gave, or any snapshot file), named as the snapshotted VM unless
  ``name``; it needs as many NICs as that VM had (tables as above, on the test's switches).

Every switch they start that has no capture of its own captures into the test's
``tmp_path`` (``--hv-no-capture``, the ``hv_capture`` ini option or
``@pytest.mark.hv(capture=False)`` turn that off). When a test that used them fails, its
report gets a section "hvfabric consoles": each VM's state and the last
``--hv-console-tail`` lines (ini ``hv_console_tail``, marker ``hv(console_tail=N)``;
default 40) of its console, and the paths of the captures. Parametrize a test over lab files
the usual way (``@pytest.mark.parametrize("path", [...])``, then ``await hv_lab(path)``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import ipaddress
import itertools
import os
import re
import threading
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

if TYPE_CHECKING:
    from hv._nic import Nic
    from hv._vm import Vm, VmConfig
    from hv.lab import Lab, LabRun, LabSpec
    from netfabric.services import ServiceHost
    from netfabric.switch import Switch

DEFAULT_TAIL = 40
# How long teardown waits for the VMs to stop (each stops within a slice when asked).
STOP_TIMEOUT = 10.0
SECTION = "hvfabric consoles"
NIC_KEYS = {"switch", "ip", "mac", "gateway", "capture", "mtu", "vlan"}


# -- options -------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hvfabric", "hvfabric VMs and labs")
    group.addoption(
        "--hv-console-tail",
        type=int,
        default=None,
        metavar="N",
        help=f"console lines of each VM in a failed test's report (default {DEFAULT_TAIL})",
    )
    group.addoption(
        "--hv-no-capture",
        action="store_true",
        default=False,
        help="don't capture the fixtures' switches into the test's tmp_path",
    )
    parser.addini(
        "hv_console_tail", "console lines per VM in a failure report", default=str(DEFAULT_TAIL)
    )
    parser.addini(
        "hv_capture", "capture the fixtures' switches into tmp_path", type="bool", default=True
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "hv(capture=True, console_tail=40): hvfabric fixture settings for this test",
    )


def _marker(node: pytest.Item | pytest.Collector, key: str) -> Any:
    mark = node.get_closest_marker("hv")
    return None if mark is None else mark.kwargs.get(key)


def _tail_lines(item: pytest.Item) -> int:
    n = _marker(item, "console_tail")
    if n is None:
        n = item.config.getoption("--hv-console-tail")
    if n is None:
        n = int(str(item.config.getini("hv_console_tail")))
    return int(n)


def _capture_on(request: pytest.FixtureRequest) -> bool:
    on = _marker(request.node, "capture")
    if on is not None:
        return bool(on)
    if request.config.getoption("--hv-no-capture"):
        return False
    return bool(request.config.getini("hv_capture"))


FIXTURES = ("hv_vm", "hv_lab")
TRIO_MODE_HINT = (
    "add `trio_mode = true` to your pytest configuration ([tool.pytest.ini_options] in "
    "pyproject.toml, or [pytest] in pytest.ini), or mark the test `@pytest.mark.trio`"
)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test that uses the fixtures but that pytest-trio will not run (no ``trio_mode``, no
    marker, not ``async def``, no pytest-trio) fails here with what to change, instead of
    pytest-trio's "Trio fixtures can only be used by Trio tests" and what follows it."""
    names = getattr(item, "fixturenames", ())
    used = [name for name in FIXTURES if name in names]
    if not used:
        return
    what = f"{item.name} uses {used[0]}, a trio fixture"
    if not item.config.pluginmanager.hasplugin("trio"):
        pytest.fail(
            f"{what}, and pytest-trio is not installed: pip install 'hvfabric[pytest]'",
            pytrace=False,
        )
    if item.get_closest_marker("trio") is not None:
        return
    func = getattr(item, "obj", None)
    if func is not None and not inspect.iscoroutinefunction(func):
        pytest.fail(f"{what}: make the test `async def` and {TRIO_MODE_HINT}", pytrace=False)
    pytest.fail(f"{what}, but pytest-trio does not run this test: {TRIO_MODE_HINT}",
                pytrace=False)  # fmt: skip


# -- what a test used ----------------------------------------------------------------------


@dataclass
class _Used:
    """The VMs, switches and labs the fixtures started for one test (for its report)."""

    vms: list[Vm] = field(default_factory=list)
    switches: list[Switch] = field(default_factory=list)
    labs: list[LabRun] = field(default_factory=list)
    reported: bool = False

    def __bool__(self) -> bool:
        return bool(self.vms or self.switches or self.labs)


USED = pytest.StashKey[_Used]()


def _used(request: pytest.FixtureRequest) -> _Used:
    node: pytest.Item = request.node
    return node.stash.setdefault(USED, _Used())


class _Captures:
    """Capture files in the test's tmp_path: one name each."""

    def __init__(self, directory: Path, on: bool) -> None:
        self.directory = directory
        self.on = on  # capture by default
        self.taken: set[str] = set()

    def path(self, stem: str, force: bool = False) -> Path | None:
        if not (self.on or force):
            return None
        name = stem
        for i in itertools.count(2):
            if name not in self.taken:
                break
            name = f"{stem}-{i}"
        self.taken.add(name)
        return self.directory / f"{name}.pcapng"

    def nic(self, capture: bool | str | Path | None, stem: str) -> Path | None:
        """A NIC's ``capture`` key: True for a file in tmp_path, or a path (under tmp_path
        if relative)."""
        if capture is None or capture is False:
            return None
        if capture is True:
            return self.path(stem, force=True)
        return self.directory / capture  # an absolute path stays as it is


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception in nested groups of one (a ConfigError from a lab's nursery), or
    the group itself."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, Exception) else group


# -- hv_vm ---------------------------------------------------------------------------------


class VmFactory:
    """``await hv_vm(...)``: boots a VM in the test's nursery; see the module docstring."""

    def __init__(self, nursery: trio.Nursery, used: _Used, captures: _Captures, base: Path) -> None:
        self._nursery = nursery
        self._used = used
        self._captures = captures
        self.base = base  # relative kernel paths are relative to this (the test's folder)
        self.switches: dict[str, Switch] = {}
        self.services: dict[str, ServiceHost] = {}  # switch name -> its built-in services
        self.vms: dict[str, Vm] = {}

    async def switch(self, name: str, capture: Path | bool | None = None, **keys: Any) -> Switch:
        """The switch ``name`` (started on first use; ``capture``: a path, True or False,
        or None for the default: into the test's tmp_path unless capturing is off). The
        other keys are a lab file's switch keys, checked the same way: ``subnet``,
        ``gateway``, ``dhcp``, ``dns``, ``tftp`` (built-in services, ``services[name]``;
        the DNS server answers the names of this factory's VMs with a fixed ``ip`` there),
        ``tap``. Keys for a switch already started are a ``ValueError``."""
        from hv.lab import LabSpec, open_tap, parse_switch, services_config
        from netfabric.services import ServiceHost
        from netfabric.switch import Switch

        if name in self.switches:
            if keys:
                raise ValueError(f"hv_vm: switch {name!r} is already running; give its keys "
                                 "in the first call that names it")  # fmt: skip
            return self.switches[name]
        spec = parse_switch(name, keys, self.base)
        if isinstance(capture, Path):
            path: Path | None = capture
        else:
            path = None if capture is False else self._captures.path(name, force=bool(capture))
        switch: Switch = await self._nursery.start(Switch(name, path).run)
        self.switches[name] = switch
        self._used.switches.append(switch)
        if spec.tap is not None:
            await self._nursery.start(open_tap(switch, spec.tap).run)
        if spec.subnet is not None:
            host = ServiceHost(services_config(LabSpec(name, self.base, {name: spec}), name))
            host.attach(switch)
            self.services[name] = await self._nursery.start(host.run)
        return switch

    async def __call__(
        self,
        config: VmConfig | None = None,
        /,
        *,
        kernel: str | Path | None = None,
        name: str | None = None,
        cmdline: str | None = None,
        append: str = "",
        mem: int | str | None = None,
        nics: Sequence[Nic | str | Mapping[str, Any]] = (),
        restore: str | os.PathLike[str] | None = None,
        **more: Any,
    ) -> Vm:
        """Boot a VM: a ``VmConfig``, or ``kernel`` (a bundled guest, ``linux``, a path) with
        ``cmdline`` (replaces the kernel's default) or ``append``, ``mem`` (``"16M"`` or
        bytes), ``nics`` and any other ``VmConfig`` field. Or restore one: ``restore`` (a
        snapshot file, or what ``hv_snapshot`` gave) with ``name``, ``nics`` (as many as the
        snapshotted VM had) and ``disks``. Returns the running ``hv.Vm``."""
        from hv._errors import ConfigError
        from hv._vm import run_vm

        if config is not None and (
            kernel is not None
            or name is not None
            or nics
            or more
            or mem is not None
            or restore is not None
        ):
            raise TypeError("hv_vm takes a VmConfig or keywords, not both")
        if restore is not None:
            if kernel is not None or cmdline is not None or append or mem is not None:
                raise TypeError(
                    "hv_vm(restore=...) starts the snapshot's kernel, command line and memory: "
                    "give only name=, nics= and disks="
                )
            config = await self._restored(Path(restore), name, nics, more)
        if (config.clock if config else more.get("clock")) == "virtual" and (
            config.nics if config else nics
        ):
            # Its timeline would not wait for the switches (they run on real time): it would
            # skip ahead past every answer. A lab runs its VMs and fabric on one timeline.
            raise ConfigError(
                "hv_vm: a VM on virtual time with NICs, but the switches of hv_vm run on "
                "real time: run VMs that share a network as a lab, on its clock "
                '(await hv_lab(Lab(..., clock="virtual")...))'
            )
        if config is None:
            if kernel is None:
                raise TypeError("hv_vm needs a VmConfig or kernel=")
            config = await self._config(kernel, name, cmdline, append, mem, nics, more)
        if config.name in self.vms:
            raise ValueError(f"hv_vm: this test already has a VM named {config.name!r}")
        vm: Vm = await self._nursery.start(run_vm, config)
        self.vms[config.name] = vm
        self._used.vms.append(vm)
        return vm

    async def _restored(
        self,
        path: Path,
        name: str | None,
        nics: Sequence[Nic | str | Mapping[str, Any]],
        more: dict[str, Any],
    ) -> VmConfig:
        from hv._vm import restore

        config = restore(path, **more)  # reads the snapshot's header: its name
        name = self._free_name(config.name) if name is None else name
        return dataclasses.replace(config, name=name, nics=await self._cards(name, nics))

    async def _config(
        self,
        kernel: str | Path,
        name: str | None,
        cmdline: str | None,
        append: str,
        mem: int | str | None,
        nics: Sequence[Nic | str | Mapping[str, Any]],
        more: dict[str, Any],
    ) -> VmConfig:
        from hv._values import MIB, size
        from hv._vm import VmConfig
        from hv.build import resolve_kernel
        from hv.hw import _platform as P

        path, initrd, default = resolve_kernel(str(kernel), self.base)
        if name is None:
            name = self._free_name(Path(kernel).stem if isinstance(kernel, Path) else str(kernel))
        line = cmdline if cmdline is not None else (default or "")
        line = f"{line} {append}".strip()
        keys: dict[str, Any] = {"initrd": initrd, **more}
        if mem is not None:
            keys["mem_size"] = size(mem, "mem", bare=MIB, lo=P.MEM_MIN, hi=P.MEM_MAX)
        cards = await self._cards(name, nics)
        return VmConfig(kernel=path, cmdline=line, name=name, nics=cards, **keys)

    def _free_name(self, stem: str) -> str:
        name = stem
        for i in itertools.count(2):
            if name not in self.vms:
                break
            name = f"{stem}-{i}"
        return name

    async def _cards(
        self, name: str, nics: Sequence[Nic | str | Mapping[str, Any]]
    ) -> tuple[Nic, ...]:
        """The VM's NICs, its switches started on first use."""
        from hv._nic import Nic

        cards: list[Nic] = []
        for i, nic in enumerate(nics):
            if isinstance(nic, Nic):
                cards.append(nic)
                continue
            table: dict[str, Any] = {"switch": nic} if isinstance(nic, str) else dict(nic)
            unknown = set(table) - NIC_KEYS
            if unknown or "switch" not in table:
                raise TypeError(
                    f"hv_vm nics[{i}]: a Nic, a switch name or a table with switch= and "
                    f"{', '.join(sorted(NIC_KEYS - {'switch'}))}; got {nic!r}"
                )
            switch_name = str(table.pop("switch"))
            switch = await self.switch(switch_name)
            if "capture" in table:  # True: in tmp_path; a relative path: under tmp_path
                table["capture"] = self._captures.nic(table["capture"], f"{name}.eth{i}")
            card = Nic(switch, **table)
            cards.append(card)
            host = self.services.get(switch_name)
            if host is not None and isinstance(card.ip, ipaddress.IPv4Interface):
                host.add_name(name, card.ip.ip)  # a no-op for the DNS server if it has none
        return tuple(cards)

    async def _close(self) -> None:
        for vm in self.vms.values():
            vm.stop("the test ended")
        with trio.move_on_after(STOP_TIMEOUT):
            for vm in self.vms.values():
                await vm.wait()
        # the switches end with the fixture's nursery (their captures flushed and closed)


@pytest.fixture
async def hv_vm(
    nursery: trio.Nursery, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[VmFactory]:
    """An async factory of VMs: ``vm = await hv_vm(kernel="udpecho", mem="16M")``."""
    captures = _Captures(tmp_path, _capture_on(request))
    factory = VmFactory(nursery, _used(request), captures, request.path.parent)
    try:
        yield factory
    finally:
        await factory._close()


# -- hv_snapshot ---------------------------------------------------------------------------

# How long a session snapshot's VM may take to be ready (a Linux guest: well under a second).
READY_TIMEOUT = 120.0

Ready = str | bytes | re.Pattern[bytes] | Callable[["Vm"], Awaitable[object]]


@dataclass(frozen=True)
class SessionSnapshot:
    """A snapshot ``hv_snapshot`` took: ``hv_vm(restore=snap)`` (or ``hv.restore(snap)``, it
    is a path-like) starts a VM from it."""

    path: Path
    bytes: int  # the file's size on disk
    boot_s: float  # host seconds from creating the VM to its being ready
    guest_s: float  # the guest's clock at the snapshot: seconds since it booted

    def __fspath__(self) -> str:
        return str(self.path)


class SnapshotFactory:
    """``hv_snapshot(...)``: a VM booted once per session and configuration, snapshotted when
    ready; see the module docstring."""

    def __init__(self, directory: Path, base: Path) -> None:
        self.directory = directory
        self.base = base  # relative kernel paths are relative to this (the rootdir)
        self.snapshots: dict[str, SessionSnapshot] = {}
        self._failed: dict[str, BaseException] = {}

    def __call__(
        self,
        config: VmConfig | None = None,
        /,
        *,
        ready: Ready = "exec",
        timeout: float = READY_TIMEOUT,
        **keys: Any,
    ) -> SessionSnapshot:
        """The snapshot of a VM as ``hv_vm(config)`` or ``hv_vm(**keys)`` boots it, taken
        when it is ``ready``: ``"exec"`` (its agent answers ``vm.exec("true")``: hv's Linux
        image), console text (``bytes``, ``str`` or a compiled ``re.Pattern[bytes]``), or
        an async function of the ``hv.Vm`` (it may also prepare the guest). Booted on the
        first call for that configuration, in a run of its own (this call blocks meanwhile);
        the same configuration later gives the same snapshot."""
        if config is not None and keys:
            raise TypeError("hv_snapshot takes a VmConfig or keywords, not both")
        if config is not None and config.nics:
            raise TypeError(
                "hv_snapshot: give NICs as switch names or tables (nics=[...]), "
                "not hv.Nic objects of switches already running"
            )
        key = hashlib.sha256(repr((config, sorted(keys.items()), _ready_key(ready))).encode())
        name = key.hexdigest()[:16]
        if name in self._failed:
            raise self._failed[name]
        if name not in self.snapshots:
            path = self.directory / f"{name}.hvsnap"
            try:
                self.snapshots[name] = _run_apart(
                    functools.partial(self._boot, path, config, keys, ready, timeout)
                )
            except BaseException as e:
                self._failed[name] = e
                raise
        return self.snapshots[name]

    async def _boot(
        self,
        path: Path,
        config: VmConfig | None,
        keys: dict[str, Any],
        ready: Ready,
        timeout: float,
    ) -> SessionSnapshot:
        try:
            async with trio.open_nursery() as nursery:
                factory = VmFactory(nursery, _Used(), _Captures(self.directory, False), self.base)
                try:
                    t0 = time.perf_counter()
                    vm = await factory(config, **keys)
                    await _until_ready(vm, ready, timeout)
                    boot_s = time.perf_counter() - t0
                    info = await vm.snapshot(path, durable=False)
                    clock = vm.machine.clock
                    guest_s = clock.ticks() / clock.hz  # just after: held while it was written
                finally:
                    await factory._close()
                    nursery.cancel_scope.cancel()  # the switches its NICs were on
        except BaseExceptionGroup as group:
            raise _single(group) from None
        return SessionSnapshot(path, info.bytes, boot_s, guest_s)

    def _close(self) -> None:
        for snap in self.snapshots.values():
            snap.path.unlink(missing_ok=True)  # (a guest's RAM each: tmp_path keeps 3 runs)


def _ready_key(ready: Ready) -> object:
    """What identifies ``ready`` in the cache key: a function by where it is defined."""
    if callable(ready) and not isinstance(ready, re.Pattern):
        code = getattr(ready, "__code__", None)
        where = (code.co_filename, code.co_firstlineno) if code is not None else id(ready)
        return (getattr(ready, "__module__", None), getattr(ready, "__qualname__", None), where)
    return ready


async def _until_ready(vm: Vm, ready: Ready, timeout: float) -> None:
    async def check() -> None:
        if ready == "exec":
            await vm.exec("true", check=True)
        elif isinstance(ready, str | bytes | re.Pattern):
            await vm.console.wait_for(ready)
        else:
            await ready(vm)

    if ready == "exec":
        what = "its agent did not answer exec"
    elif isinstance(ready, str | bytes | re.Pattern):
        what = f"its console never showed {ready!r}"
    else:
        what = f"ready={getattr(ready, '__qualname__', ready)!s} did not return"
    try:
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:

                async def stopped() -> None:
                    await vm.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(stopped)
                await check()
                nursery.cancel_scope.cancel()
    except Exception as e:
        err = _single(e) if isinstance(e, BaseExceptionGroup) else e
        if isinstance(err, trio.TooSlowError):
            when = f"not after {timeout:g} s"
        elif vm.exit is not None:
            when = f"it stopped: {_state(vm)}"
        else:
            when = f"{type(err).__name__}: {err}"
        raise SnapshotNotReady(vm.name, what, when, _tail(vm, DEFAULT_TAIL)[0]) from None
    if vm.exit is not None:
        raise SnapshotNotReady(
            vm.name, what, f"it stopped: {_state(vm)}", _tail(vm, DEFAULT_TAIL)[0]
        )


class SnapshotNotReady(Exception):
    """``hv_snapshot``'s VM was not ready: it stopped, failed or took too long."""

    def __init__(self, name: str, what: str, when: str, tail: list[str]) -> None:
        lines = "\n".join(f"  | {line}" for line in tail)
        super().__init__(f"hv_snapshot: VM {name} was never ready, {what}: {when}\n{lines}")


def _run_apart(fn: Callable[[], Awaitable[SessionSnapshot]]) -> SessionSnapshot:
    """``trio.run(fn)``, in a thread of its own when this thread is in a trio run already
    (called from a test: the test waits for it)."""
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return trio.run(fn)
    out: list[SessionSnapshot] = []
    err: list[BaseException] = []

    def thread() -> None:
        try:
            out.append(trio.run(fn))
        except BaseException as e:
            err.append(e)

    t = threading.Thread(target=thread, name="hv_snapshot")
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]


@pytest.fixture(scope="session")
def hv_snapshot(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[SnapshotFactory]:
    """Snapshots of booted VMs, once per session each: ``snap = hv_snapshot(kernel="linux")``,
    then ``await hv_vm(restore=snap)`` in each test."""
    factory = SnapshotFactory(tmp_path_factory.mktemp("hv-snapshots"), pytestconfig.rootpath)
    try:
        yield factory
    finally:
        factory._close()


# -- hv_lab --------------------------------------------------------------------------------


class LabFactory:
    """``await hv_lab(spec)``: runs a lab in the test's nursery; see the module docstring."""

    def __init__(self, nursery: trio.Nursery, used: _Used, captures: _Captures, base: Path) -> None:
        self._nursery = nursery
        self._used = used
        self._captures = captures
        self.base = base  # a relative lab file is relative to this (the test's folder)
        self.labs: list[LabRun] = []
        self._scopes: list[trio.CancelScope] = []

    def spec(
        self,
        spec: Lab | LabSpec | str | Path,
        clock: str | None = None,
        seed: int | None = None,
        mips: int | None = None,
    ) -> LabSpec:
        """The parsed lab, with a capture in tmp_path for each switch without one (and
        ``clock``, ``seed``, ``mips`` in place of its own, as ``hv.open_lab`` takes them)."""
        from hv.lab import as_spec, with_clock

        if isinstance(spec, str | Path) and not Path(spec).is_absolute():
            spec = self.base / spec
        parsed = with_clock(as_spec(spec, clock=clock), clock, seed, mips)
        switches = {
            name: s
            if s.capture is not None
            else dataclasses.replace(s, capture=self._captures.path(f"{parsed.name}-{name}"))
            for name, s in parsed.switches.items()
        }
        return dataclasses.replace(parsed, switches=switches)

    async def __call__(
        self,
        spec: Lab | LabSpec | str | Path,
        *,
        clock: str | None = None,
        seed: int | None = None,
        mips: int | None = None,
    ) -> LabRun:
        """Start the lab (a ``Lab``, a parsed spec, or a lab file's path): its switches,
        services and VMs are up when this returns the ``LabRun``. ``clock`` ("real" or
        "virtual"), ``seed`` and ``mips`` replace the lab's own, as for ``hv.open_lab``."""
        try:
            parsed = self.spec(spec, clock, seed, mips)
            run: LabRun = await self._nursery.start(self._run, parsed)
        except BaseExceptionGroup as group:  # the lab's nursery: raise what went wrong
            raise _single(group) from None
        self.labs.append(run)
        self._used.labs.append(run)
        return run

    async def _run(self, spec: LabSpec, *, task_status: trio.TaskStatus[LabRun]) -> None:
        from hv.lab import run_lab

        with trio.CancelScope() as scope:
            self._scopes.append(scope)
            await run_lab(spec, task_status=task_status)

    async def _close(self) -> None:
        for run in self.labs:
            run.stop("the test ended")
        with trio.move_on_after(STOP_TIMEOUT):
            for run in self.labs:
                if run.vms:
                    await run.ended.wait()
        for scope in self._scopes:
            scope.cancel()


@pytest.fixture
async def hv_lab(
    nursery: trio.Nursery, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[LabFactory]:
    """An async factory of labs: ``lab = await hv_lab("lab.toml")`` or ``hv_lab(Lab()...)``."""
    captures = _Captures(tmp_path, _capture_on(request))
    factory = LabFactory(nursery, _used(request), captures, request.path.parent)
    try:
        yield factory
    finally:
        await factory._close()


# -- the failure report --------------------------------------------------------------------


def _state(vm: Vm) -> str:
    if vm.exit is None:
        return vm.state.value
    e = vm.exit
    return f"{e.kind.value} (exit {e.exit_code}): {e.reason}"


def _tail(vm: Vm, lines: int) -> tuple[list[str], int]:
    text = vm.console.transcript.decode(errors="replace").replace("\r", "")
    all_lines = text.splitlines()
    return (all_lines[-lines:] if lines > 0 else []), len(all_lines)


def describe(used: _Used, lines: int) -> str:
    """The report section: each VM's state and console tail, then the captures."""
    vms: list[tuple[str, Vm]] = [(vm.name, vm) for vm in used.vms]
    switches: list[tuple[str, Switch]] = [(sw.name, sw) for sw in used.switches]
    for run in used.labs:
        where = f" [lab {run.spec.name}]"
        vms += [(name + where, vm) for name, vm in run.vms.items()]
        switches += [(name + where, sw) for name, sw in run.switches.items()]
    out: list[str] = []
    for label, vm in vms:
        tail, total = _tail(vm, lines)
        shown = f"last {len(tail)} of {total} lines" if len(tail) < total else f"{total} lines"
        out.append(f"vm {label}: {_state(vm)}; console, {shown}:")
        out += [f"  | {line}" for line in tail]
    captures = [(f"switch {label}", sw.capture_path) for label, sw in switches]
    for _, vm in vms:
        captures += [(f"nic {vm.name}.eth{i}", nic.capture) for i, nic in enumerate(vm.config.nics)]
    taken = [(what, path) for what, path in captures if path is not None]
    out.append("captures:" if taken else "captures: none")
    out += [f"  {what}: {path}" for what, path in taken]
    return "\n".join(out) + "\n"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    used = item.stash.get(USED, None)
    if report.failed and used and not used.reported:
        used.reported = True
        report.sections.append((SECTION, describe(used, _tail_lines(item))))
    return report


__all__ = [
    "LabFactory",
    "SessionSnapshot",
    "SnapshotFactory",
    "SnapshotNotReady",
    "VmFactory",
    "describe",
    "hv_lab",
    "hv_snapshot",
    "hv_vm",
]
