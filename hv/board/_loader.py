"""Putting a guest's kernel, initrd and device tree into its RAM.

A kernel file is one of:

- an ELF file for riscv64: its ``PT_LOAD`` segments go to their physical addresses (``p_paddr``),
  with the part of each segment beyond the file's bytes (``.bss``) zeroed;
- a Linux riscv ``Image`` (the boot image header, magic ``RSC\\x05`` at offset 56): loaded at
  ``ram_base + text_offset`` (the 2 MiB convention,
  :data:`~hv.hw._platform.KERNEL_ADDR`, when the
  header says 0), reserving ``image_size`` bytes;
- anything else, taken as a raw binary and loaded at :data:`~hv.hw._platform.KERNEL_ADDR`;
  but not text (UTF-8 with no NUL and no control bytes other than tab, CR, LF, FF: machine
  code always has some), which is refused, a lab file (``hv run lab.toml`` for ``hv up``)
  named as one.

Every check runs before the first byte is written, so a rejected file leaves RAM untouched.
"""

from __future__ import annotations

import functools
import io
import os
import re
import stat
import struct
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from hv._errors import ConfigError
from hv.hw import KERNEL_ADDR, RAM_BASE

KIB = 1024
MIB = 1024 * KIB
PAGE_SIZE = 4 * KIB
DTB_ALIGN = 2 * MIB  # the device tree sits at a 2 MiB boundary near the top of RAM (as QEMU)
KERNEL_OFFSET = KERNEL_ADDR - RAM_BASE  # where S-mode kernels go, relative to the start of RAM

PF_X = 1

IMAGE_HEADER = struct.Struct("<IIQQQII Q 8s 4s I")  # Documentation/arch/riscv/boot-image-header
IMAGE_MAGIC = b"RISCV\0\0\0"  # at offset 48; deprecated but still written
IMAGE_MAGIC2 = b"RSC\x05"  # at offset 56
IMAGE_FLAG_BE = 1  # flags bit 0: kernel endianness, 1 = big-endian

KernelKind = Literal["elf", "image", "raw"]
WriteFn = Callable[[int, bytes], None]

# Friendlier names for the architectures people most often pass by mistake.
_MACHINE_NAMES = {
    "EM_X86_64": "x86-64",
    "EM_386": "i386",
    "EM_AARCH64": "AArch64 (arm64)",
    "EM_ARM": "32-bit ARM",
    "EM_PPC64": "64-bit PowerPC",
    "EM_PPC": "32-bit PowerPC",
    "EM_MIPS": "MIPS",
    "EM_S390": "s390",
    "EM_SPARCV9": "SPARC v9",
    "EM_LOONGARCH": "LoongArch",
}


class NotAKernel(ConfigError):
    """The kernel file is text (``lab``: a lab file), not a kernel."""

    def __init__(self, message: str, *, lab: bool) -> None:
        super().__init__(message)
        self.lab = lab


# Bytes no text file holds (C0 controls but tab, LF, VT, FF, CR; and DEL); code has some.
_NOT_TEXT = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f]")
# A lab file's tables, for one with a syntax error that TOML cannot read.
_LAB_TABLE = re.compile(r"^\s*\[\[?\s*(vms|switches|links)\b", re.MULTILINE)


def _refuse_text(data: bytes) -> None:
    """NotAKernel if ``data`` is text, not code."""
    if _NOT_TEXT.search(data):
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    try:
        doc = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        lab = _LAB_TABLE.search(text) is not None
    else:
        lab = any(isinstance(doc.get(key), (dict, list)) for key in ("vms", "switches", "links"))
    if lab:
        raise NotAKernel(
            "the kernel file is a lab file (TOML), not a kernel: did you mean 'hv up'?", lab=True
        )
    raise NotAKernel(
        "the kernel file is text, not a kernel (an ELF, a Linux Image or a raw binary)",
        lab=False,
    )


@dataclass(frozen=True)
class LoadedKernel:
    """Where a kernel went: ``[start, end)`` is physical and covers its bss / image_size."""

    kind: KernelKind
    entry: int
    start: int
    end: int


