"""The bundled firmware guests: small S-mode C programs built with zig and cached.

Sources live in the package (``hv/guests/runtime`` is shared, ``hv/guests/<name>`` holds one
guest each). A guest is built from the runtime and its own directory with
``python -m ziglang cc`` and cached by content hash (:func:`hv.build._zig.cached_build`), so editing
any source rebuilds and an unchanged tree reuses the cached ELF.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from hv._errors import ConfigError
from hv.build._progress import Progress, step_line
from hv.build._zig import cache_dir, cached_build, cached_output, run_zig

GUESTS: dict[str, str] = {
    "hello": "prints a greeting with its hart id and device tree address, then shuts down",
    "sleep": "sleeps in wfi on the SBI timer (bootargs ms=, count=) and prints elapsed times",
    "fault": "takes a fatal fault on purpose (bootargs mode=novector|handler|loop|fetch|ebreak)",
    "cpu": "deterministic CPU-bound workload (CRC32 + integer mix), prints a checksum (iters=)",
    "traps": "self-checking trap test: scause/sepc/stval of exceptions, Sv39 faults, U-mode ecall",
    "sbi": "self-checking SBI v2.0 test: BASE, TIME, IPI, RFENCE, HSM, SRST, DBCN, legacy",
    "smp": "self-checking multi-hart test (smp 2..8): HSM, AMO and LR/SC races, IPI, RFENCE",
    "echo": "echoes console input via UART RX interrupts through the PLIC; 'q' quits",
    "exits": "benchmark: repeats one exit kind n times (kind=none|sbi|mmio|rdtime|trap|timer n=)",
    "smc": "self-checking self-modifying code test: rewrites, page crossings, Sv39 aliases, loader",
    "dma": "checks that a host write (device DMA) over code it ran is what it runs next",
    "ping": "pings peer=A.B.C.D over virtio-net and prints a summary (ip=, count=, interval=)",
    "udpecho": "answers pings and echoes UDP (port=7) until stopped",
    "udpgen": "UDP load generator against an echo server: sent, echoed, lost, datagrams/s",
    "blktest": "virtio-blk: writes a pattern, FLUSH, reads back (blk.mode=write|verify|"
    "write-flush-hang blk.sectors= blk.seed=)",
}

TARGET = "riscv64-freestanding-none"
CFLAGS: tuple[str, ...] = (
    "-target",
    TARGET,
    "-mcmodel=medany",
    "-nostdlib",
    "-ffreestanding",
    "-fno-sanitize=all",
    "-O2",
    "-g",
    "-ffunction-sections",
    "-fdata-sections",
    "-Wl,--gc-sections",
    "-Wall",
    "-Wextra",
)
SOURCE_SUFFIXES = frozenset({".c", ".S", ".h", ".ld"})
COMPILE_SUFFIXES = frozenset({".c", ".S"})


def guests_dir() -> Path:
    """Directory holding ``runtime/`` and one directory per guest (inside the package)."""
    return Path(__file__).parent.parent / "guests"


def guest_names() -> list[str]:
    return list(GUESTS)


def _check_name(name: str) -> None:
    if name not in GUESTS:
        known = ", ".join(sorted(GUESTS))
        raise ConfigError(f"unknown guest {name!r}; known guests: {known}")


def _sources(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise ConfigError(f"guest sources missing: {directory} is not a directory")
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in SOURCE_SUFFIXES)


def _plan(name: str, src_root: Path | None) -> tuple[list[Path], list[str], Callable[[Path], None]]:
    """(inputs, key flags, build function) of guest ``name``."""
    _check_name(name)
    root = src_root if src_root is not None else guests_dir()
    runtime = root / "runtime"
    guest = root / name
    rt_files = _sources(runtime)
    guest_files = _sources(guest)
    inputs = rt_files + guest_files
    # content_key hashes file names, not paths: add the layout so a moved file rebuilds.
    key_flags = [*CFLAGS, *(str(p.relative_to(root)) for p in inputs)]
    compile_units = [str(p) for p in inputs if p.suffix in COMPILE_SUFFIXES]

    def build(out: Path) -> None:
        run_zig(
            [
                "cc",
                *CFLAGS,
                f"-I{guest}",
                f"-I{runtime}",
                "-T",
                str(runtime / "link.ld"),
                "-o",
                str(out),
                *compile_units,
            ]
        )

    return inputs, key_flags, build


# (name, source root, cache folder, each input's path, mtime and size) -> the ELF built from
# them: a lab of 1,000 guests asks for the same few guests over and over, and hashing the
# sources each time costs milliseconds.
_built: dict[tuple[object, ...], Path] = {}


def build_guest(name: str, *, src_root: Path | None = None) -> Path:
    """Build guest ``name`` (or reuse the cached build) and return the ELF's path.

    ``src_root`` overrides the source tree (a directory with ``runtime/`` and ``<name>/``);
    by default the sources shipped in the package are used.
    """
    inputs, key_flags, build = _plan(name, src_root)
    stamp = (
        name,
        src_root,
        cache_dir(),
        *((p, st.st_mtime_ns, st.st_size) for p in inputs for st in [p.stat()]),
    )
    known = _built.get(stamp)
    if known is not None and known.is_file():
        return known
    out = cached_build(f"guest-{name}.elf", inputs, key_flags, build)
    _built[stamp] = out
    return out


def guest_is_built(name: str, *, src_root: Path | None = None) -> bool:
    inputs, key_flags, _ = _plan(name, src_root)
    return cached_output(f"guest-{name}.elf", inputs, key_flags).is_file()


def build_guests(
    names: Iterable[str], progress: Progress | None = None, *, src_root: Path | None = None
) -> dict[str, Path]:
    """Build the guests ``names`` (each a few seconds with zig), name -> ELF path; those not
    in the cache yet are reported as steps, ``[3/14] building udpecho``."""
    wanted = list(dict.fromkeys(names))
    todo = [n for n in wanted if not guest_is_built(n, src_root=src_root)]
    for i, name in enumerate(todo, start=1):
        if progress is not None:
            progress(step_line(i, len(todo), f"building {name}"))
        build_guest(name, src_root=src_root)
    if todo and progress is not None:
        progress(f"built {len(todo)} guest{'s' if len(todo) > 1 else ''}")
    return {n: build_guest(n, src_root=src_root) for n in wanted}


def build_all(progress: Progress | None = None) -> dict[str, Path]:
    """Build every bundled guest; name -> ELF path."""
    return build_guests(GUESTS, progress)


def guest_path(name: str) -> Path:
    """Path of the guest's ELF, building it first if needed."""
    return build_guest(name)
