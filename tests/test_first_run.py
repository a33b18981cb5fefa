"""A first run as the README tells it: the one test command, and progress from every long build.

The test command (`bash .ci/test`) installs, builds, then runs pytest; `.ci/run` calls it as
the README writes it. The builds (the fast engine with ninja, the guests with zig, the Linux
kernel with make) report steps done / total on stderr: one line per step off a terminal, one
updating line on a terminal.
"""

from __future__ import annotations

import io
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hv.build import _image_linux as il
from hv.build._progress import StderrProgress, kbuild_step, ninja_step, step_line
from hv.engine import _build

REPO = Path(__file__).resolve().parent.parent

# ninja's output in the fast engine's build log (hv engine build, cold, captured here).
NINJA_OUTPUT = """\
ninja: Entering directory `/tmp/hv-engine-hzv8yzjz/build-zig'
[1/94] Building C object CMakeFiles/unicorn-common.dir/glib_compat/gtestutils.c.o
[2/94] Building C object CMakeFiles/unicorn-common.dir/list.c.o
1 warning generated.
[92/94] Linking C static library libriscv64-softmmu.a
[93/94] Linking C shared library libunicorn.so.2
[94/94] Creating library symlink libunicorn.so
"""

# cmake's output in the same log (its configure step).
CMAKE_OUTPUT = """\
-- The C compiler identification is Clang 22.1.8
-- Detecting C compiler ABI info
CMake Warning: something
-- Detecting C compiler ABI info - done
"""

# kbuild's output in the Linux image's build log (hv image build linux, captured here).
KBUILD_OUTPUT = """\
make[1]: Entering directory '/root/.cache/hvfabric/images/obj/linux-6.1.192-3'
  SYNC    include/config/auto.conf.cmd
  HOSTCC  scripts/basic/fixdep
  WRAP    arch/riscv/include/generated/uapi/asm/errno.h
  CC      init/main.o
  AR      init/built-in.a
Using .config as base
#
"""


# ---------------------------------------------------------------- the progress reporter


def test_ninja_lines_are_steps_and_nothing_else_is() -> None:
    steps = [s for line in NINJA_OUTPUT.splitlines() if (s := ninja_step(line)) is not None]
    assert [(d, t) for d, t, _ in steps] == [(1, 94), (2, 94), (92, 94), (93, 94), (94, 94)]
    assert steps[-1][2] == "Creating library symlink libunicorn.so"


def test_the_engine_build_reports_ninjas_steps_and_logs_everything(tmp_path: Path) -> None:
    """_build._run on a command that prints captured ninja output: each [n/m] line is a step
    message, every line is in the log."""
    (tmp_path / "out.txt").write_text(NINJA_OUTPUT)
    log = tmp_path / "build.log"
    said: list[str] = []
    _build._run(["cat", "out.txt"], tmp_path, "building", log, said.append)
    assert said == [
        "[1/94] libunicorn: Building C object "
        "CMakeFiles/unicorn-common.dir/glib_compat/gtestutils.c.o",
        "[2/94] libunicorn: Building C object CMakeFiles/unicorn-common.dir/list.c.o",
        "[92/94] libunicorn: Linking C static library libriscv64-softmmu.a",
        "[93/94] libunicorn: Linking C shared library libunicorn.so.2",
        "[94/94] libunicorn: Creating library symlink libunicorn.so",
    ]
    assert NINJA_OUTPUT in log.read_text()


def test_the_engine_build_reports_cmakes_checks(tmp_path: Path) -> None:
    (tmp_path / "out.txt").write_text(CMAKE_OUTPUT)
    said: list[str] = []
    _build._run(["cat", "out.txt"], tmp_path, "cmake", tmp_path / "log", said.append)
    assert said == [
        "[1] cmake: The C compiler identification is Clang 22.1.8",
        "[2] cmake: Detecting C compiler ABI info",
        "[3] cmake: Detecting C compiler ABI info - done",
    ]


def test_kbuild_lines_are_steps() -> None:
    steps = [s for line in KBUILD_OUTPUT.splitlines() if (s := kbuild_step(line)) is not None]
    assert steps == [
        "SYNC include/config/auto.conf.cmd",
        "HOSTCC scripts/basic/fixdep",
        "WRAP arch/riscv/include/generated/uapi/asm/errno.h",
        "CC init/main.o",
        "AR init/built-in.a",
    ]


def test_step_line_forms() -> None:
    assert step_line(3, 14, "building udpecho") == "[3/14] building udpecho"
    assert step_line(3, 900, "CC a.o", estimated=True) == "[3/~900] CC a.o"
    assert step_line(901, 900, "CC a.o", estimated=True) == "[901] CC a.o"  # past the estimate
    assert step_line(3, None, "CC a.o") == "[3] CC a.o"


