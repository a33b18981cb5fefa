"""hv.aio, the asyncio bridge, from plain ``asyncio.run`` programs (never under trio): the
documented examples as programs of their own, then labs and a VM driven from asyncio:
consoles, frames, stopping; cancellation on the asyncio side; trio's exceptions raised in
asyncio; guest mode."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

import hv
import hv.aio
from hv import ConfigError, Lab, VmConfig

DOC = Path(__file__).resolve().parent.parent / "docs" / "EMBEDDING.md"
ME = "52:54:00:aa:bb:cc"


def example(name: str) -> str:
    """The code block after ``<!-- example: NAME -->`` in docs/EMBEDDING.md."""
    m = re.search(
        rf"<!-- example: {re.escape(name)} -->\n```\w+\n(.*?)\n```", DOC.read_text(), re.S
    )
    assert m is not None, f"no example {name!r} in {DOC}"
    return m.group(1) + "\n"


def run_program(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "program.py"
    path.write_text(code)
    return subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
        check=False,
    )  # fmt: skip


def test_the_documented_trio_example_runs(tmp_path: Path) -> None:
    p = run_program(example("trio"), tmp_path)
    assert p.returncode == 0, p.stderr
    assert re.search(r"^10\.0\.0\.2 is at 52:54:00(:[0-9a-f]{2}){3}$", p.stdout, re.M), p.stdout
    assert "ping: 10.0.0.2: 3 sent, 3 received" in p.stdout
    assert p.stdout.rstrip().endswith("ping's exit status: 0")


def test_the_documented_asyncio_example_runs(tmp_path: Path) -> None:
    """The asyncio example is a plain ``asyncio.run`` program: no trio in sight."""
    code = example("asyncio")
    assert "trio" not in code
    p = run_program(code, tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert re.fullmatch(r"10\.0\.0\.2 is at 52:54:00(:[0-9a-f]{2}){3}", lines[0]), p.stdout
    assert lines[1].startswith("ping: 10.0.0.2: 3 sent, 3 received")
    # p powered off cleanly; s was stopped, which is the lab's status (130)
    assert lines[2:] == ["ping's exit status: 0", "lab status: 130"]


# -- in this process: asyncio.run in a plain (sync) test ---------------------------------


def pair(count: int = 2) -> Lab:
    return (
        Lab("pair")
        .switch("lan")
        .vm("s", kernel="udpecho", mem="16M", nics=[{"switch": "lan", "ip": "10.0.0.2/24"}])
        .vm("p", kernel="ping", mem="16M", append=f"peer=10.0.0.2 count={count} interval=10",
            nics=[{"switch": "lan", "ip": "10.0.0.1/24"}])
    )  # fmt: skip


def echo_lab() -> Lab:
    return (
        Lab("one")
        .switch("lan")
        .vm("s", kernel="udpecho", mem="16M", nics=[{"switch": "lan", "ip": "10.0.0.2/24"}])
    )


def trio_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "hv-trio"]


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``asyncio.run(main())``, then check that no trio thread was left behind."""
    asyncio.run(main())
    for t in trio_threads():
        t.join(timeout=10)
    assert not trio_threads()


async def resolve(port: hv.aio.HostPort) -> str:
    """ARP for 10.0.0.2 from ``port``: the guest's MAC."""
    await port.send(Ether(src=ME, dst="ff:ff:ff:ff:ff:ff")
                    / ARP(pdst="10.0.0.2", psrc="10.0.0.9", hwsrc=ME))  # fmt: skip
    async with asyncio.timeout(10):
        while True:
            reply = Ether(await port.receive())
            if ARP in reply and reply[ARP].op == 2 and reply[ARP].psrc == "10.0.0.2":
                return str(reply[ARP].hwsrc)


