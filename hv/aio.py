"""hvfabric from asyncio: hv's trio loop in a thread of its own, behind awaitable facades.

    import asyncio, hv.aio
    from hv import Lab

    async def main() -> None:
        spec = Lab("pair").switch("lan").vm(
            "s", kernel="udpecho", mem="16M", nics=[{"switch": "lan", "ip": "10.0.0.2/24"}])
        async with hv.aio.open_lab(spec) as lab:
            await lab.vms["s"].console.wait_for(b"udpecho: echoing")
            port = lab.switches["lan"].open_port("me")
            await port.send(frame)                 # bytes or a scapy packet
            reply = await port.receive()
            await lab.stop()

    asyncio.run(main())

``open_lab`` and ``open_vm`` mirror ``hv.open_lab`` and ``hv.open_vm``; every call on the
facades (``Vm``, ``Console``, ``Switch``, ``HostPort``, ``LabRun``) runs in the trio thread
and is awaited from asyncio. An exception there is raised here (a trio exception group of
one exception is raised as that exception: ``except ConfigError`` works). Cancelling an
asyncio task that awaits a call cancels the call in trio (a ``wait_for`` or ``receive``
given up on leaves nothing behind); leaving the ``async with`` (normally, by an exception
or by cancellation) stops the VMs and ends the thread, and a second cancellation while that
happens leaves the trio side to finish on its own. Anything else of the trio API runs in
the trio thread through ``await lab.run(async_fn, *args)`` or ``await lab.run_sync(fn,
*args)``, which call ``fn(trio_lab, *args)``. Where a facade differs from its trio object
(awaited where trio's call is plain, or absent), ``TRIO_DIFFERENCES`` lists it and the
method's docstring says so.

Why a thread (``mode="thread"``, the default) rather than trio's guest mode
(``mode="guest"``: ``trio.lowlevel.start_guest_run`` runs trio on asyncio's loop, in one
thread)? Both were built and measured (``bench/aio.py``; figures in docs/EMBEDDING.md). A
call costs two hand-offs either way, a callback into trio and one back. Across threads a
hand-off is a wake-up: a byte on a socket and a thread switch. Guest mode is no cheaper,
because an idle guest run waits for I/O in a helper thread of its own. It measured 1.7-2.6x
slower per plain call, and about the same per frame. What decides it is what the
application's own loop sees. A VM runs its guest in slices of about a millisecond, and a
slice holds whichever thread runs trio. In guest mode that is asyncio's thread, so the
application's callbacks wait behind every slice of every VM. Beside a guest computing flat
out, an ``asyncio.sleep(0.001)`` woke 2.3 ms late (median) in guest mode and 0.1 ms late
with the thread. In a thread of its own the guest code runs with the GIL released
(Unicorn's ``emu_start``), so asyncio's loop stays responsive.

The price of the thread: calls cross threads, so trio objects must not be used directly
from asyncio. The facades' plain attributes (``transcript``, ``exit``, ``state``) are
read-only snapshots. Guest mode also ties trio to the loop's thread and shares its SIGINT
handling; a thread of its own has neither constraint.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import os
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import trio

from hv._errors import HvError
from hv._exec import ExecResult
from hv._status import StopInfo
from netfabric.ports import PortCounters

if TYPE_CHECKING:
    import re

    from hv._console import Console as TrioConsole
    from hv._vm import Vm as TrioVm
    from hv._vm import VmConfig, VmState
    from hv.lab import Lab, LabSpec, Output
    from hv.lab import LabRun as TrioLabRun
    from netfabric.ports import PortVlan
    from netfabric.ports.host import HostPort as TrioHostPort
    from netfabric.switch import Switch as TrioSwitch

T = TypeVar("T")
Mode = Literal["thread", "guest"]

# (value, None) or (None, exception): what a call into trio gives back.
_Result = tuple[Any, BaseException | None]


class BridgeClosed(HvError):
    """The lab (or VM) behind the facade has been closed: the call cannot run."""


# How each facade differs from the trio object it stands for. Every public name of the trio
# object is on its facade, called the same way, unless it is listed here (tests/test_aio.py
# checks it, and that each "awaited" difference is in the method's docstring). The rule
# behind them: what reads or changes state that lives in the trio thread is a call into that
# thread, so it is awaited here even where trio's is a plain call; plain attributes here are
# snapshots. What is "not here" is reached in the trio thread with ``LabRun.run_sync``.
_INTERNAL = "not here: part of the machinery, for the trio thread (LabRun.run_sync)"
TRIO_DIFFERENCES: dict[str, str] = {
    "Vm.stats": "awaited: a method here, a property in trio",
    "Vm.stop": "awaited: returns once the VM has been told, in the trio thread",
    "Vm.pause": "awaited: returns once the VM is paused, in the trio thread",
    "Vm.resume": "awaited: returns once the VM runs again, in the trio thread",
    "Vm.run": "not here: open_vm and open_lab run the VM",
    "Vm.open_exec": "not here: a stream across threads; exec() gives the whole result",
    "Vm.vsock": _INTERNAL,
    "Vm.machine": _INTERNAL,
    "Vm.log": _INTERNAL,
    "Console.on_drained": _INTERNAL,
    "Console.streaming": _INTERNAL,
    "Console.matchers": _INTERNAL,
    "Switch.mac_table": "awaited: the table is read in the trio thread",
    "Switch.start_capture": "awaited: the file is opened in the trio thread",
    "Switch.stop_capture": "awaited: the file is closed in the trio thread",
    "Switch.add_listener": _INTERNAL,
    "Switch.bind_ip": _INTERNAL,
    "Switch.plug": _INTERNAL,
    "Switch.set_vlan": _INTERNAL,
    "Switch.remove_listener": _INTERNAL,
    "Switch.attach": _INTERNAL,
    "Switch.send": _INTERNAL,
    "Switch.run": _INTERNAL,
    "Switch.close": _INTERNAL,
    "Switch.core": _INTERNAL,
    "Switch.save_state": _INTERNAL,
    "Switch.load_state": _INTERNAL,
    "Switch.ports": _INTERNAL,
    "Switch.trunk_ports": _INTERNAL,
    "Switch.capture": _INTERNAL,
    "HostPort.send": "awaited: flow control across the threads (see HostPort)",
    "HostPort.port": _INTERNAL,
    "HostPort.add_listener": _INTERNAL,
    "HostPort.capture": _INTERNAL,
    "HostPort.close": _INTERNAL,
    "HostPort.deliver": _INTERNAL,
    "HostPort.flush": _INTERNAL,
    "HostPort.id": _INTERNAL,
    "HostPort.listeners": _INTERNAL,
    "HostPort.remove_listener": _INTERNAL,
    "HostPort.set_up": _INTERNAL,
    "HostPort.set_vlan": _INTERNAL,
    "HostPort.switch": _INTERNAL,
    "HostPort.up": _INTERNAL,
    "LabRun.stop": "awaited: returns once every VM has been told, in the trio thread",
    "LabRun.links": _INTERNAL,
    "LabRun.taps": _INTERNAL,
    "LabRun.services": _INTERNAL,
    "LabRun.disks": _INTERNAL,
    "LabRun.impairments": _INTERNAL,
    "LabRun.timeline": _INTERNAL,
    "LabRun.cores": _INTERNAL,
    "LabRun.vxlan": _INTERNAL,
    "LabRun.endpoints": _INTERNAL,
    "LabRun.shards": _INTERNAL,
    "LabRun.ended": "not here: await wait()",
    "LabRun.told": _INTERNAL,
    "LabRun.clones_told": "not here: LabRun.run(lambda run: run.clones_told.wait())",
    "LabRun.set_link": "awaited: the change is made in the trio thread",
    "LabRun.link_state": "awaited: the counters are read in the trio thread",
    "LabRun.link_states": "awaited: the counters are read in the trio thread",
}


def _collapse(exc: BaseException) -> BaseException:
    """A trio exception group holding one exception, as that exception."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _raise(result: _Result) -> Any:
    value, exc = result
    if exc is not None:
        raise _collapse(exc)
    return value