def test_off_a_terminal_every_step_is_a_line() -> None:
    out = io.StringIO()
    p = StderrProgress("hv: ", stream=out)
    assert not p.terminal
    for msg in ("fetching", "[1/2] a", "[2/2] b", "built"):
        p(msg)
    assert out.getvalue() == "hv: fetching\nhv: [1/2] a\nhv: [2/2] b\nhv: built\n"


def test_on_a_terminal_steps_update_one_line() -> None:
    """On a real pty: steps rewrite one line (\\r, erase), the last step stays when a message
    follows."""
    master, slave = os.openpty()
    try:
        with open(slave, "w", closefd=False) as tty:
            p = StderrProgress(stream=tty)
            assert p.terminal
            for msg in ("fetching", "[1/2] a", "[2/2] b", "built"):
                p(msg)
            p.close()
        data = b""
        while not data.endswith(b"built\r\n"):  # the pty hands it over in pieces
            ready, _, _ = select.select([master], [], [], 10)
            assert ready, data
            data += os.read(master, 4096)
        got = data.decode().replace("\r\n", "\n")
    finally:
        os.close(master)
        os.close(slave)
    assert got == "fetching\n\r\x1b[K[1/2] a\r\x1b[K[2/2] b\nbuilt\n"


# ---------------------------------------------------------------- the builds' progress


def _fresh_cache_env(tmp_path: Path) -> dict[str, str]:
    """A fresh hvfabric cache; zig keeps its own global cache (its compiler runtime)."""
    home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    zig = os.environ.get("ZIG_GLOBAL_CACHE_DIR") or str(Path(home) / "zig")
    return {
        **os.environ,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "ZIG_GLOBAL_CACHE_DIR": zig,
        "PYTHONPATH": str(REPO),
    }