def test_a_lab_from_asyncio_consoles_frames_and_stop() -> None:
    async def main() -> None:
        async with hv.aio.open_lab(pair(count=2)) as lab:
            assert set(lab.vms) == {"s", "p"} and set(lab.switches) == {"lan"}
            s, p = lab.vms["s"], lab.vms["p"]
            out = await s.console.wait_for(b"udpecho: echoing")
            assert out.startswith(b"net: eth0 ")
            first = await s.console.receive_some()  # the stream from the start
            assert first.startswith(b"net: eth0 ")
            port = lab.switches["lan"].open_port("me")
            guest = await resolve(port)
            await port.send(Ether(src=ME, dst=guest) / IP(src="10.0.0.9", dst="10.0.0.2")
                            / ICMP(id=7, seq=1) / b"hello")  # fmt: skip
            async with asyncio.timeout(10):
                while not (ICMP in (pong := Ether(await port.receive())) and pong[ICMP].type == 0):
                    pass
            assert pong[Raw].load == b"hello"
            # s's cable pulled out: a ping is not answered, counted as down on s's port
            state = await lab.set_link("s", up=False)
            assert (state["name"], state["up"]) == ("s.eth0", False)
            await port.send(Ether(src=ME, dst=guest) / IP(src="10.0.0.9", dst="10.0.0.2")
                            / ICMP(id=7, seq=2))  # fmt: skip
            assert (await lab.link_state("s.eth0"))["down_drops"] >= 1
            await lab.set_link("s.eth0", up=True)
            assert [(c["name"], c["up"]) for c in await lab.link_states()] == [
                ("s.eth0", True), ("p.eth0", True),
            ]  # fmt: skip
            await port.send(Ether(src=ME, dst=guest) / IP(src="10.0.0.9", dst="10.0.0.2")
                            / ICMP(id=7, seq=3))  # fmt: skip
            async with asyncio.timeout(10):
                while not (ICMP in (pong := Ether(await port.receive())) and pong[ICMP].type == 0):
                    pass
            assert pong[ICMP].seq == 3  # not seq 2: it never got there
            # two ports of our own: frames arrive whole and in order, none dropped
            a, b = port, lab.switches["lan"].open_port("b")
            a_mac, b_mac = bytes.fromhex(ME.replace(":", "")), bytes.fromhex("525400aa0002")
            await b.send(a_mac + b_mac + b"\x88\xb5" + bytes(50))
            frames = [
                b_mac + a_mac + b"\x88\xb5" + i.to_bytes(2, "big") + bytes(48) for i in range(200)
            ]
            for f in frames:
                await a.send(f)
            async with asyncio.timeout(10):
                got = [await b.receive() for _ in frames]
            assert got == frames and a.dropped == b.dropped == 0
            info = await p.wait()
            assert info.exit_code == 0 and p.exit == info
            assert b"2 sent, 2 received" in p.console.transcript
            stats = await s.stats()
            assert stats["slices"] > 0
            await lab.stop("test over")
            assert await lab.wait() == 130 and lab.status == 130
            assert lab.exits["s"].kind is hv.StopKind.STOPPED and s.state is hv.VmState.STOPPED
        with pytest.raises(hv.aio.BridgeClosed):
            await s.stats()

    run(main)


def test_a_vm_from_asyncio_types_at_its_console() -> None:
    async def main() -> None:
        async with hv.aio.open_vm(VmConfig(kernel=hv.guest_path("echo"))) as vm:
            await vm.console.wait_for(b"echo: ready")
            await vm.console.send_all(b"hi there")
            seen = b""
            async with asyncio.timeout(10):
                while b"hi there" not in seen:
                    seen += await vm.console.receive_some()
            await vm.console.send_all("q")
            info = await vm.wait()
        assert info.kind is hv.StopKind.POWEROFF and b"echo: bye" in vm.console.transcript

    run(main)


def test_cancelling_on_the_asyncio_side_cancels_in_trio_and_hangs_nothing() -> None:
    async def main() -> None:
        async with hv.aio.open_lab(echo_lab()) as lab:
            s = lab.vms["s"]
            await s.console.wait_for(b"udpecho: echoing")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(s.console.wait_for(b"never printed"), 0.1)
            async with asyncio.timeout(5):  # the trio side gave it up too
                while lab.portal.pending:
                    await asyncio.sleep(0.01)
            a, b = (lab.switches["lan"].open_port(n) for n in ("a", "b"))
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(b.receive(), 0.05)
            await a.send(b"\xff" * 6 + bytes.fromhex("525400aa0001") + b"\x88\xb5" + bytes(50))
            async with asyncio.timeout(5):  # a receive given up on lost nothing
                assert (await b.receive())[12:14] == b"\x88\xb5"
            assert (await s.stats())["slices"] > 0

        # a task cancelled inside the block: the lab closes, its VMs stop, the thread ends
        up: asyncio.Future[hv.aio.LabRun] = asyncio.get_running_loop().create_future()

        async def body() -> None:
            async with hv.aio.open_lab(echo_lab()) as lab:
                up.set_result(lab)
                await lab.vms["s"].console.wait_for(b"never printed")

        task = asyncio.create_task(body())
        lab = await up
        await lab.vms["s"].console.wait_for(b"udpecho: echoing")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        exit_info = lab.vms["s"].exit
        assert exit_info is not None and exit_info.kind is hv.StopKind.STOPPED

        # cancelled while the lab is still starting: trio closes it once it is up
        task = asyncio.create_task(body())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        t0 = time.monotonic()
        while trio_threads() and time.monotonic() - t0 < 20:
            await asyncio.sleep(0.02)
        assert not trio_threads()

    run(main)


