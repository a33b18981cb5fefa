"""The fast engine (hv/engine): its patches on a bare Unicorn, its selection and its fallback.

The raw tests run hand-assembled riscv64 code on a bare ``Uc`` of the library this process
loaded (the fast engine unless HV_ENGINE=stock), in M-mode with no MMU:
- exact slices: any sequence of budgets gives the same state as one long run (an AMO in the
  loop would show a replayed instruction), and the budget counts instructions;
- a store to a page that holds translated code is seen, even through a TLB entry that was
  filled for fast stores before the code existed (the fast path must never hide a write to
  code);
- a failed store stops on its own instruction, nothing after it having run.
The process-level tests run ``hv`` with HV_ENGINE=stock, and with a build that cannot work.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rvasm import (
    FENCE_I,
    WFI,
    add,
    addi,
    amoadd_w,
    andi,
    blt,
    bne,
    code,
    jalr,
    lui,
    sd,
    slli,
    sw,
    xor,
)

from hv import engine as hv_engine
from hv.engine import _abi

unicorn: Any = _abi.unicorn
rc: Any = importlib.import_module("unicorn.riscv_const")  # after hv chose the library

STOCK_REQUESTED = os.environ.get("HV_ENGINE", "").strip().lower() == "stock"
fast_only = pytest.mark.skipif(STOCK_REQUESTED, reason="HV_ENGINE=stock: the fast engine is off")

RAM = 0x8000_0000
RAM_SIZE = 1 << 20
X = [getattr(rc, f"UC_RISCV_REG_X{i}") for i in range(32)]
PC = rc.UC_RISCV_REG_PC
T0, T1, T2, T3, T4, T5, T6 = 5, 6, 7, 28, 29, 30, 31
S0, S2, S3, A0, A1, RA = 8, 18, 19, 10, 11, 1


# -- a bare engine -------------------------------------------------------------------------


class Bare:
    """A bare Uc on this process's library: 1 MiB of RAM at 0x8000_0000, M-mode, no MMU."""

    def __init__(self, program: bytes, regs: dict[int, int] | None = None) -> None:
        self.uc: Any = unicorn.Uc(unicorn.UC_ARCH_RISCV, unicorn.UC_MODE_RISCV64)
        self.uc.mem_map(RAM, RAM_SIZE)
        self.uc.mem_write(RAM, program)
        for r, v in (regs or {}).items():
            self.uc.reg_write(X[r], v)
        self.pc = RAM
        self.slice: Any = None
        if _abi.FAST_ENGINE:
            ptr = ctypes.c_void_p()
            assert _abi._hv_slice(self.uc._uch, ctypes.byref(ptr)) == 0
            self.slice = _abi._HvSlice.from_address(ptr.value or 0)

    def run(self, budget: int | None = None) -> int:
        """One emu_start from the current pc; returns the Unicorn error code (0 = ok)."""
        if budget is not None:
            self.slice.budget = budget
        try:
            self.uc.emu_start(self.pc, 0)
            err = 0
        except unicorn.UcError as e:
            err = e.errno
        self.pc = self.uc.reg_read(PC)
        return err

    def x(self, i: int) -> int:
        return int(self.uc.reg_read(X[i]))

    def word(self, addr: int) -> int:
        return int.from_bytes(self.uc.mem_read(addr, 4), "little")


def slicing_program(n: int) -> bytes:
    """A loop of n rounds: ALU work, a branch, a store into a buffer (a0), an AMO (a1)."""
    body = [
        addi(T0, T0, 1),
        add(T2, T2, T0),
        slli(T3, T0, 3),
        andi(T3, T3, 0x7F8),
        add(T4, A0, T3),
        sd(T2, T4, 0),
        amoadd_w(0, T0, A1),
        andi(T6, T0, 7),
        bne(T6, 0, 8),
        xor(T2, T2, T1),
        # skip:
    ]
    loop = [*body, blt(T0, T1, -4 * len(body))]
    return code([addi(T0, 0, 0), addi(T1, 0, n), addi(T2, 0, 0), *loop, WFI])


SLICE_REGS = {A0: RAM + 0x1_0000, A1: RAM + 0x2_0000}


def final_state(b: Bare) -> tuple[list[int], bytes, int]:
    regs = [b.x(i) for i in (T0, T1, T2, T3, T4, T5, T6)]
    return regs, bytes(b.uc.mem_read(RAM + 0x1_0000, 0x800)), b.word(RAM + 0x2_0000)


