"""The bundled guests build with zig, are riscv64 ELFs entered at 0x80200000, and are cached."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

import hv.build._guests as guests
from hv._errors import ConfigError
from hv.build._zig import run_zig
from hv.hw._platform import KERNEL_ADDR, RAM_BASE


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hvfabric build cache (zig's own cache stays where it is)."""
    zig_cache = Path.home() / ".cache" / "zig"
    monkeypatch.setenv("ZIG_GLOBAL_CACHE_DIR", str(zig_cache))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def zig_calls(monkeypatch: pytest.MonkeyPatch) -> list[Sequence[str]]:
    """Record every zig invocation the guest builder makes."""
    calls: list[Sequence[str]] = []

    def recording_run_zig(args: Sequence[str], cwd: Path | None = None) -> None:
        calls.append(args)
        run_zig(args, cwd)

    monkeypatch.setattr(guests, "run_zig", recording_run_zig)
    return calls


@pytest.fixture
def src_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "guests"
    shutil.copytree(guests.guests_dir(), dst)
    return dst


def test_names_match_source_directories() -> None:
    root = guests.guests_dir()
    dirs = {p.name for p in root.iterdir() if p.is_dir() and p.name != "runtime"}
    assert set(guests.guest_names()) == dirs
    for name in guests.guest_names():
        assert (root / name / "main.c").is_file()
        assert guests.GUESTS[name]
    assert (root / "runtime" / "start.S").is_file()
    assert (root / "runtime" / "link.ld").is_file()


def test_build_all_riscv64_elfs() -> None:
    built = guests.build_all()
    assert set(built) == set(guests.guest_names())
    for name, path in built.items():
        assert path.is_file(), name
        with path.open("rb") as f:
            elf = ELFFile(f)
            assert elf.elfclass == 64, name
            assert elf["e_machine"] == "EM_RISCV", name
            assert elf["e_type"] == "ET_EXEC", name
            assert elf["e_entry"] == KERNEL_ADDR == 0x8020_0000, name
            loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
            assert loads, name
            for seg in loads:
                assert seg["p_paddr"] >= KERNEL_ADDR > RAM_BASE, name
            symbols = elf.get_section_by_name(".symtab")
            assert isinstance(symbols, SymbolTableSection)
            start = symbols.get_symbol_by_name("_start")
            assert start is not None
            assert start[0]["st_value"] == KERNEL_ADDR
        assert guests.guest_path(name) == path


def test_cpu_guest_has_no_rdtime() -> None:
    """The benchmark guest never reads the time CSR (which traps under Unicorn)."""
    path = guests.build_guest("cpu")
    with path.open("rb") as f:
        elf = ELFFile(f)
        text = elf.get_section_by_name(".text")
        assert text is not None
        code = text.data()
    # rdtime rd = csrrs rd, time, x0: 0xc0102073 | rd << 7
    words = [int.from_bytes(code[i : i + 4], "little") for i in range(0, len(code) - 3, 2)]
    assert not [hex(w) for w in words if (w & 0xFFFFF07F) == 0xC0102073]


@pytest.mark.parametrize("name", guests.guest_names())
def test_sources_are_warning_free(name: str, tmp_path: Path) -> None:
    root = guests.guests_dir()
    units = sorted(
        str(p)
        for d in (root / "runtime", root / name)
        for p in d.iterdir()
        if p.suffix in guests.COMPILE_SUFFIXES
    )
    run_zig(
        [
            "cc",
            *guests.CFLAGS,
            "-Werror",
            f"-I{root / name}",
            f"-I{root / 'runtime'}",
            "-T",
            str(root / "runtime" / "link.ld"),
            "-o",
            str(tmp_path / "out.elf"),
            *units,
        ]
    )


def test_cache_reuse_and_rebuild(
    private_cache: Path, src_copy: Path, zig_calls: list[Sequence[str]]
) -> None:
    first = guests.build_guest("hello", src_root=src_copy)
    assert first.is_relative_to(private_cache)
    assert len(zig_calls) == 1
    assert b"Hello from hvfabric guest!" in first.read_bytes()

    # Unchanged tree: the cached ELF is reused, zig is not run.
    assert guests.build_guest("hello", src_root=src_copy) == first
    assert len(zig_calls) == 1

    # An edit to the guest's source rebuilds.
    main_c = src_copy / "hello" / "main.c"
    main_c.write_text(main_c.read_text().replace("Hello from hvfabric", "Hello from edited"))
    second = guests.build_guest("hello", src_root=src_copy)
    assert second != first
    assert len(zig_calls) == 2
    assert b"Hello from edited guest!" in second.read_bytes()

    # An edit to a runtime header (not compiled by itself) rebuilds too.
    header = src_copy / "runtime" / "sbi.h"
    header.write_text(header.read_text() + "\n/* edited */\n")
    third = guests.build_guest("hello", src_root=src_copy)
    assert third not in (first, second)
    assert len(zig_calls) == 3

    # Another guest is keyed separately; the first guest's builds are still cached.
    guests.build_guest("sleep", src_root=src_copy)
    assert len(zig_calls) == 4
    assert guests.build_guest("hello", src_root=src_copy) == third
    assert len(zig_calls) == 4


def test_packaged_tree_is_cached(private_cache: Path, zig_calls: list[Sequence[str]]) -> None:
    path = guests.build_guest("hello")
    assert path.is_relative_to(private_cache)
    assert guests.build_guest("hello") == path
    assert len(zig_calls) == 1


def test_unknown_guest() -> None:
    with pytest.raises(ConfigError) as exc:
        guests.build_guest("no-such-guest")
    message = str(exc.value)
    assert "no-such-guest" in message
    for name in guests.guest_names():
        assert name in message
    with pytest.raises(ConfigError):
        guests.guest_path("runtime")


def test_an_unwritable_build_cache_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache folder that cannot be made (here: below a plain file, as a folder root cannot
    write would be for another user) is a ConfigError naming it and the variable to set, not
    a traceback from deep inside the build."""
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(not_a_folder / "cache"))
    with pytest.raises(ConfigError, match=r"cannot write hv's build cache .*XDG_CACHE_HOME"):
        guests.build_guest("hello")
