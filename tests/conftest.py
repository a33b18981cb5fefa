"""Shared fixtures: the bundled guests' ELFs, hand-made kernel files, and a VM runner."""

from __future__ import annotations

import os
import struct
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from rvasm import addi as rv_addi
from rvasm import jal as rv_jal
from rvasm import li32 as rv_li32
from rvasm import lui as rv_lui
from rvasm import raw_binary
from rvasm import sw as rv_sw

from hv import StopInfo, Vm, VmConfig, run_vm
from hv.build._guests import build_guest

# Guests the VM-level tests boot; built (or found in the cache) once per session.
TEST_GUESTS = ("hello", "sleep", "fault", "cpu", "traps", "sbi", "echo", "smc")

RunGuest = Callable[..., Awaitable[tuple[StopInfo, bytes]]]


@pytest.fixture(scope="session")
def guest_elfs() -> dict[str, Path]:
    """Bundled guest name -> path of its built ELF."""
    return {name: build_guest(name) for name in TEST_GUESTS}


@pytest.fixture
def run_guest(guest_elfs: dict[str, Path]) -> RunGuest:
    """``await run_guest("hello", cmdline="...", timeout=10)`` boots a bundled guest (or a
    ``VmConfig``), runs it to the end and returns (exit info, console transcript)."""

    async def run(
        guest: str | VmConfig, *, cmdline: str = "", timeout: float = 20.0
    ) -> tuple[StopInfo, bytes]:
        if isinstance(guest, str):
            config = VmConfig(kernel=guest_elfs[guest], cmdline=cmdline, name=guest)
        else:
            config = guest
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                vm: Vm = await nursery.start(run_vm, config)
                info = await vm.wait()
        return info, vm.console.transcript

    return run


# -- hand-made kernels (tests/rvasm.py assembles) ------------------------------------------

__all__ = ["raw_binary", "rv_addi", "rv_jal", "rv_li32", "rv_lui", "rv_sw"]


T0, T1 = 5, 6
FINISHER = 0x0010_0000


def finisher_kernel(value: int) -> bytes:
    """A raw-binary guest that writes ``value`` to the sifive,test1 finisher, then spins."""
    return raw_binary([*rv_li32(T0, FINISHER), *rv_li32(T1, value), rv_sw(T1, T0, 0), rv_jal(0, 0)])


def spin_kernel() -> bytes:
    """A raw-binary guest that spins forever (``j .``)."""
    return raw_binary([rv_jal(0, 0)])


@pytest.fixture
def empty_file(tmp_path: Path) -> Path:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    return path


@pytest.fixture
def x86_elf(tmp_path: Path) -> Path:
    """A well-formed little ELF64 file for x86-64 (one PT_LOAD segment, four bytes of code)."""
    ehdr_size, phdr_size = 64, 56
    code = b"\xf4\xeb\xfd\x90"  # hlt; jmp .-1; nop
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        2,  # ET_EXEC
        62,  # EM_X86_64
        1,
        0x400000 + ehdr_size + phdr_size,  # entry
        ehdr_size,  # phoff
        0,  # shoff
        0,
        ehdr_size,
        phdr_size,
        1,  # phnum
        64,  # shentsize
        0,
        0,
    )
    phdr = struct.pack(
        "<IIQQQQQQ",
        1,  # PT_LOAD
        5,  # R+X
        0,
        0x400000,
        0x400000,
        ehdr_size + phdr_size + len(code),
        ehdr_size + phdr_size + len(code),
        0x1000,
    )
    path = tmp_path / "x86.elf"
    path.write_bytes(header + phdr + code)
    return path


@pytest.fixture(scope="session")
def linux_image() -> Any:
    """The Linux guest image, built before pytest starts by the test command (`bash .ci/test`,
    its stage 5) or by `hv image build linux`. Never built here: inside a test it would run
    for minutes with its output captured, charged to whichever test came first."""
    from hv.build import _image_linux as il

    img = il.linux_image_info()
    if img is None:
        pytest.fail(
            "the Linux guest image is not built: run the tests with `bash .ci/test` (it builds "
            "the image first, with progress), or build it with `hv image build linux` "
            "(`--install-deps` as root)",
            pytrace=False,
        )
    return img


@pytest.fixture(scope="session", autouse=True)
def _private_runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Labs' control sockets go under $XDG_RUNTIME_DIR: a folder of this test run's own, so
    two runs (or a developer's own `hv up -d`) never see each other's lab names."""
    d = tmp_path_factory.mktemp("runtime")
    d.chmod(0o700)
    old = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(d)
    yield
    if old is None:
        os.environ.pop("XDG_RUNTIME_DIR", None)
    else:
        os.environ["XDG_RUNTIME_DIR"] = old