@fast_only
def test_the_fast_engine_is_loaded() -> None:
    """The suite runs on the fast engine (CI builds it first): a failed build must show here,
    not pass quietly on the stock library."""
    assert _abi.FAST_ENGINE, f"running on {_abi.library_path()}: run 'hv engine build'"
    info = hv_engine.engine_info()
    assert info["engine"] == "fast" and info["patches"] == list(hv_engine.PATCHES)
    assert str(hv_engine.engine_dir()) in str(info["library"])


@fast_only
def test_random_slices_match_one_long_run() -> None:
    rounds = 1200
    whole = Bare(slicing_program(rounds), SLICE_REGS)
    assert whole.run(budget=1 << 40) == 0
    want = final_state(whole)
    assert want[0][0] == rounds and want[2] == rounds * (rounds + 1) // 2
    charged = (1 << 40) - whole.slice.budget

    rng = random.Random(6)
    for _ in range(5):
        b = Bare(slicing_program(rounds), SLICE_REGS)
        stops = total = 0
        while True:
            budget = rng.choice([1, 2, 3, 7, 11, 50, 333, 1000])
            before = b.slice.stops
            assert b.run(budget) == 0
            total += budget - b.slice.budget
            if b.slice.stops == before:
                break  # the wfi at the end
            stops += 1
        assert final_state(b) == want, "a sliced run diverged: an instruction was replayed?"
        assert stops > 10
        assert total == charged, "slices charged a different instruction count"


@fast_only
def test_the_budget_counts_instructions_and_stops_at_a_block_entry() -> None:
    rounds = 100
    b = Bare(slicing_program(rounds), SLICE_REGS)
    assert b.run(budget=1 << 40) == 0
    # 3 set-up instructions, 10 per round plus the xor one round in 8, then the wfi. A block
    # is charged whole at its entry: the wfi's block also holds the (never reached) next word.
    executed = 3 + rounds * 10 + rounds // 8 + 1
    assert executed <= (1 << 40) - b.slice.budget <= executed + 1
    b = Bare(slicing_program(rounds), SLICE_REGS)
    assert b.run(budget=20) == 0
    assert b.slice.stops == 1
    assert 20 - b.slice.budget >= 20, "it stopped before the budget was spent"
    # The stop is at a block entry: the loop's head or the instruction after its branch.
    loop_head = RAM + 12
    assert b.pc in (loop_head, loop_head + 4 * 10), hex(b.pc)


@fast_only
def test_emu_stop_from_a_hook_ends_the_slice_exactly() -> None:
    """uc_emu_stop from the INTR hook (an ecall) stops at the next block entry: the
    instruction after the ecall has not run."""
    program = code([addi(T0, 0, 1), 0x00000073, addi(T1, 0, 7), WFI])  # ecall in between
    b = Bare(program)
    b.uc.hook_add(unicorn.UC_HOOK_INTR, lambda uc, intno, ud: uc.emu_stop())
    assert b.run(budget=1 << 40) == 0
    assert (b.x(T0), b.x(T1), b.pc) == (1, 0, RAM + 8)
    assert b.run() == 0
    assert b.x(T1) == 7


def test_a_failed_store_stops_on_its_own_instruction() -> None:
    """An unmapped store ends emu_start with pc on the store; the store before it landed and
    nothing after it ran (the fast engine has no exit check after each store)."""
    unmapped = 0x4000_0000
    program = code([addi(T0, 0, 5), sd(T0, A0, 0), sd(T0, A1, 0), addi(T1, 0, 9), WFI])
    b = Bare(program, {A0: RAM + 0x1000, A1: unmapped})
    assert b.run(budget=1 << 40 if _abi.FAST_ENGINE else None) == unicorn.UC_ERR_WRITE_UNMAPPED
    assert b.pc == RAM + 8
    assert b.word(RAM + 0x1000) == 5
    assert b.x(T1) == 0