@dataclass(frozen=True)
class Layout:
    """Where the initrd (if any) and the device tree go in RAM."""

    initrd_start: int | None
    initrd_end: int | None  # exclusive
    dtb_addr: int

    @property
    def initrd(self) -> tuple[int, int] | None:
        """``(start, end)`` as :class:`hv.board._fdt.DeviceTreeSpec` takes it, or None."""
        if self.initrd_start is None or self.initrd_end is None:
            return None
        return (self.initrd_start, self.initrd_end)


@dataclass(frozen=True)
class _Chunk:
    addr: int
    data: bytes
    zero: int  # bytes of zeros that follow `data`


# The largest kernel or initrd file hv reads (more than any guest RAM could take in practice).
FILE_LIMIT = 2 << 30


def load_file(path: str | os.PathLike[str], what: str = "file", limit: int = FILE_LIMIT) -> bytes:
    """Read a whole regular file, or raise ConfigError saying why it cannot be used.

    Only regular files: a device (/dev/zero reads without end) or a FIFO (blocks until a
    writer comes) is refused, as is a file over ``limit`` bytes. The file is opened without
    blocking, so a FIFO cannot hang the caller."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"{what} {name!r} does not exist; check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {name!r} is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(f"{what} {name!r} is not readable (permission denied)") from None
    except OSError as e:
        raise ConfigError(f"cannot open {what} {name!r}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{what} {name!r} is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what} {name!r} is not a regular file (a device, FIFO or socket)")
        if st.st_size > limit:
            raise ConfigError(
                f"{what} {name!r} is {st.st_size >> 20} MiB, over the {limit >> 20} MiB limit"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise ConfigError(f"cannot read {what} {name!r}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(f"{what} {name!r} grew past the {limit >> 20} MiB limit while read")
    return data


def save_file(path: str | os.PathLike[str], data: bytes, what: str = "file") -> None:
    """Write ``data`` as the whole of the regular file ``path`` (created if need be), or raise
    ConfigError saying why it cannot be. Anything else is refused before it is opened for
    writing (a FIFO would block until a reader came); the open does not block either, and the
    file is truncated only once it is known to be a regular file."""
    name = os.fspath(path)
    try:
        if os.path.exists(name) and not stat.S_ISREG(mode := os.stat(name).st_mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a device, FIFO or socket"
            raise ConfigError(f"{what} {name!r} is {kind}, not a regular file")
        flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(name, flags, 0o666)
    except (OSError, ValueError) as e:
        why = (e.strerror if isinstance(e, OSError) else None) or e
        raise ConfigError(f"cannot write {what} {name!r}: {why}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{what} {name!r} is not a regular file (a device, FIFO or socket)")
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as e:
        raise ConfigError(f"cannot write {what} {name!r}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def load_kernel(data: bytes, ram_base: int, ram_size: int, write: WriteFn) -> LoadedKernel:
    """Detect the kernel's format, check it fits in RAM, and write it with ``write(addr, data)``."""
    if not data:
        raise ConfigError("the kernel file is empty; pass an ELF, a Linux Image or a raw binary")
    kind: KernelKind
    chunks: list[_Chunk] | tuple[_Chunk, ...]
    if data[:4] == b"\x7fELF":
        kind = "elf"
        chunks, entry = (
            _elf_chunks_cached(data) if len(data) <= ELF_CACHE_MAX else _elf_chunks(data)
        )
    elif _is_image(data):
        kind = "image"
        chunks, entry = _image_chunks(data, ram_base)
    else:
        _refuse_text(data)
        kind = "raw"
        entry = ram_base + KERNEL_OFFSET
        chunks = [_Chunk(entry, data, 0)]

    start = min(c.addr for c in chunks)
    end = max(c.addr + len(c.data) + c.zero for c in chunks)
    ram_end = ram_base + ram_size
    for c in chunks:
        _check_in_ram(kind, c.addr, c.addr + len(c.data) + c.zero, start, end, ram_base, ram_end)
    if not ram_base <= entry < ram_end:
        raise ConfigError(
            f"kernel entry point {entry:#x} lies outside RAM {ram_base:#x}..{ram_end:#x}; "
            f"link the kernel to run at {ram_base + KERNEL_OFFSET:#x}"
        )
    for c in chunks:
        if c.data:
            write(c.addr, c.data)
        if c.zero:
            write(c.addr + len(c.data), bytes(c.zero))
    return LoadedKernel(kind=kind, entry=entry, start=start, end=end)


