"""Hostile and careless lab files: whatever the bytes, ``hv up`` says one line naming the file
or the key and exits 4 (bad input), before anything starts; no traceback, no hang, and no
file of the user's destroyed by a capture."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hv import ConfigError
from hv.lab import load_lab, parse_lab
from hv.lab._runner import run_lab
from hv.lab._spec import DISK_KEYS, LAB_KEYS, NIC_KEYS, SWITCH_KEYS, VM_KEYS, parse_doc


def hv_up(lab: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hv.cli", "up", str(lab), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    """The one line ``hv`` printed on stderr for bad input (status 4, no traceback)."""
    assert r.returncode == 4, r.stdout[-1000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr.strip()


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    return path


# -- the file itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'[vms.a]\nkernel = "hel\xfflo"\n', "is not UTF-8 text"),
        (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
        (b"a = " + b"{b = " * 5000 + b"1" + b"}" * 5000 + b"\n", "nested too deeply"),
    ],
    ids=["utf8", "arrays", "tables"],
)
def test_a_lab_file_that_is_not_toml_text_is_one_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    lab = write(tmp_path / "bad.toml", content)
    with pytest.raises(ConfigError, match=message):
        load_lab(lab)
    line = one_line(hv_up(lab))
    assert line.startswith(f"hv: {lab}: ") and message in line


def test_a_fifo_as_the_lab_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args in ((), ("-d",)):
        line = one_line(hv_up(fifo, *args, timeout=30))
        assert line == f"hv: lab file {str(fifo)!r} is not a regular file (a FIFO)", line


# -- keys ------------------------------------------------------------------------------


def test_quantum_zero_is_refused_with_the_valid_range(tmp_path: Path) -> None:
    vm = '[vms.a]\nkernel = "hello"\n'
    for value in ("0", "-5", "999", "true", "1_000_000_001"):
        with pytest.raises(ConfigError) as e:
            parse_lab(f"{vm}quantum = {value}\n", tmp_path)
        assert str(e.value).startswith("vms.a.quantum: "), str(e.value)
        assert "1000..1000000000" in str(e.value), str(e.value)
    assert parse_lab(f"{vm}quantum = 1000\n", tmp_path).vms["a"].quantum == 1000


@pytest.mark.parametrize(("disks", "nics"), [(33, 0), (9, 0), (7, 2), (26, 0)])
def test_too_many_devices_for_the_slots_is_one_line(tmp_path: Path, disks: int, nics: int) -> None:
    files = ", ".join(f'"d{i}.img"' for i in range(disks))
    ports = ", ".join(['{ switch = "lan" }'] * nics)
    text = f'[switches.lan]\n[vms.a]\nkernel = "hello"\ndisks = [{files}]\nnics = [{ports}]\n'

    lab = write(tmp_path / "many.toml", text)
    for i in range(disks):
        (tmp_path / f"d{i}.img").write_bytes(bytes(4096))
    line = one_line(hv_up(lab))
    assert line == (
        f"hv: vms.a.disks: {disks} disks and {nics} NICs, but hv-virt has 8 virtio slots "
        "(one per disk or NIC)"
    ), line


async def start(text: str, base: Path, **kw: Any) -> None:
    """Run the lab until it is up, then stop it; what refused it, out of its nurseries."""
    spec = parse_lab(text, base)
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    lambda task_status: run_lab(spec, task_status=task_status, **kw)
                )
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        leaves = group
        while isinstance(leaves, BaseExceptionGroup) and len(leaves.exceptions) == 1:
            leaves = leaves.exceptions[0]
        raise leaves from None


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ('kernel = "./nope.elf"', "vms.srv.kernel: kernel '{base}/nope.elf' does not exist"),
        ('kernel = "nope"', "vms.srv.kernel: kernel 'nope' not found"),
        ('kernel = "hello"\ninitrd = "gone.img"', "vms.srv.initrd: initrd '{base}/gone.img'"),
        ('kernel = "hello"\ndisks = ["a.img", "gone.img"]', "vms.srv.disks[1]: "),
        ('kernel = "hello"\ndisks = [{ file = "gone.img" }]', "vms.srv.disks[0]: "),
    ],
    ids=["kernel-path", "kernel-name", "initrd", "disk", "disk-table"],
)
async def test_a_missing_file_names_its_key(tmp_path: Path, keys: str, message: str) -> None:
    (tmp_path / "a.img").write_bytes(bytes(4096))
    with pytest.raises(ConfigError) as e:
        await start(f"[vms.srv]\n{keys}\n", tmp_path)
    assert str(e.value).startswith(message.format(base=tmp_path)), str(e.value)


# -- a fuzzer: only ConfigError comes out ------------------------------------------------

_KEYS = sorted(LAB_KEYS | SWITCH_KEYS | VM_KEYS | NIC_KEYS | DISK_KEYS | {"a", "b", "file"})
_scalars = (
    st.booleans()
    | st.integers(min_value=-(1 << 64), max_value=1 << 64)
    | st.floats(allow_nan=True)
    | st.sampled_from(["lan", "dhcp", "hello", "10.0.0.0/24", "10.0.0.5", "1h", "x.img", "", "\0"])
    | st.text(max_size=12)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=25,
)
_docs = st.fixed_dictionaries(
    {},
    optional={
        "name": _values,
        "switches": st.dictionaries(st.sampled_from(["lan", "wan", "X"]), _values, max_size=3),
        "vms": st.dictionaries(st.sampled_from(["a", "b", "-"]), _values, max_size=3),
        "links": _values,
    },
)
_BASE = Path("/nonexistent-hv-fuzz")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_docs)
def test_random_lab_tables_give_config_errors_only(doc: dict[str, Any]) -> None:
    with contextlib.suppress(ConfigError):
        parse_doc(doc, _BASE)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_random_lab_bytes_give_config_errors_only(data: bytes, tmp_path_factory: Any) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.toml"
    path.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_lab(path)


# -- captures never destroy a file -------------------------------------------------------

PCAPNG = bytes.fromhex("0a0d0d0a1c0000004d3c2b1a01000000ffffffffffffffff1c000000")
CAPTURED = """
[switches.lan]
capture = "{sw}"
[vms.a]
kernel = "hello"
nics = [{{ switch = "lan", capture = "{nic}" }}]
disks = ["d.img"]
"""


def capture_lab(tmp_path: Path, sw: str, nic: str = "a.pcapng") -> Path:
    (tmp_path / "d.img").write_bytes(bytes(4096))
    return write(tmp_path / "lab.toml", CAPTURED.format(sw=sw, nic=nic))


@pytest.mark.parametrize(
    ("sw", "nic", "message"),
    [
        ("lab.toml", "a.pcapng", "switches.lan.capture: '{base}/lab.toml' is the lab file"),
        ("./sub/../lab.toml", "a.pcapng", "switches.lan.capture: '{base}/sub/../lab.toml' is"),
        ("d.img", "a.pcapng", "switches.lan.capture: '{base}/d.img' is vms.a.disks[0]'s image"),
        ("x.pcapng", "x.pcapng", "vms.a.nics[0].capture: '{base}/x.pcapng' is also switches.lan"),
        ("notes.txt", "a.pcapng", "switches.lan.capture: '{base}/notes.txt' exists and is not"),
        ("fifo", "a.pcapng", "switches.lan.capture: '{base}/fifo' is a FIFO, not a regular file"),
        ("dir", "a.pcapng", "switches.lan.capture: '{base}/dir' is a directory"),
        ("no/such/x.pcapng", "a.pcapng", "switches.lan.capture: folder '{base}/no/such' does not"),
    ],
    ids=["lab", "lab-dotted", "disk", "twice", "text", "fifo", "dir", "folder"],
)
def test_a_capture_that_would_destroy_a_file_is_refused_before_anything_starts(
    tmp_path: Path, sw: str, nic: str, message: str
) -> None:
    lab = capture_lab(tmp_path, sw, nic)
    (tmp_path / "sub").mkdir()
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    write(tmp_path / "notes.txt", "my notes\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    line = one_line(hv_up(lab, "--force") if sw != "notes.txt" else hv_up(lab))
    assert line.startswith("hv: " + message.format(base=tmp_path)), line
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # nothing written, nothing truncated, no capture made


def test_force_overwrites_a_file_that_is_not_pcapng_and_a_pcapng_needs_no_force(
    tmp_path: Path,
) -> None:
    lab = capture_lab(tmp_path, "lan.pcapng")
    write(tmp_path / "lan.pcapng", "not a capture\n")
    write(tmp_path / "a.pcapng", PCAPNG)  # an old capture: overwritten as tcpdump -w does
    assert "--force" in one_line(hv_up(lab))
    r = hv_up(lab, "--force")
    assert r.returncode == 0, r.stderr
    for name in ("lan.pcapng", "a.pcapng"):
        data = (tmp_path / name).read_bytes()
        assert data[:4] == PCAPNG[:4] and b"hvfabric" in data, name


async def test_open_lab_refuses_and_forces_like_hv_up(tmp_path: Path) -> None:
    from hv.lab import open_lab

    lab = capture_lab(tmp_path, "lan.pcapng")
    write(tmp_path / "lan.pcapng", "keep me\n")
    with pytest.raises(ConfigError, match="exists and is not a pcapng file"):
        async with open_lab(lab):
            pass
    assert (tmp_path / "lan.pcapng").read_text() == "keep me\n"
    async with open_lab(lab, force=True) as run:
        assert await run.wait() == 0
    assert (tmp_path / "lan.pcapng").read_bytes()[:4] == PCAPNG[:4]


@pytest.mark.parametrize(
    "path", ["/proc/self/status", "/proc/hv-nope.pcapng", "/proc/sys/kernel/hv-nope.pcapng"]
)
def test_a_capture_in_proc_is_one_line(tmp_path: Path, path: str) -> None:
    lab = capture_lab(tmp_path, path)
    for args in ((), ("--force",)):
        line = one_line(hv_up(lab, *args))
        assert line.startswith("hv: switches.lan.capture: ") and f"'{path}'" in line, line