class _Call:
    """One call into trio: its cancel scope, once trio has started it."""

    __slots__ = ("cancelled", "scope")

    def __init__(self) -> None:
        self.scope: trio.CancelScope | None = None
        self.cancelled = False

    def cancel(self) -> None:  # in the trio thread
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


class Portal:
    """A trio run (in a thread, or as asyncio's guest) hosting one async context manager
    (``hv.open_lab(...)``), and the calls asyncio makes into it."""

    def __init__(self, mode: Mode = "thread") -> None:
        if mode not in ("thread", "guest"):
            raise ValueError(f"mode must be 'thread' or 'guest', not {mode!r}")
        self.mode: Mode = mode
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._calls: trio.Nursery | None = None  # where calls run, in the trio thread
        self._closing: trio.Event | None = None
        self._ready: asyncio.Future[_Result] | None = None
        self._done: asyncio.Future[_Result] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._closers: list[Callable[[], None]] = []  # run here once trio has ended
        self.pending = 0  # calls started in trio and not finished there (for tests)

    # -- lifetime ----------------------------------------------------------------------

    async def open(self, cm: Callable[[], AbstractAsyncContextManager[T]]) -> T:
        """Start trio and enter ``cm()`` there; its value (a trio object) once entered."""
        loop = self._loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._done = loop.create_future()
        if self.mode == "thread":
            self._thread = threading.Thread(
                target=self._thread_main, args=(cm,), name="hv-trio", daemon=True
            )
            self._thread.start()
        else:
            trio.lowlevel.start_guest_run(
                self._trio_main,
                cm,
                run_sync_soon_threadsafe=loop.call_soon_threadsafe,
                run_sync_soon_not_threadsafe=loop.call_soon,
                done_callback=lambda out: self._finished(_from_outcome(out)),
                host_uses_signal_set_wakeup_fd=True,
            )
        try:
            value: T = _raise(await asyncio.shield(self._ready))
        except asyncio.CancelledError:
            self._abandon()
            raise
        except BaseException:  # trio ended before cm was entered: the same error
            with contextlib.suppress(Exception):
                await self._wait_done()
            raise
        return value

    def _thread_main(self, cm: Callable[[], AbstractAsyncContextManager[Any]]) -> None:
        try:
            result: _Result = (trio.run(self._trio_main, cm), None)
        except BaseException as e:  # delivered to asyncio, which raises it
            result = (None, e)
        self._finished(result)

    async def _trio_main(self, cm: Callable[[], AbstractAsyncContextManager[Any]]) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._closing = trio.Event()
        async with cm() as value, trio.open_nursery() as calls:
            self._calls = calls
            self._resolve(self._ready, (value, None))
            try:
                await self._closing.wait()
            finally:  # closing, or what cm runs failed: the calls still running end
                self._calls = None
                calls.cancel_scope.cancel()

    def _finished(self, result: _Result) -> None:
        """The trio run has ended (from its thread, or as a guest's done callback)."""

        def done() -> None:
            assert self._ready is not None and self._done is not None
            if not self._ready.done():
                err = result[1] or BridgeClosed("trio ended before the lab started")
                self._ready.set_result((None, err))
            if not self._done.done():
                self._done.set_result(result)
            for close in self._closers:
                close()

        self._soon(done)

    async def aclose(self) -> None:
        """Leave the context manager in trio (stopping what it runs) and end the run; an
        exception the run ended with is raised here."""
        if not self._closed:
            self._closed = True
            self._post(self._set_closing)
        await self._wait_done()

    def _set_closing(self) -> None:
        if self._closing is not None:
            self._closing.set()

    def _abandon(self) -> None:
        """Cancelled while opening: tell trio to close once it is up, don't wait for it."""
        self._closed = True
        assert self._ready is not None
        self._ready.add_done_callback(lambda _: self._post(self._set_closing))

    async def _wait_done(self) -> None:
        assert self._done is not None
        result = await asyncio.shield(self._done)  # cancelled: trio goes on closing alone
        if self._thread is not None:
            self._thread.join(timeout=5)
        _raise(result)

    # -- crossing ----------------------------------------------------------------------

    def _soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in asyncio's loop (from either side)."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            if self.mode == "guest":
                self._loop.call_soon(fn)
            else:
                self._loop.call_soon_threadsafe(fn)

    def _resolve(self, fut: asyncio.Future[_Result] | None, result: _Result) -> None:
        def set_result() -> None:
            if fut is not None and not fut.done():
                fut.set_result(result)

        self._soon(set_result)

    def _post(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` in the trio thread, soon; False if trio has ended (trio runs every
        callback it accepted before it ends)."""
        if self._token is None:
            return False
        try:
            self._token.run_sync_soon(fn)
        except trio.RunFinishedError:
            return False
        return True

    def _check(self) -> None:
        if self._closed or self._token is None:
            raise BridgeClosed("the lab has been closed")
        if self._done is not None and self._done.done():
            error = self._done.result()[1]
            if error is None:
                raise BridgeClosed("the lab has ended")
            raise BridgeClosed(f"the lab ended with {_collapse(error)!r}") from error

    def _future(self) -> asyncio.Future[_Result]:
        self._check()
        assert self._loop is not None
        return self._loop.create_future()

    def _send(self, fn: Callable[[], None]) -> None:
        if not self._post(fn):
            raise BridgeClosed("the lab has ended")

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` in the trio thread; its result here. Cancelling the caller
        cancels it there."""
        fut = self._future()
        call = _Call()

        async def serve() -> None:
            result: _Result = (None, BridgeClosed("the lab was closed during the call"))
            self.pending += 1
            try:
                with trio.CancelScope() as call.scope:
                    if call.cancelled:
                        call.scope.cancel()
                    try:
                        result = (await fn(*args), None)
                    except Exception as e:
                        result = (None, e)
            finally:
                self.pending -= 1
                self._resolve(fut, result)

        def start() -> None:
            try:
                if self._calls is None:
                    raise RuntimeError("no nursery")
                self._calls.start_soon(serve)
            except RuntimeError:  # closing (the nursery is closed to new arrivals)
                self._resolve(fut, (None, BridgeClosed("the lab has been closed")))

        self._send(start)
        try:
            value: T = _raise(await fut)
        except asyncio.CancelledError:
            self._post(call.cancel)
            raise
        return value

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the trio thread (it must not block); its result here."""
        fut = self._future()

        def call() -> None:
            try:
                result: _Result = (fn(*args), None)
            except Exception as e:
                result = (None, e)
            self._resolve(fut, result)

        self._send(call)
        value: T = _raise(await fut)
        return value


def _from_outcome(out: Any) -> _Result:
    try:
        return (out.unwrap(), None)
    except BaseException as e:
        return (None, e)


# -- the facades ---------------------------------------------------------------------------


class Console:
    """A VM's console from asyncio: as ``hv.Console``, each call awaited across."""

    def __init__(self, portal: Portal, console: TrioConsole) -> None:
        self._portal = portal
        self._console = console

    async def wait_for(self, pattern: bytes | str | re.Pattern[bytes]) -> bytes:
        """Output up to and including ``pattern`` (after the previous match); EOFError if
        the VM stops first. Use ``asyncio.timeout`` for a timeout."""
        return await self._portal.run(self._console.wait_for, pattern)

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        """The next output bytes, in order; b"" once the VM has stopped and all is read."""
        return await self._portal.run(self._console.receive_some, max_bytes)

    async def send_all(self, data: bytes | str) -> None:
        """Type ``data`` at the guest's console."""
        await self._portal.run(self._console.send_all, data)

    @property
    def transcript(self) -> bytes:
        """The output kept so far (a snapshot)."""
        return self._console.transcript

    @property
    def closed(self) -> bool:
        return self._console.closed

    @property
    def backlog(self) -> int:
        """Bytes a streaming reader has not read yet (a snapshot)."""
        return self._console.backlog

    @property
    def dropped(self) -> int:
        """Output bytes dropped because nobody read them (a snapshot)."""
        return self._console.dropped


class Vm:
    """A running VM from asyncio: ``console``, ``await stop()``, ``await wait()``."""

    def __init__(self, portal: Portal, vm: TrioVm) -> None:
        self._portal = portal
        self.trio_vm = vm  # the trio object: use it only in the trio thread (LabRun.run)
        self.name = vm.name
        self.config = vm.config
        self.console = Console(portal, vm.console)

    @property
    def state(self) -> VmState:
        return self.trio_vm.state

    @property
    def exit(self) -> StopInfo | None:
        """Why the VM stopped, once it has."""
        return self.trio_vm.exit

    async def stats(self) -> dict[str, int]:
        """The VM's counters (``hv.Vm.stats``). Differs from trio: a method, awaited
        (``hv.Vm.stats`` is a property)."""
        return await self._portal.run_sync(lambda: self.trio_vm.stats)

    async def stop(self, reason: str = "stopped by the host") -> None:
        """Ask the VM to stop (``await wait()`` for the end). Differs from trio: awaited
        (it runs in the trio thread)."""
        await self._portal.run_sync(self.trio_vm.stop, reason)

    async def pause(self) -> None:
        """Pause the VM. Differs from trio: awaited (it runs in the trio thread)."""
        await self._portal.run_sync(self.trio_vm.pause)

    async def resume(self) -> None:
        """Resume a paused VM. Differs from trio: awaited (it runs in the trio thread)."""
        await self._portal.run_sync(self.trio_vm.resume)

    async def wait(self) -> StopInfo:
        """Wait until the VM stops; why it did."""
        return await self._portal.run(self.trio_vm.wait)

    async def exec(
        self,
        *argv: str | bytes,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        check: bool = False,
    ) -> ExecResult:
        """Run ``argv`` in the guest through its agent (``hv.Vm.exec``): its exit code,
        stdout and stderr."""
        return await self._portal.run(
            functools.partial(
                self.trio_vm.exec, stdin=stdin, env=env, cwd=cwd, timeout=timeout, check=check
            ),
            *argv,
        )

    async def copy_in(self, local: str | os.PathLike[str], guest_path: str) -> None:
        """Copy a local file into the guest (``hv.Vm.copy_in``)."""
        await self._portal.run(self.trio_vm.copy_in, local, guest_path)

    async def copy_out(self, guest_path: str, local: str | os.PathLike[str]) -> None:
        """Copy a file out of the guest (``hv.Vm.copy_out``)."""
        await self._portal.run(self.trio_vm.copy_out, guest_path, local)

    async def snapshot(self, path: str | os.PathLike[str], *, durable: bool = True) -> Any:
        """Write the VM's snapshot (``hv.Vm.snapshot``; ``hv.restore`` starts from it)."""
        return await self._portal.run(
            functools.partial(self.trio_vm.snapshot, path, durable=durable)
        )

    async def announce_clone(self, addresses: Sequence[str] = (), timeout: float = 30.0) -> Any:
        """Tell the guest it is a clone (``hv.Vm.announce_clone``)."""
        return await self._portal.run(self.trio_vm.announce_clone, addresses, timeout)


class HostPort:
    """A port of this program's own on a switch: ``await send(frame)``, ``await receive()``.

    Frames cross in bulk rather than one call each: what the switch delivers to the port is
    forwarded to this side as it arrives (a batch per wake-up; past ``queue`` frames waiting
    here, more are dropped and counted, as on the trio port), and ``send`` hands its frame
    to the trio thread without waiting, but for every ``SEND_WINDOW``-th, which waits for
    all before it (so at most that many are in flight). Frames and every later call reach
    trio in order: a ``send`` is on the switch before anything awaited after it runs."""

    SEND_WINDOW = 32

    def __init__(self, portal: Portal, switch: TrioSwitch, name: str, queue: int,
                 vlan: PortVlan | None) -> None:  # fmt: skip
        self._portal = portal
        self.name = name
        self.queue = queue
        self._port: TrioHostPort | None = None
        self._frames: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._dropped = 0
        self._sent = 0
        self._error: BaseException | None = None  # a send that failed in trio
        portal._send(lambda: self._attach(switch, vlan))
        portal._closers.append(self._wake)

    # -- the trio thread -------------------------------------------------------------------

    def _attach(self, switch: TrioSwitch, vlan: PortVlan | None) -> None:
        self._port = switch.open_port(self.name, self.queue, vlan)
        calls = self._portal._calls
        if calls is not None:
            calls.start_soon(self._pump, self._port)

    async def _pump(self, port: TrioHostPort) -> None:
        while True:
            batch = [await port.receive()]
            while len(batch) < self.queue and (f := port.receive_nowait()) is not None:
                batch.append(f)
            self._portal._soon(functools.partial(self._arrived, batch))

    def _send_now(self, data: bytes) -> None:
        assert self._port is not None  # attached first: callbacks run in order
        try:
            self._port.send(data)
        except Exception as e:
            self._error = e

    # -- asyncio's side --------------------------------------------------------------------

    def _arrived(self, batch: list[bytes]) -> None:
        room = self.queue - len(self._frames)
        if len(batch) > room:
            self._dropped += len(batch) - room
            batch = batch[:room]
        self._frames.extend(batch)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    async def send(self, frame: bytes | Any) -> None:
        """Put a frame on the switch: bytes, or a scapy packet. Differs from trio: awaited
        (most sends return at once; every ``SEND_WINDOW``-th waits for the trio thread)."""
        self._raise_error()
        data = bytes(frame)
        self._sent += 1
        if self._sent % self.SEND_WINDOW:
            self._portal._check()
            self._portal._send(lambda: self._send_now(data))
        else:
            await self._portal.run_sync(self._send_now, data)
        self._raise_error()

    async def receive(self) -> bytes:
        """The next frame the switch delivered to this port (BridgeClosed once the lab has
        closed and every frame that came is taken)."""
        while not self._frames:
            self._portal._check()
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._frames.popleft()

    def receive_nowait(self) -> bytes | None:
        """A frame already here, or None."""
        return self._frames.popleft() if self._frames else None

    @property
    def counters(self) -> PortCounters:
        """The port's counters (a copy, taken now)."""
        if self._port is None:
            return PortCounters()
        c = self._port.counters
        return dataclasses.replace(c, drops=collections.Counter(c.drops))

    @property
    def dropped(self) -> int:
        """Frames dropped: on the trio port, and here (more than ``queue`` waiting)."""
        return self._dropped + (0 if self._port is None else self._port.dropped)


class Switch:
    """A lab's switch from asyncio: ``open_port``, captures, the MAC table."""

    def __init__(self, portal: Portal, switch: TrioSwitch) -> None:
        self._portal = portal
        self.trio_switch = switch  # the trio object: use it only in the trio thread
        self.name = switch.name

    @property
    def capture_path(self) -> Path | None:
        return self.trio_switch.capture_path

    def open_port(self, name: str, queue: int = 1024, vlan: PortVlan | None = None) -> HostPort:
        """One more host on this switch (attached in the trio thread before the port's first
        call runs there)."""
        return HostPort(self._portal, self.trio_switch, name, queue, vlan)

    async def start_capture(self, path: Path) -> None:
        """Capture the switch's frames into ``path`` (pcapng). Differs from trio: awaited
        (the file is opened in the trio thread; its errors are raised here)."""
        await self._portal.run_sync(self.trio_switch.start_capture, path)

    async def stop_capture(self) -> None:
        """End the capture (flushed and closed). Differs from trio: awaited."""
        await self._portal.run_sync(self.trio_switch.stop_capture)

    async def mac_table(self) -> list[tuple[str, str, int, float]]:
        """The learned MACs: (MAC, port name, VLAN, age). Differs from trio: awaited (the
        table lives in the trio thread; ``Switch.mac_table()`` there is a plain call)."""
        return await self._portal.run_sync(self.trio_switch.mac_table)


class LabRun:
    """A running lab from asyncio: ``vms``, ``switches``, ``await wait()``, ``await stop()``."""

    def __init__(self, portal: Portal, run: TrioLabRun) -> None:
        self.portal = portal
        self.trio_run = run  # the trio object: use it only in the trio thread
        self.spec = run.spec
        self.vms: Mapping[str, Vm] = {n: Vm(portal, vm) for n, vm in run.vms.items()}
        self.switches: Mapping[str, Switch] = {
            n: Switch(portal, s) for n, s in run.switches.items()
        }

    @property
    def exits(self) -> dict[str, StopInfo]:
        return dict(self.trio_run.exits)

    @property
    def status(self) -> int | None:
        return self.trio_run.status

    async def wait(self) -> int:
        """Wait for the lab to end (every VM stopped); its exit status."""
        return await self.portal.run(self.trio_run.wait)

    async def stop(self, reason: str = "stopped") -> None:
        """Stop every VM (the lab then ends). Differs from trio: awaited."""
        await self.portal.run_sync(self.trio_run.stop, reason)

    async def set_link(self, cable: str, up: bool) -> dict[str, Any]:
        """Pull a cable out (``up=False``) or plug it back (trio's ``LabRun.set_link``); its
        state after. Differs from trio: awaited (the change is made in the trio thread)."""
        return await self.portal.run_sync(self.trio_run.set_link, cable, up)

    async def link_state(self, cable: str) -> dict[str, Any]:
        """A cable's state (trio's ``LabRun.link_state``). Differs from trio: awaited (the
        counters are read in the trio thread)."""
        return await self.portal.run_sync(self.trio_run.link_state, cable)

    async def link_states(self) -> list[dict[str, Any]]:
        """Every cable's state (trio's ``LabRun.link_states``). Differs from trio: awaited
        (the counters are read in the trio thread)."""
        return await self.portal.run_sync(self.trio_run.link_states)

    async def snapshot(self, folder: str | os.PathLike[str], *, durable: bool = True) -> Any:
        """Write the lab's snapshot into ``folder`` (trio's ``LabRun.snapshot``)."""
        return await self.portal.run(
            functools.partial(self.trio_run.snapshot, folder, durable=durable)
        )

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(lab, *args)`` in the trio thread, ``lab`` being the trio ``LabRun``
        (any of the trio API: ``await lab.run(lambda run: run.vms["a"].wait())``)."""
        return await self.portal.run(fn, self.trio_run, *args)

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(lab, *args)`` in the trio thread, ``lab`` being the trio ``LabRun``
        (``await lab.run_sync(lambda run: run.impairments["links[0]"].set(loss=0.1))``);
        it must not block."""
        return await self.portal.run_sync(fn, self.trio_run, *args)


@asynccontextmanager
async def open_lab(
    spec: LabSpec | Lab | str | Path,
    output: Output | None = None,
    *,
    mode: Mode = "thread",
    clock: str | None = None,
    seed: int | None = None,
    mips: int | None = None,
) -> AsyncIterator[LabRun]:
    """``hv.open_lab`` for asyncio: the lab runs for the body of the ``async with``, in a
    trio thread of its own (``mode="guest"``: as a guest of asyncio's loop). ``output`` is
    called in the trio thread. ``clock``, ``seed`` and ``mips`` as for ``hv.open_lab``
    (virtual time: docs/TIME.md)."""

    @asynccontextmanager
    async def in_trio() -> AsyncIterator[TrioLabRun]:
        from hv.lab import open_lab as trio_open_lab

        async with trio_open_lab(spec, output, clock=clock, seed=seed, mips=mips) as run:
            yield run

    portal = Portal(mode)
    run = await portal.open(in_trio)
    try:
        yield LabRun(portal, run)
    finally:
        await portal.aclose()


@asynccontextmanager
async def open_vm(config: VmConfig, *, mode: Mode = "thread") -> AsyncIterator[Vm]:
    """``hv.open_vm`` for asyncio: the VM runs for the body, then is stopped. (Its NICs'
    switches would run in the trio thread too: for a network, use ``open_lab``.)"""

    @asynccontextmanager
    async def in_trio() -> AsyncIterator[TrioVm]:
        from hv._vm import open_vm as trio_open_vm

        async with trio_open_vm(config) as vm:
            yield vm

    portal = Portal(mode)
    vm = await portal.open(in_trio)
    try:
        yield Vm(portal, vm)
    finally:
        await portal.aclose()


__all__ = ["TRIO_DIFFERENCES", "BridgeClosed", "Console", "HostPort", "LabRun", "Portal",
           "Switch", "Vm", "open_lab", "open_vm"]  # fmt: skip