def plan_layout(
    ram_base: int, ram_size: int, kernel_end: int, initrd_size: int | None, dtb_size: int
) -> Layout:
    """Place the device tree near the top of RAM and the initrd just below it.

    The device tree goes at the highest 2 MiB boundary it fits above (QEMU's choice, so it is in
    the top 2 MiB of RAM and 8-byte aligned); the initrd ends at or below it, page-aligned.
    Neither may overlap the kernel, which ends at ``kernel_end``. ``initrd_size`` of None or 0
    means no initrd.
    """
    ram_end = ram_base + ram_size
    if dtb_size <= 0:
        raise ValueError(f"device tree size {dtb_size} must be positive")
    if initrd_size is not None and initrd_size < 0:
        raise ValueError(f"initrd size {initrd_size} must not be negative")
    floor = _align_up(max(kernel_end, ram_base), PAGE_SIZE)  # first byte free above the kernel
    dtb_addr = _align_down(ram_end - dtb_size, DTB_ALIGN)
    if dtb_addr < floor:
        raise ConfigError(
            f"the kernel (ending at {kernel_end:#x}) leaves no room for the device tree in "
            f"{_mib(ram_size)} MiB of RAM; raise --mem"
        )
    if not initrd_size:
        return Layout(initrd_start=None, initrd_end=None, dtb_addr=dtb_addr)
    initrd_start = _align_down(dtb_addr - initrd_size, PAGE_SIZE)
    if initrd_start < floor:
        # (below the device tree and above the kernel)
        raise ConfigError(
            f"initrd of {_mib(initrd_size)} MiB does not fit in {_mib(ram_size)} MiB of RAM; "
            "raise --mem"
        )
    return Layout(
        initrd_start=initrd_start, initrd_end=initrd_start + initrd_size, dtb_addr=dtb_addr
    )


# --- ELF ------------------------------------------------------------------------------------


# ELF files up to this size have their parse kept (a lab of 1,000 guests boots a few kernels
# over and over; pyelftools takes milliseconds per parse).
ELF_CACHE_MAX = 4 << 20


@functools.lru_cache(maxsize=16)
def _elf_chunks_cached(data: bytes) -> tuple[tuple[_Chunk, ...], int]:
    chunks, entry = _elf_chunks(data)
    return tuple(chunks), entry


def _elf_chunks(data: bytes) -> tuple[list[_Chunk], int]:
    # Imported here: pyelftools costs ~40 ms to import, and a Linux Image never needs it.
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    if data[5:6] == b"\x02":  # EI_DATA: big-endian (pyelftools would misread e_machine)
        bits = 32 if data[4:5] == b"\x01" else 64
        raise ConfigError(
            f"the kernel is a big-endian {bits}-bit ELF file; hv-virt runs little-endian "
            "riscv64 (build for riscv64, e.g. -target riscv64-freestanding-none)"
        )
    try:
        elf = ELFFile(io.BytesIO(data))
        header = elf.header
        machine = str(header["e_machine"])
        elfclass = int(elf.elfclass)
        little = bool(elf.little_endian)
        if machine != "EM_RISCV" or elfclass != 64 or not little:
            raise ConfigError(f"{_describe_elf(machine, elfclass, little)}, not riscv64")
        e_entry = int(header["e_entry"])
        segments = [
            (
                int(seg["p_paddr"]),
                int(seg["p_vaddr"]),
                int(seg["p_offset"]),
                int(seg["p_filesz"]),
                int(seg["p_memsz"]),
                int(seg["p_flags"]),
            )
            for seg in elf.iter_segments()
            if seg["p_type"] == "PT_LOAD"
        ]
    except ConfigError:
        raise
    except (ELFError, struct.error, ValueError, OSError) as e:
        raise ConfigError(f"the kernel file is a damaged or truncated ELF file ({e})") from None

    chunks: list[_Chunk] = []
    entry = e_entry
    for paddr, vaddr, offset, filesz, memsz, flags in segments:
        if filesz > memsz:
            raise ConfigError(
                f"ELF segment at {paddr:#x} has more file bytes ({filesz}) than memory "
                f"bytes ({memsz}); the file is damaged"
            )
        if offset + filesz > len(data):
            raise ConfigError(
                f"ELF segment at {paddr:#x} runs past the end of the file "
                f"({offset + filesz} > {len(data)} bytes); the file is truncated"
            )
        if memsz == 0:
            continue
        chunks.append(_Chunk(paddr, data[offset : offset + filesz], memsz - filesz))
        # e_entry is virtual; when a kernel is linked with virtual != physical addresses
        # (a vmlinux), run it at the physical address of the code it names.
        if flags & PF_X and vaddr != paddr and vaddr <= e_entry < vaddr + filesz:
            entry = e_entry - vaddr + paddr
    if not chunks:
        raise ConfigError(
            "the kernel ELF file has no loadable (PT_LOAD) segments; "
            "pass a linked executable, not an object file"
        )
    return chunks, entry


