"""What the benchmarks share: engines as environments, child processes, timing, qemu.

The libunicorn a process runs on is chosen once, before its first ``import unicorn``
(``hv/engine/_select.py``), so a benchmark that compares engines runs each engine's part in a
child process of its own: the script again, with ``--child`` and ``HV_ENGINE`` set, printing
one JSON line as the last line of its standard output.

This module imports neither unicorn nor trio, so a parent process stays engine-free.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ENGINES = ("fast", "stock")
OPENSBI = Path("/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin")
BYTECODE_MODES = ("cached", "env")
BYTECODE_HELP = (
    "Python processes the benchmark starts: 'cached' (default) lets them keep compiled "
    "bytecode in a cache of the benchmark's own (PYTHONPYCACHEPREFIX), as an installed "
    "package has; 'env' leaves the environment as it is (with PYTHONDONTWRITEBYTECODE=1, hv's "
    "own modules are compiled from source at every start)"
)
_bytecode = "cached"


def set_bytecode(mode: str) -> None:
    global _bytecode
    _bytecode = mode


def pycache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hvfabric" / "bench-pycache"


def python_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a Python process the benchmark starts (see BYTECODE_HELP)."""
    env = dict(os.environ if base is None else base)
    if _bytecode == "cached" and env.get("PYTHONDONTWRITEBYTECODE"):
        env.pop("PYTHONDONTWRITEBYTECODE")
        env.setdefault("PYTHONPYCACHEPREFIX", str(pycache_dir()))
    return env


def bytecode_note() -> str:
    if not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return "python: bytecode as this environment has it"
    if _bytecode == "cached":
        return f"python: bytecode cached in {pycache_dir()} (PYTHONDONTWRITEBYTECODE dropped)"
    return "python: PYTHONDONTWRITEBYTECODE=1 kept (hv's modules compiled at every start)"


def engine_env(engine: str) -> dict[str, str]:
    """The environment for a process that should run on ``engine`` ("fast" or "stock")."""
    env = python_env()
    env.pop("LIBUNICORN_PATH", None)  # a user's own library would make the engine "custom"
    env["HV_ENGINE"] = engine
    return env


def hv_command() -> list[str]:
    """The `hv` console script of this interpreter's environment (as a user runs it)."""
    script = Path(sys.executable).parent / "hv"
    if script.is_file():
        return [str(script)]
    found = shutil.which("hv")
    return [found] if found else [sys.executable, "-m", "hv.cli"]


def qemu_command() -> list[str]:
    """qemu-system-riscv64 on the `virt` board with OpenSBI fw_jump, 128 MiB, no display."""
    qemu = shutil.which("qemu-system-riscv64")
    if qemu is None or not OPENSBI.is_file():
        raise SystemExit("needs qemu-system-misc and opensbi: bash .ci/linux-deps.sh")
    return [qemu, "-M", "virt", "-m", "128M", "-nographic", "-bios", str(OPENSBI)]


def qemu_version() -> str:
    out = subprocess.run([*qemu_command()[:1], "--version"], capture_output=True, text=True)
    return out.stdout.splitlines()[0] if out.stdout else "?"


def engine_info(engine: str) -> dict[str, Any]:
    """`hv engine info --json` in a process that asked for ``engine``."""
    out = subprocess.run(
        [*hv_command(), "engine", "info", "--json"],
        env=engine_env(engine),
        capture_output=True,
        text=True,
        check=True,
    )
    info: dict[str, Any] = json.loads(out.stdout)
    if info.get("engine") != engine:
        print(
            f"warning: HV_ENGINE={engine} runs on the {info.get('engine')} engine "
            f"({info.get('note', 'no note')}); its figures are not the {engine} engine's",
            file=sys.stderr,
        )
    return info


def describe(info: Mapping[str, Any]) -> str:
    patches = info.get("patches") or []
    extra = f", {len(patches)} patches" if patches else ""
    return f"{info.get('engine')} = {info.get('library')} (unicorn {info.get('unicorn')}{extra})"


def run_child(script: Path, engine: str, args: Sequence[str], timeout: float = 3600) -> Any:
    """Run ``script --child ARGS`` on ``engine``; return the JSON of its last stdout line."""
    cmd = [sys.executable, str(script), "--child", *args]
    p = subprocess.run(cmd, env=engine_env(engine), capture_output=True, text=True, timeout=timeout)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        raise SystemExit(
            f"child {' '.join(cmd)} (HV_ENGINE={engine}) failed with status {p.returncode}:\n"
            f"{p.stdout[-2000:]}{p.stderr[-2000:]}"
        )
    if p.stderr.strip():
        sys.stderr.write(p.stderr)
    result = json.loads(lines[-1])
    got = result.get("engine", {}).get("engine") if isinstance(result, dict) else None
    if got is not None and got != engine:
        print(f"warning: the {engine} child ran on the {got} engine", file=sys.stderr)
    return result


def child_engine_info() -> dict[str, Any]:
    """Inside a child: which engine this process runs on (loads the library)."""
    from hv.engine import engine_info as _info

    return {k: v for k, v in _info().items() if k in ("engine", "library", "unicorn", "patches")}


def timed_process(
    cmd: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 600
) -> tuple[float, bytes]:
    """Run ``cmd`` to its end; return (seconds from exec to exit, its stdout)."""
    t0 = time.perf_counter()
    p = subprocess.run(
        list(cmd),
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd)} exited with status {p.returncode}:\n"
            f"{p.stdout[-2000:]!r}\n{p.stderr[-2000:]!r}"
        )
    return dt, p.stdout


def best(xs: Sequence[float]) -> float:
    return min(xs)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def goal(value: float, limit: float) -> str:
    return f"(goal <= {limit}: {'met' if value <= limit else 'NOT met'})"