def test_exceptions_in_trio_are_raised_in_asyncio() -> None:
    async def boom(run: Any, what: str) -> None:
        assert run.vms
        raise ValueError(what)

    async def main() -> None:
        bad = Lab("bad").switch("lan").vm("a", kernel="nosuchguest", nics=["lan"])
        with pytest.raises(ConfigError, match="kernel 'nosuchguest' not found"):
            async with hv.aio.open_lab(bad):
                pass
        async with hv.aio.open_lab(echo_lab()) as lab:
            with pytest.raises(ValueError, match="from trio"):
                await lab.run(boom, "from trio")
            with pytest.raises(ZeroDivisionError):
                await lab.run_sync(lambda run: 1 // 0)
            s = lab.vms["s"]
            await s.stop()
            await s.wait()
            with pytest.raises(EOFError):
                await s.console.wait_for(b"never printed")
            with pytest.raises(hv.StateError):
                await s.pause()
        with pytest.raises(hv.aio.BridgeClosed):
            await lab.wait()

    run(main)


def test_guest_mode_runs_trio_on_asyncios_loop() -> None:
    async def main() -> None:
        async with hv.aio.open_lab(echo_lab(), mode="guest") as lab:
            assert not trio_threads()  # one thread: trio is asyncio's guest
            await lab.vms["s"].console.wait_for(b"udpecho: echoing")
            port = lab.switches["lan"].open_port("me")
            assert (await resolve(port)).startswith("52:54:00:")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(lab.vms["s"].console.wait_for(b"never printed"), 0.05)
            await lab.stop()
            assert await lab.wait() == 130

    run(main)


def _public(obj: object) -> set[str]:
    """The public names of a live object: its class's and its own attributes."""
    names = {n for n in dir(type(obj)) if not n.startswith("_")}
    names |= {n for n in vars(obj) if not n.startswith("_")}
    return names


def test_the_asyncio_faces_match_trios_or_say_how_they_differ() -> None:
    """Every public name of a trio object (``hv.Vm``, ``hv.Console``, ``Switch``,
    ``HostPort``, ``LabRun``) is on its asyncio facade with the same calling convention, or
    is in ``hv.aio.TRIO_DIFFERENCES``; a difference that the facade has ("awaited: ...") is
    written in that method's docstring, and one it leaves out ("not here: ...") is absent."""
    import inspect

    async def main() -> None:
        async with hv.aio.open_lab(echo_lab()) as lab:
            await lab.vms["s"].console.wait_for(b"udpecho: echoing")
            port = lab.switches["lan"].open_port("me")
            await port.send(bytes(Ether(src=ME, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.0.0.2")))
            await port.receive()
            vm = lab.vms["s"]
            pairs = [
                ("Vm", vm.trio_vm, vm), ("Console", vm.trio_vm.console, vm.console),
                ("Switch", lab.switches["lan"].trio_switch, lab.switches["lan"]),
                ("HostPort", port._port, port), ("LabRun", lab.trio_run, lab),
            ]  # fmt: skip
            seen = set()
            for cls, trio_obj, facade in pairs:
                facade_names = _public(facade)
                for name in sorted(_public(trio_obj)):
                    key = f"{cls}.{name}"
                    differs = hv.aio.TRIO_DIFFERENCES.get(key)
                    if differs is not None:
                        seen.add(key)
                    if differs is not None and differs.startswith("not here"):
                        assert name not in facade_names, key
                        continue
                    assert name in facade_names, f"{key}: not on the facade, not listed"
                    mine = getattr(type(facade), name, None)
                    theirs = getattr(type(trio_obj), name, None)
                    awaited = inspect.iscoroutinefunction(mine)
                    if awaited == inspect.iscoroutinefunction(theirs):
                        assert differs is None, f"{key}: listed as different, but is not"
                        continue
                    assert differs is not None and differs.startswith("awaited"), key
                    doc = inspect.getdoc(mine) or ""
                    assert "Differs from trio:" in doc, f"{key}: the docstring doesn't say"
            assert seen == set(hv.aio.TRIO_DIFFERENCES), "listed names that don't exist"
            # run and run_sync hand over the trio lab, as a trio caller has it
            table = await lab.run_sync(lambda run: run.switches["lan"].mac_table())
            again = await lab.switches["lan"].mac_table()
            assert [row[:3] for row in table] == [row[:3] for row in again]  # but the ages
            assert await lab.run_sync(lambda run, x: (run is lab.trio_run, x), 7) == (True, 7)

            async def names(run: Any) -> list[str]:
                return list(run.vms)

            assert await lab.run(names) == ["s"]
            assert port.counters.rx_frames >= 1 and vm.console.backlog >= 0

    run(main)