def test_a_store_to_a_page_with_translated_code_is_seen() -> None:
    """Page P gets a fast (clean) TLB entry from a data store before any code runs there;
    then code on P is translated and run; a store through that same entry rewrites it, and
    the next call must run the new code."""
    page = 0x3000
    func = code([addi(A0, 0, 1), jalr(0, RA)])
    new_insn = addi(A0, 0, 2)
    main = [
        lui(T1, page >> 12),
        add(T1, T1, S0),  # t1 = P
        sd(T1, T1, 0x7F0),  # (1) a data store to P: P holds no code yet, so it goes fast
        jalr(RA, T1),  # (2) code on P is translated: a0 = 1
        addi(S2, A0, 0),
        lui(T2, (new_insn + 0x800) >> 12),
        addi(T2, T2, ((new_insn & 0xFFF) ^ 0x800) - 0x800),
        sw(T2, T1, 0),  # (3) rewrite P's first instruction through the same TLB entry
        FENCE_I,
        jalr(RA, T1),  # (4) a0 must now be 2
        addi(S3, A0, 0),
        sd(T1, T1, 0x7F8),  # data stores to the page with code keep working
        WFI,
    ]
    image = bytearray(code(main).ljust(page, b"\0"))
    image += func
    b = Bare(bytes(image), {S0: RAM})
    assert b.run(budget=1 << 40 if _abi.FAST_ENGINE else None) == 0
    assert (b.x(S2), b.x(S3)) == (1, 2), "the rewritten code was not seen"
    assert int.from_bytes(b.uc.mem_read(RAM + page + 0x7F8, 8), "little") == RAM + page


# -- selection and fallback, as processes --------------------------------------------------


def hv_cmd(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "hv.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=full,
        timeout=300,
        check=False,
    )


@fast_only
def test_engine_info_names_the_fast_engine() -> None:
    r = hv_cmd("engine", "info", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["engine"] == "fast" and info["source"] == "fast"
    assert info["patches"] == list(hv_engine.PATCHES)
    assert Path(str(info["library"])).is_file()
    assert info["built"]["compiler"] in ("zig cc", "system cc")
    text = hv_cmd("engine", "info").stdout
    assert "engine:   fast" in text and "0001-store-fast-path.patch" in text


def test_hv_engine_stock_runs_the_wheel_library(guest_elfs: dict[str, Path]) -> None:
    """HV_ENGINE=stock: the wheel's libunicorn, the block-hook slicing; the guest suites pass
    and the smc guest shows the stock engine's alias bug (the reason for patch 0001)."""
    stock = {"HV_ENGINE": "stock"}
    r = hv_cmd("engine", "info", "--json", env=stock)
    info = json.loads(r.stdout)
    assert info["engine"] == "stock" and info["patches"] == []
    assert "site-packages" in str(info["library"]) or "unicorn/lib" in str(info["library"])
    r = hv_cmd("run", guest_elfs["traps"], env=stock)
    assert r.returncode == 0 and "traps: 16 passed, 0 failed" in r.stdout, r.stderr
    r = hv_cmd("run", guest_elfs["smc"], "--append", "xfail=alias_rx_rw", env=stock)
    assert r.returncode == 0, r.stdout[-2000:]
    alias = [
        ln for ln in r.stdout.splitlines() if ln.endswith("alias_rx_rw") or " alias_rx_rw #" in ln
    ]
    assert alias and alias[0].startswith("not ok"), alias


@fast_only
def test_smc_guest_passes_on_the_fast_engine_as_a_process(guest_elfs: dict[str, Path]) -> None:
    r = hv_cmd("run", guest_elfs["smc"], env={"HV_ENGINE": "fast"})
    assert r.returncode == 0, r.stdout[-2000:]
    assert "smc: 40 passed, 0 failed" in r.stdout


def test_a_build_that_cannot_work_falls_back_to_stock(
    tmp_path: Path, guest_elfs: dict[str, Path]
) -> None:
    """No sdist to be had (pip offline): hv says so once, runs the guest on the stock library,
    and remembers why, so later runs neither retry nor repeat the message."""
    env = {
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(tmp_path),
        "HV_ENGINE": "fast",
    }
    r = hv_cmd("run", guest_elfs["hello"], env=env)
    assert r.returncode == 0, r.stderr
    assert "Hello" in r.stdout
    assert r.stderr.count("could not be built") == 1, r.stderr
    assert "running on the stock Unicorn library" in r.stderr
    r = hv_cmd("run", guest_elfs["hello"], env=env)
    assert r.returncode == 0 and "could not be built" not in r.stderr, r.stderr
    info = json.loads(hv_cmd("engine", "info", "--json", env=env).stdout)
    assert info["engine"] == "stock" and "last build failed" in str(info["note"])
    r = hv_cmd("engine", "build", env=env)
    assert r.returncode == 3 and "could not be built" in r.stderr, r.stderr
    assert "pip" in r.stderr