def test_guest_builds_in_a_fresh_cache_print_one_step_per_guest(tmp_path: Path) -> None:
    env = _fresh_cache_env(tmp_path)
    cmd = [sys.executable, "-m", "hv.cli", "guests", "build", "hello", "sleep"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    steps = re.findall(r"\[(\d+)/(\d+)\] building (\w+)", first.stderr)
    assert steps == [("1", "2", "hello"), ("2", "2", "sleep")], first.stderr
    assert "built 2 guests" in first.stderr
    assert first.stdout.count(str(tmp_path / "cache")) == 2
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "building" not in again.stderr, again.stderr


def test_hv_run_of_a_guest_not_built_yet_says_so(tmp_path: Path) -> None:
    env = _fresh_cache_env(tmp_path)
    engine = _build.cached_engine()  # the fresh cache shares the built engine, not the guests
    assert engine is not None, "the test command builds the engine first (bash .ci/test)"
    shared = tmp_path / "cache" / "hvfabric" / "engine" / engine.library.name
    shared.parent.mkdir(parents=True)
    shared.symlink_to(engine.library)
    r = subprocess.run(
        [sys.executable, "-m", "hv.cli", "run", "hello"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    assert "hv: [1/1] building hello" in r.stderr


_FAKE_KBUILD = """\
Image:
\t@echo '  HOSTCC  scripts/basic/fixdep'
\t@echo '  CC      init/main.o'
\t@echo 'make[1]: Leaving directory'
\t@echo '  CC      kernel/fork.o'
\t@echo '  OBJCOPY arch/riscv/boot/Image'
\t@mkdir -p $(O)/arch/riscv/boot
\t@python3 -c "import sys; sys.stdout.buffer.write(bytes(56) + b'RSC\\x05' + bytes(4))" \\
\t  > $(O)/arch/riscv/boot/Image
\t@touch $(O)/vmlinux
"""


def test_the_kernel_stage_counts_kbuilds_lines(tmp_path: Path) -> None:
    """The kernel stage on a stand-in kernel tree (a Makefile printing kbuild's lines): each
    line is a step against the last full build's count; the count is kept for the next."""
    tree, obj = tmp_path / "tree", tmp_path / "obj"
    tree.mkdir()
    obj.mkdir()
    (tree / "Makefile").write_text(_FAKE_KBUILD)
    (obj / ".hv-kernel-steps").write_text("5\n")
    said: list[str] = []
    stages = il._Stages(said.append)
    image = il._build_kernel(tree, obj, tmp_path / "log", 1, stages)
    assert image == obj / "arch/riscv/boot/Image"
    steps = [m for m in said if m.startswith("[")]
    assert steps == [
        "[1/~5] HOSTCC scripts/basic/fixdep",
        "[2/~5] CC init/main.o",
        "[3/~5] CC kernel/fork.o",
        "[4/~5] OBJCOPY arch/riscv/boot/Image",
    ]
    assert (obj / ".hv-kernel-steps").read_text() == "4\n"
    said.clear()  # vmlinux is there now: an incremental build, no total to count against
    il._build_kernel(tree, obj, tmp_path / "log", 1, stages)
    assert next(m for m in said if m.startswith("[")) == "[1] HOSTCC scripts/basic/fixdep"
    assert (obj / ".hv-kernel-steps").read_text() == "4\n"


# ---------------------------------------------------------------- the test command


def readme_test_command() -> str:
    """The command in the README's fenced block after "Run the test suite"."""
    text = (REPO / "README.md").read_text()
    at = text.index("Run the test suite")
    m = re.search(r"```sh\n(.*?)```", text[at:], flags=re.DOTALL)
    assert m is not None, "no fenced sh block after 'Run the test suite'"
    lines = [ln.split("#")[0].strip() for ln in m.group(1).splitlines()]
    lines = [ln for ln in lines if ln]
    assert len(lines) == 1, f"the README's test command is one command: {lines}"
    return lines[0]


def test_ci_run_ends_with_the_readmes_test_command() -> None:
    command = readme_test_command()
    assert shlex.split(command)[:2] == ["bash", ".ci/test"]
    run = (REPO / ".ci" / "run").read_text().splitlines()
    commands = [ln.strip() for ln in run if ln.strip() and not ln.strip().startswith("#")]
    # last: its status is .ci/run's; after lint and types
    assert commands[-1] == command
    assert commands.index("mypy") < len(commands) - 1
    assert "set -euo pipefail" in commands


def test_the_package_lists_are_the_ones_the_test_command_checks() -> None:
    script = (REPO / ".ci" / "test").read_text()
    assert "sh .ci/system-deps.sh --list" in script and "sh .ci/linux-deps.sh --list" in script
    listed = subprocess.run(
        ["sh", ".ci/linux-deps.sh", "--list"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(il.REQUIRED_PACKAGES) <= set(listed)
    assert {"qemu-system-misc", "qemu-utils", "opensbi", "u-boot-qemu"} <= set(listed)
    system = subprocess.run(
        ["sh", ".ci/system-deps.sh", "--list"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert {"tshark", "iputils-ping", "device-tree-compiler", "python3-venv"} <= set(system)


def test_the_test_command_refuses_without_root_when_packages_are_missing(tmp_path: Path) -> None:
    """A machine where no package is installed (dpkg's own database, empty: DPKG_ADMINDIR),
    as a user who is not root: the command stops at once and prints the command to run."""
    admin = tmp_path / "dpkg"
    (admin / "info").mkdir(parents=True)
    (admin / "updates").mkdir()
    (admin / "status").write_text("")
    tmp_path.chmod(0o755)
    env = {**os.environ, "DPKG_ADMINDIR": str(admin)}
    cmd = ["bash", str(REPO / ".ci" / "test"), "-x"]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) runs the command as nobody"
        cmd = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 1, r.stderr
    assert "missing Debian packages: " in r.stderr
    m = re.search(r"apt-get install -y --no-install-recommends ([^']*)'", r.stderr)
    assert m is not None, r.stderr
    assert {"tshark", "iputils-ping", "linux-source-6.1", "qemu-utils"} <= set(m.group(1).split())
    assert "needs root" in r.stderr
    assert "[2/7]" not in r.stderr  # nothing after the packages ran


@pytest.mark.slow
def test_the_test_command_exits_with_pytests_status(tmp_path: Path) -> None:
    """Everything installed and built (the outer test command did it): the stages are cache
    hits, then pytest runs with the arguments given, and its status is the command's; no
    test collected (pytest's 5) is a failure too."""
    (tmp_path / "test_one.py").write_text("def test_fails():\n    assert 1 == 2\n")
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    base = ["bash", str(REPO / ".ci" / "test"), "-p", "no:cacheprovider", "-q"]
    failing = subprocess.run(
        [*base, str(tmp_path / "test_one.py")], env=env, capture_output=True, text=True, timeout=600
    )
    assert failing.returncode == 1, failing.stderr
    assert "1 failed" in failing.stdout
    for n in range(1, 8):
        assert f"== test [{n}/7]" in failing.stderr
    assert "using " in failing.stderr and "as it is" in failing.stderr
    none = subprocess.run(
        [*base, str(tmp_path / "test_one.py"), "-k", "no_such_test"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert none.returncode == 5
    assert "collected no tests (exit 5): a failure" in none.stderr
