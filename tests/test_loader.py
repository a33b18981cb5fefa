"""Loading kernels (ELF, Linux Image, raw) into a fake RAM, and planning the initrd/DTB layout."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import fdt
import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from hv._errors import ConfigError
from hv.board._fdt import DeviceTreeSpec, build_device_tree
from hv.board._loader import Layout, LoadedKernel, load_file, load_kernel, plan_layout
from hv.hw._platform import KERNEL_ADDR, MEM_MIN, RAM_BASE

MIB = 1024 * 1024
RAM_SIZE = 32 * MIB

C_SOURCE = """
volatile char bss_buf[BSS_SIZE];
volatile unsigned long data_word = 0x1122334455667788UL;
void _start(void) { bss_buf[0] = (char)data_word; for (;;) {} }
"""

# Like Linux's vmlinux.lds: linked at `vaddr`, each section loaded at its address - OFFSET.
LINKER_SCRIPT = """
ENTRY(_start)
OFFSET = {vaddr:#x} - {paddr:#x};
SECTIONS {{
  . = {vaddr:#x};
  .text : AT(ADDR(.text) - OFFSET) {{ *(.text*) }}
  .data : AT(ADDR(.data) - OFFSET) {{ *(.rodata*) *(.data*) *(.sdata*) }}
  .bss : AT(ADDR(.bss) - OFFSET) {{ *(.sbss*) *(.bss*) *(COMMON) }}
  /DISCARD/ : {{ *(.eh_frame*) *(.comment) }}
}}
"""


class FakeRam:
    """Guest RAM as a bytearray, pre-filled with 0xAA so zero-filling is visible."""

    def __init__(self, base: int = RAM_BASE, size: int = RAM_SIZE) -> None:
        self.base = base
        self.mem = bytearray(b"\xaa" * size)
        self.writes: list[tuple[int, int]] = []

    def write(self, addr: int, data: bytes) -> None:
        off = addr - self.base
        assert off >= 0 and off + len(data) <= len(self.mem), f"write outside RAM at {addr:#x}"
        self.mem[off : off + len(data)] = data
        self.writes.append((addr, len(data)))

    def read(self, addr: int, n: int) -> bytes:
        off = addr - self.base
        return bytes(self.mem[off : off + n])


def zig_cc(out: Path, *args: str) -> Path:
    cmd = [sys.executable, "-m", "ziglang", "cc", *args, "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return out


def build_riscv_elf(
    directory: Path,
    name: str,
    *,
    paddr: int = KERNEL_ADDR,
    vaddr: int | None = None,
    bss_size: int = 8192,
    target: str = "riscv64-freestanding-none",
    compile_only: bool = False,
) -> Path:
    src = directory / f"{name}.c"
    src.write_text(C_SOURCE)
    script = directory / f"{name}.ld"
    script.write_text(LINKER_SCRIPT.format(vaddr=paddr if vaddr is None else vaddr, paddr=paddr))
    flags = [
        "-target",
        target,
        "-mcmodel=medany",
        "-nostdlib",
        "-ffreestanding",
        "-O2",
        "-fno-sanitize=undefined",
        "-fno-asynchronous-unwind-tables",
        f"-DBSS_SIZE={bss_size}",
    ]
    if compile_only:
        return zig_cc(directory / f"{name}.o", *flags, "-c", str(src))
    return zig_cc(directory / f"{name}.elf", *flags, f"-Wl,-T,{script}", str(src))


def symbol(data: bytes, name: str) -> tuple[int, int]:
    """(address, size) of a symbol in an ELF file."""
    symtab = ELFFile(io.BytesIO(data)).get_section_by_name(".symtab")
    assert isinstance(symtab, SymbolTableSection)
    syms = symtab.get_symbol_by_name(name)
    assert syms is not None and len(syms) == 1, f"no single symbol {name!r}"
    sym = syms[0]
    return int(sym["st_value"]), int(sym["st_size"])


@pytest.fixture(scope="module")
def elfs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("elfs")
    paths = {
        "kernel": build_riscv_elf(d, "kernel"),
        # a vmlinux-like file: linked at a virtual address, loaded at a physical one
        "virt": build_riscv_elf(d, "virt", vaddr=0xFFFF_FFFF_8000_0000),
        "low": build_riscv_elf(d, "low", paddr=0x1000),
        "high": build_riscv_elf(d, "high", paddr=RAM_BASE + 64 * MIB),
        "bigbss": build_riscv_elf(d, "bigbss", bss_size=40 * MIB),
        "rv32": build_riscv_elf(d, "rv32", target="riscv32-freestanding-none"),
        "object": build_riscv_elf(d, "object", compile_only=True),
    }
    src = d / "x86.c"
    src.write_text("void _start(void) { for (;;) {} }\n")
    paths["x86"] = zig_cc(
        d / "x86.elf", "-target", "x86_64-linux-musl", "-nostdlib", "-O2", str(src)
    )
    return {k: p.read_bytes() for k, p in paths.items()}


def image(text_offset: int, image_size: int, body: int = 0x1000, flags: int = 0) -> bytes:
    header = struct.pack(
        "<IIQQQIIQ8s4sI",
        0x0000_006F,  # code0: a jump (j +0)
        0,  # code1
        text_offset,
        image_size,
        flags,
        2,  # version 0.2
        0,
        0,
        b"RISCV\0\0\0",
        b"RSC\x05",
        0,
    )
    assert len(header) == 64
    return header + bytes((i * 7) & 0xFF for i in range(body - len(header)))


# --- ELF --------------------------------------------------------------------------------------


def test_elf_segments_go_to_their_addresses(elfs: dict[str, bytes]) -> None:
    data = elfs["kernel"]
    ram = FakeRam()
    k = load_kernel(data, RAM_BASE, RAM_SIZE, ram.write)
    start_addr, _ = symbol(data, "_start")
    data_addr, _ = symbol(data, "data_word")
    bss_addr, bss_size = symbol(data, "bss_buf")
    assert k.kind == "elf"
    assert k.entry == start_addr
    assert k.start == KERNEL_ADDR
    assert k.end == bss_addr + bss_size  # covers the bss
    assert bss_size == 8192
    assert ram.read(data_addr, 8) == (0x1122334455667788).to_bytes(8, "little")
    assert ram.read(bss_addr, bss_size) == bytes(bss_size)  # zero-filled over the 0xAA
    assert ram.read(k.end, 16) == b"\xaa" * 16  # nothing written past the end
    assert ram.read(RAM_BASE, 16) == b"\xaa" * 16  # nor below the start


def test_elf_entry_is_translated_to_physical(elfs: dict[str, bytes]) -> None:
    data = elfs["virt"]
    e_entry = int(ELFFile(io.BytesIO(data)).header["e_entry"])
    assert e_entry >= 0xFFFF_FFFF_8000_0000  # the header holds the virtual address
    ram = FakeRam()
    k = load_kernel(data, RAM_BASE, RAM_SIZE, ram.write)
    assert k.entry == e_entry - 0xFFFF_FFFF_8000_0000 + KERNEL_ADDR
    assert k.start == KERNEL_ADDR
    assert KERNEL_ADDR <= k.entry < k.end


def test_elf_below_ram_is_rejected(elfs: dict[str, bytes]) -> None:
    ram = FakeRam()
    with pytest.raises(ConfigError, match=r"lies below RAM 0x80000000.*0x80200000"):
        load_kernel(elfs["low"], RAM_BASE, RAM_SIZE, ram.write)
    assert ram.writes == []


def test_elf_above_ram_says_raise_mem(elfs: dict[str, bytes]) -> None:
    ram = FakeRam()
    with pytest.raises(
        ConfigError, match=r"above the end of RAM.*raise --mem to at least 64\.1 MiB"
    ):
        load_kernel(elfs["high"], RAM_BASE, RAM_SIZE, ram.write)
    assert ram.writes == []
    # with enough memory the same file loads
    big = FakeRam(size=128 * MIB)
    k = load_kernel(elfs["high"], RAM_BASE, 128 * MIB, big.write)
    assert k.start == RAM_BASE + 64 * MIB


def test_elf_bss_too_big_for_ram(elfs: dict[str, bytes]) -> None:
    ram = FakeRam()
    with pytest.raises(ConfigError, match=r"kernel needs .*\(42\.1 MiB.*32 MiB\).*raise --mem"):
        load_kernel(elfs["bigbss"], RAM_BASE, RAM_SIZE, ram.write)
    assert ram.writes == []


def test_x86_elf_is_named(elfs: dict[str, bytes]) -> None:
    with pytest.raises(ConfigError, match=r"^ELF for x86-64, not riscv64$"):
        load_kernel(elfs["x86"], RAM_BASE, RAM_SIZE, FakeRam().write)


def test_riscv32_elf_is_named(elfs: dict[str, bytes]) -> None:
    with pytest.raises(ConfigError, match=r"ELF for riscv32, not riscv64"):
        load_kernel(elfs["rv32"], RAM_BASE, RAM_SIZE, FakeRam().write)


def test_big_endian_elf_is_rejected(elfs: dict[str, bytes]) -> None:
    data = bytearray(elfs["kernel"])
    data[5] = 2  # EI_DATA = ELFDATA2MSB: e_machine would read 0xf300 ("machine 62208")
    with pytest.raises(ConfigError, match=r"^the kernel is a big-endian 64-bit ELF file; hv-virt"):
        load_kernel(bytes(data), RAM_BASE, RAM_SIZE, FakeRam().write)


def test_object_file_has_no_loadable_segments(elfs: dict[str, bytes]) -> None:
    assert int(ELFFile(io.BytesIO(elfs["object"])).header["e_phnum"]) == 0
    with pytest.raises(ConfigError, match=r"no loadable \(PT_LOAD\) segments"):
        load_kernel(elfs["object"], RAM_BASE, RAM_SIZE, FakeRam().write)


@pytest.mark.parametrize("keep", [20, 64, 200])
def test_truncated_elf_is_a_config_error(elfs: dict[str, bytes], keep: int) -> None:
    ram = FakeRam()
    with pytest.raises(ConfigError, match="damaged or truncated ELF"):
        load_kernel(elfs["kernel"][:keep], RAM_BASE, RAM_SIZE, ram.write)
    assert ram.writes == []


def test_elf_segment_past_end_of_file(elfs: dict[str, bytes]) -> None:
    data = elfs["kernel"]
    # drop the file's tail, keeping the headers: the segments now point past the end
    phoff = int(ELFFile(io.BytesIO(data)).header["e_phoff"])
    with pytest.raises(ConfigError, match=r"runs past the end of the file .* truncated"):
        load_kernel(data[: phoff + 56 * 6], RAM_BASE, RAM_SIZE, FakeRam().write)


# --- Linux Image ------------------------------------------------------------------------------


def test_image_loads_at_text_offset_and_reserves_image_size() -> None:
    data = image(text_offset=0x20_0000, image_size=0x1_0000)
    ram = FakeRam()
    k = load_kernel(data, RAM_BASE, RAM_SIZE, ram.write)
    assert k == LoadedKernel(kind="image", entry=0x8020_0000, start=0x8020_0000, end=0x8021_0000)
    assert ram.read(0x8020_0000, len(data)) == data
    assert ram.read(0x8020_0000 + len(data), 0x1_0000 - len(data)) == bytes(0x1_0000 - len(data))
    assert ram.read(0x8021_0000, 4) == b"\xaa" * 4


def test_image_text_offset_zero_uses_2mib_convention() -> None:
    k = load_kernel(image(text_offset=0, image_size=0x4000), RAM_BASE, RAM_SIZE, FakeRam().write)
    assert (k.kind, k.entry, k.start, k.end) == (
        "image",
        KERNEL_ADDR,
        KERNEL_ADDR,
        KERNEL_ADDR + 0x4000,
    )


def test_image_other_text_offset() -> None:
    k = load_kernel(image(0x40_0000, 0x2000), RAM_BASE, RAM_SIZE, FakeRam().write)
    assert (k.entry, k.start) == (0x8040_0000, 0x8040_0000)


def test_image_size_zero_means_file_size() -> None:
    data = image(0x20_0000, 0, body=0x3000)
    k = load_kernel(data, RAM_BASE, RAM_SIZE, FakeRam().write)
    assert k.end == KERNEL_ADDR + 0x3000


def test_image_too_big_for_ram() -> None:
    ram = FakeRam()
    with pytest.raises(ConfigError, match=r"RAM 0x80000000\.\.0x82000000 \(32 MiB\).*raise --mem"):
        load_kernel(image(0x20_0000, 40 * MIB), RAM_BASE, RAM_SIZE, ram.write)
    assert ram.writes == []


def test_big_endian_image_is_rejected() -> None:
    with pytest.raises(ConfigError, match="big-endian"):
        load_kernel(image(0x20_0000, 0x2000, flags=1), RAM_BASE, RAM_SIZE, FakeRam().write)


def test_image_detected_by_old_magic_alone() -> None:
    data = bytearray(image(0x20_0000, 0x2000))
    data[56:60] = b"\0\0\0\0"
    k = load_kernel(bytes(data), RAM_BASE, RAM_SIZE, FakeRam().write)
    assert k.kind == "image"
    assert k.end == KERNEL_ADDR + 0x2000


# --- raw --------------------------------------------------------------------------------------


def test_raw_binary_loads_at_kernel_addr() -> None:
    data = bytes(range(256)) * 5
    ram = FakeRam()
    k = load_kernel(data, RAM_BASE, RAM_SIZE, ram.write)
    assert k == LoadedKernel(
        kind="raw", entry=KERNEL_ADDR, start=KERNEL_ADDR, end=KERNEL_ADDR + len(data)
    )
    assert ram.read(KERNEL_ADDR, len(data)) == data
    assert ram.writes == [(KERNEL_ADDR, len(data))]


def test_raw_binary_too_big_for_ram() -> None:
    data = b"\x13" * (MEM_MIN - 1 * MIB)  # 15 MiB at 2 MiB into 16 MiB of RAM
    ram = FakeRam(size=MEM_MIN)
    with pytest.raises(
        ConfigError, match=r"\(17 MiB from the start of RAM\).*\(16 MiB\).*raise --mem"
    ):
        load_kernel(data, RAM_BASE, MEM_MIN, ram.write)
    assert ram.writes == []


def test_empty_kernel_is_rejected() -> None:
    with pytest.raises(ConfigError, match="kernel file is empty"):
        load_kernel(b"", RAM_BASE, RAM_SIZE, FakeRam().write)


# --- load_file --------------------------------------------------------------------------------


def test_load_file_reads_bytes(tmp_path: Path) -> None:
    p = tmp_path / "k.bin"
    p.write_bytes(b"\x01\x02\x03")
    assert load_file(p) == b"\x01\x02\x03"
    assert load_file(str(p)) == b"\x01\x02\x03"


def test_load_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"kernel '.*nope\.elf' does not exist"):
        load_file(tmp_path / "nope.elf", "kernel")


def test_load_file_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_file(tmp_path, "initrd")


def test_load_file_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root (as in CI) reads files whatever their mode, so make open() refuse as it would for
    # an unprivileged user: the test is of the message, not of the kernel's permission check.
    p = tmp_path / "secret"
    p.write_bytes(b"x")
    real_open = os.open

    def refusing_open(file: object, *args: object, **kwargs: object) -> object:
        if os.fspath(file) == os.fspath(p):  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", os.fspath(p))
        return real_open(file, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("os.open", refusing_open)
    with pytest.raises(ConfigError, match="not readable"):
        load_file(p)


# --- plan_layout ------------------------------------------------------------------------------


def test_layout_places_dtb_in_top_2mib_and_initrd_below() -> None:
    ram_size = 128 * MIB
    ram_end = RAM_BASE + ram_size
    initrd_size = 3 * MIB + 5
    lay = plan_layout(RAM_BASE, ram_size, KERNEL_ADDR + 8 * MIB, initrd_size, 2182)
    assert lay.dtb_addr == ram_end - 2 * MIB == 0x87E0_0000
    assert lay.dtb_addr % 8 == 0
    assert lay.dtb_addr + 2182 <= ram_end
    assert lay.initrd_start is not None and lay.initrd_end is not None
    assert lay.initrd_start % 4096 == 0
    assert lay.initrd_end - lay.initrd_start == initrd_size
    assert lay.initrd_end <= lay.dtb_addr
    assert lay.dtb_addr - lay.initrd_end < 4096  # right below the DTB
    assert lay.initrd == (lay.initrd_start, lay.initrd_end)


@pytest.mark.parametrize("initrd_size", [None, 0])
def test_layout_without_initrd(initrd_size: int | None) -> None:
    lay = plan_layout(RAM_BASE, 64 * MIB, KERNEL_ADDR + MIB, initrd_size, 4000)
    assert lay == Layout(initrd_start=None, initrd_end=None, dtb_addr=RAM_BASE + 62 * MIB)
    assert lay.initrd is None


@pytest.mark.parametrize("ram_mib", [16, 17, 100, 4096 + 3])
@pytest.mark.parametrize("kernel_mib", [1, 6])
@pytest.mark.parametrize("initrd_size", [1, 4095, 4096, 3 * MIB + 1])
def test_layout_never_overlaps(ram_mib: int, kernel_mib: int, initrd_size: int) -> None:
    ram_size = ram_mib * MIB
    kernel_end = KERNEL_ADDR + kernel_mib * MIB + 123
    dtb_size = 5000
    lay = plan_layout(RAM_BASE, ram_size, kernel_end, initrd_size, dtb_size)
    assert lay.initrd_start is not None and lay.initrd_end is not None
    assert kernel_end <= lay.initrd_start < lay.initrd_end <= lay.dtb_addr
    assert lay.dtb_addr + dtb_size <= RAM_BASE + ram_size
    assert RAM_BASE + ram_size - lay.dtb_addr <= 2 * MIB
    assert lay.dtb_addr % 8 == 0 and lay.initrd_start % 4096 == 0


def test_initrd_too_large() -> None:
    with pytest.raises(
        ConfigError, match=r"^initrd of 200 MiB does not fit in 128 MiB of RAM; raise --mem$"
    ):
        plan_layout(RAM_BASE, 128 * MIB, KERNEL_ADDR + MIB, 200 * MIB, 4000)


def test_initrd_that_would_overlap_the_kernel() -> None:
    # 100 MiB initrd + 30 MiB kernel > 128 MiB: it would fit in RAM alone but not next to the kernel
    with pytest.raises(ConfigError, match=r"^initrd of 100 MiB does not fit in 128 MiB of RAM"):
        plan_layout(RAM_BASE, 128 * MIB, KERNEL_ADDR + 30 * MIB, 100 * MIB, 4000)


def test_no_room_for_dtb() -> None:
    with pytest.raises(ConfigError, match=r"no room for the device tree.*raise --mem"):
        plan_layout(RAM_BASE, 16 * MIB, RAM_BASE + 15 * MIB, None, 4000)


# --- together ---------------------------------------------------------------------------------


def test_kernel_initrd_and_dtb_boot_layout(elfs: dict[str, bytes]) -> None:
    ram = FakeRam()
    k = load_kernel(elfs["kernel"], RAM_BASE, RAM_SIZE, ram.write)
    initrd = b"070701" + bytes(10_000)
    # the blob's size does not depend on the initrd's addresses: measure, plan, build
    probe = DeviceTreeSpec(RAM_BASE, RAM_SIZE, "console=ttyS0", (RAM_BASE, RAM_BASE + len(initrd)))
    lay = plan_layout(RAM_BASE, RAM_SIZE, k.end, len(initrd), len(build_device_tree(probe)))
    assert lay.initrd is not None
    dtb = build_device_tree(DeviceTreeSpec(RAM_BASE, RAM_SIZE, "console=ttyS0", lay.initrd))
    assert len(dtb) == len(build_device_tree(probe))
    ram.write(lay.initrd[0], initrd)
    ram.write(lay.dtb_addr, dtb)
    tree = fdt.parse_dtb(ram.read(lay.dtb_addr, len(dtb)))
    start = tree.get_property("linux,initrd-start", "/chosen").data
    end = tree.get_property("linux,initrd-end", "/chosen").data
    assert ((start[0] << 32) | start[1], (end[0] << 32) | end[1]) == lay.initrd
    assert ram.read(lay.initrd[0], len(initrd)) == initrd
    assert k.end <= lay.initrd[0]


def test_text_is_not_a_raw_binary() -> None:
    """A text file (no NUL, no control bytes but tab and line ends) is refused; a lab file
    (TOML with [vms] or [switches]) is named as one. Code with such bytes is still raw."""
    with pytest.raises(ConfigError, match=r"a lab file \(TOML\), not a kernel"):
        load_kernel(
            b'[switches.lan]\n[vms.a]\nkernel = "ping"\n', RAM_BASE, RAM_SIZE, FakeRam().write
        )
    with pytest.raises(ConfigError, match="is text, not a kernel"):
        load_kernel("a note, ünïcödé\r\n\tand more\n".encode(), RAM_BASE, RAM_SIZE, FakeRam().write)
    for code in (b"\x6f\x00\x00\x00", b"\x13\x05\x10\x02\x6f\xf0\xdf\xff", b"\xff" * 8):
        assert load_kernel(code, RAM_BASE, RAM_SIZE, FakeRam().write).kind == "raw"
