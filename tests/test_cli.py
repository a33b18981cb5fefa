"""The ``hv`` command, run as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fdt
import pytest

from hv.build._guests import GUESTS

REPO = Path(__file__).resolve().parent.parent


def hv(
    *args: str | Path, cwd: Path, stdin: bytes = b"", timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``hv ARGS`` with this interpreter and the package from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "hv.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode()
    )


def test_help_lists_commands(tmp_path: Path) -> None:
    r = hv("--help", cwd=tmp_path)
    assert r.returncode == 0
    for word in ("run", "guests", "image", "--version"):
        assert word in r.stdout


def test_no_command_prints_help(tmp_path: Path) -> None:
    r = hv(cwd=tmp_path)
    assert r.returncode == 2
    assert "usage: hv" in r.stdout


def test_run_help_lists_options(tmp_path: Path) -> None:
    r = hv("run", "--help", cwd=tmp_path)
    assert r.returncode == 0
    for option in (
        "KERNEL",
        "--mem",
        "--append",
        "--initrd",
        "--dtb-out",
        "--quantum",
        "--log-level",
        "--log-json",
    ):
        assert option in r.stdout
    assert "exit status" in r.stdout


def test_run_hello(tmp_path: Path) -> None:
    r = hv("run", "hello", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Hello from hvfabric guest!" in r.stdout
    assert r.stderr == ""


def test_run_fault_reports_one_line(tmp_path: Path) -> None:
    r = hv("run", "fault", cwd=tmp_path)
    assert r.returncode == 2
    assert "fault: mode=novector" in r.stdout
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("hv: ")
    assert "load access fault" in lines[0]


def test_run_guest_failure_exits_1(tmp_path: Path) -> None:
    r = hv("run", "fault", "--append", "mode=handler", cwd=tmp_path)
    assert r.returncode == 1
    assert "unhandled trap: scause=0x5" in r.stdout
    assert r.stderr.startswith("hv: ")


def test_run_echo_takes_stdin(tmp_path: Path) -> None:
    r = hv("run", "echo", cwd=tmp_path, stdin=b"ping\nq")
    assert r.returncode == 0, r.stderr
    assert "echo: ready" in r.stdout
    assert "ping\n" in r.stdout
    assert "echo: bye" in r.stdout


def test_run_kernel_by_path(tmp_path: Path, guest_elfs: dict[str, Path]) -> None:
    r = hv("run", guest_elfs["hello"], "--mem", "16M", "--quantum", "50_000", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Hello from hvfabric guest!" in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "./no-such-kernel"], "does not exist"),
        (["run", "no-such-guest"], "not found"),
        (["run", "hello", "--mem", "4M"], "out of range"),
        (["run", "hello", "--mem", "32T"], "out of range"),
        (["run", "hello", "--quantum", "10"], "quantum"),
        (["run", "hello", "--initrd", "./no-such-initrd"], "does not exist"),
        (["run", "./empty.bin"], "empty"),
        (["run", "./x86.elf"], "x86-64"),
        (["guests", "path", "no-such-guest"], "unknown guest"),
    ],
)
def test_bad_input_exits_4(
    args: list[str], message: str, tmp_path: Path, empty_file: Path, x86_elf: Path
) -> None:
    assert empty_file.parent == x86_elf.parent == tmp_path
    r = hv(*args, cwd=tmp_path)
    assert r.returncode == 4, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("hv: ")
    assert message in lines[0]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "hello", "--mem", "abc"], "is not a size"),
        (["run", "hello", "--quantum", "0"], "must be positive"),
        (["run", "hello", "--quantum", "lots"], "not a whole number"),
        (["run", "hello", "--log-level", "loud"], "invalid choice"),
        (["run"], "KERNEL"),
        (["bogus"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    r = hv(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert "usage:" in r.stderr
    assert message in r.stderr


def test_guests_list(tmp_path: Path) -> None:
    r = hv("guests", "list", cwd=tmp_path)
    assert r.returncode == 0
    listed = {line.split()[0] for line in r.stdout.splitlines() if line.strip()}
    assert listed == set(GUESTS)
    assert {"hello", "sleep", "fault", "cpu", "traps", "sbi", "echo"} <= listed


def test_guests_path(tmp_path: Path) -> None:
    r = hv("guests", "path", "hello", cwd=tmp_path)
    assert r.returncode == 0
    path = Path(r.stdout.strip())
    assert path.is_file()
    assert path.read_bytes()[:4] == b"\x7fELF"


def test_dtb_out_has_the_bootargs(tmp_path: Path) -> None:
    out = tmp_path / "hv.dtb"
    bootargs = "console=ttyS0 foo=bar baz"
    r = hv("run", "hello", "--append", bootargs, "--dtb-out", out, "--mem", "64M", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"bootargs: {bootargs}" in r.stdout
    tree = fdt.parse_dtb(out.read_bytes())
    assert tree.get_property("bootargs", "/chosen").value == bootargs
    reg = tree.get_property("reg", "/memory@80000000")
    assert list(reg) == [0, 0x8000_0000, 0, 64 << 20]


def test_log_json_lines(tmp_path: Path) -> None:
    r = hv("run", "hello", "--log-json", "--log-level", "info", cwd=tmp_path)
    assert r.returncode == 0
    lines = r.stderr.splitlines()
    assert lines, "no log output"
    records = [json.loads(line) for line in lines]
    assert all(isinstance(rec, dict) and "event" in rec for rec in records)
    events = [rec["event"] for rec in records]
    assert "started" in events
    assert "stopped" in events
    stopped = records[events.index("stopped")]
    assert stopped["code"] == 0
    assert stopped["vm"] == "hello"
    assert "Hello from hvfabric guest!" in r.stdout


def test_log_json_on_failure_keeps_stderr_parseable(tmp_path: Path) -> None:
    r = hv("run", "fault", "--log-json", "--log-level", "info", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    json_lines = [line for line in lines if line.startswith("{")]
    assert any(json.loads(line)["event"] == "stopped" for line in json_lines)
    # the one-line summary stays plain text (the last line)
    assert lines[-1].startswith("hv: ")


def test_library_logging_is_quiet_unless_configured() -> None:
    """Embedding hv without configuring structlog prints no info/debug lines anywhere: how a
    VM ended is the caller's to report (it has the StopInfo)."""
    script = (
        "import trio, hv\n"
        "async def main():\n"
        "    for name in ('hello', 'fault'):\n"
        "        async with trio.open_nursery() as n:\n"
        "            vm = await n.start(hv.run_vm, hv.VmConfig(kernel=hv.guest_path(name)))\n"
        "            print(name, (await vm.wait()).exit_code)\n"
        "trio.run(main)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["hello 0", "fault 2"]
    assert "started" not in p.stderr and "[info" not in p.stderr and "[debug" not in p.stderr


def test_escape_keys_quit_and_pass_ctrl_a_through() -> None:
    from hv.cli._terminal import EscapeKeys

    keys = EscapeKeys()
    assert keys.feed(b"ls\r") == (b"ls\r", False)
    assert keys.feed(b"a\x01\x01b") == (b"a\x01b", False)  # Ctrl-A Ctrl-A: one Ctrl-A
    assert keys.feed(b"\x01c") == (b"\x01c", False)  # Ctrl-A and another key: both
    assert keys.feed(b"q\x01") == (b"q", False)  # an escape split across reads waits
    assert keys.feed(b"x rest") == (b"", True)  # ... and then quits


def test_run_of_a_lab_file_or_text_is_bad_input_not_a_guest_fault(tmp_path: Path) -> None:
    """``hv run lab.toml`` (meaning ``hv up``): the file is no kernel, so it is bad input
    (status 4) with a hint; any other text file too. Raw binaries still load (test_loader)."""
    (tmp_path / "mylab.toml").write_text('[vms.a]\nkernel = "hello"\n')
    (tmp_path / "broken.conf").write_text('# a lab with a typo\n[vms.a]\nkernel = "hello\n')
    (tmp_path / "notes.txt").write_text("remember: hv run boots a kernel\n")
    for name, message in [
        ("mylab.toml", "a lab file (TOML), not a kernel: did you mean 'hv up ./mylab.toml'?"),
        ("broken.conf", "a lab file (TOML), not a kernel: did you mean 'hv up ./broken.conf'?"),
        ("notes.txt", "is text, not a kernel"),
    ]:
        r = hv("run", f"./{name}", cwd=tmp_path)
        assert r.returncode == 4, (name, r.stdout, r.stderr)
        (line,) = r.stderr.splitlines()
        assert line.startswith("hv: ") and message in line, line


def test_the_same_tap_twice_for_one_vm_is_named_as_such(tmp_path: Path) -> None:
    """Checked before any TAP is opened. Run in a network namespace of its own (unshare), so
    that a regression that opens the TAP touches no interface of the host's."""
    net = [sys.executable, "-m", "hv.cli", "run", "hello", "--net", "tap:hvdup0", "--net"]
    r = subprocess.run(
        ["unshare", "--net", "--map-root-user", *net, "tap:hvdup0,ip=10.0.0.2/24"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 4, r.stderr
    assert r.stderr.strip() == (
        "hv: --net tap:hvdup0,ip=10.0.0.2/24: TAP hvdup0 is named twice (a VM's NICs need "
        "a TAP each)"
    ), r.stderr


def test_run_paths_that_are_fifos_are_refused_at_once(tmp_path: Path) -> None:
    """A FIFO as the kernel, the initrd or --dtb-out: one line, status 4, no waiting for a
    reader or writer that never comes."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args in (
        ("run", fifo),
        ("run", "hello", "--initrd", fifo),
        ("run", "hello", "--dtb-out", fifo),
    ):
        r = hv(*args, cwd=tmp_path, timeout=30)
        assert r.returncode == 4, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "FIFO" in r.stderr, (args, r.stderr)


def test_hv_run_does_not_load_pytest() -> None:
    """`hv run` and `hv up` start without pytest (trio.testing pulls it in: ~0.1 s of every
    start, measured by bench/debian.py)."""
    code = (
        "import sys, hv.cli._main, hv._vm, hv._disk, hv.lab._runner; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pytest', '_pytest')))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout[:400] + r.stderr