def _describe_elf(machine: str, elfclass: int, little: bool) -> str:
    if machine == "EM_RISCV":
        name = f"riscv{elfclass}"
    elif machine.isdigit():  # a machine number pyelftools has no name for
        name = f"machine {machine}"
    else:
        name = _MACHINE_NAMES.get(machine, machine.removeprefix("EM_"))
    return f"ELF for {name}" if little else f"big-endian ELF for {name}"


# --- Linux Image ------------------------------------------------------------------------------


def is_linux_image(data: bytes) -> bool:
    """Is ``data`` a RISC-V Linux ``Image`` (the boot header's magic)?"""
    return _is_image(data)


def _is_image(data: bytes) -> bool:
    if len(data) < IMAGE_HEADER.size:
        return False
    return data[56:60] == IMAGE_MAGIC2 or data[48:56] == IMAGE_MAGIC


def _image_chunks(data: bytes, ram_base: int) -> tuple[list[_Chunk], int]:
    fields = IMAGE_HEADER.unpack_from(data)
    text_offset, image_size, flags = fields[2], fields[3], fields[4]
    if flags & IMAGE_FLAG_BE:
        raise ConfigError("the kernel Image is built big-endian; hv-virt runs little-endian")
    load = ram_base + (text_offset or KERNEL_OFFSET)
    size = max(image_size, len(data))  # image_size 0: an old header that does not say
    return [_Chunk(load, data, size - len(data))], load


# --- helpers ----------------------------------------------------------------------------------


def _check_in_ram(
    kind: str, lo: int, hi: int, start: int, end: int, ram_base: int, ram_end: int
) -> None:
    if ram_base <= lo and hi <= ram_end:
        return
    ram = f"RAM {ram_base:#x}..{ram_end:#x} ({_mib(ram_end - ram_base)} MiB)"
    what = {"elf": "ELF segment", "image": "Image", "raw": "raw binary"}[kind]
    if lo < ram_base:
        raise ConfigError(
            f"kernel {what} at {lo:#x}..{hi:#x} lies below {ram}; "
            f"link the kernel to run at {ram_base + KERNEL_OFFSET:#x}"
        )
    if lo >= ram_end:
        raise ConfigError(
            f"kernel {what} at {lo:#x}..{hi:#x} lies above the end of {ram}; "
            f"raise --mem to at least {_mib(end - ram_base)} MiB "
            f"or link the kernel to run at {ram_base + KERNEL_OFFSET:#x}"
        )
    raise ConfigError(
        f"kernel needs {start:#x}..{end:#x} ({_mib(end - ram_base)} MiB from the start of RAM) "
        f"but {ram} ends at {ram_end:#x}; raise --mem"
    )


def _align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def _align_down(x: int, a: int) -> int:
    return x // a * a


def _mib(n: int) -> str:
    """``n`` bytes in MiB: whole numbers plain, others to one decimal (rounded up)."""
    if n % MIB == 0:
        return str(n // MIB)
    tenths = -(-n * 10 // MIB)
    return f"{tenths // 10}.{tenths % 10}"
