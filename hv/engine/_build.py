"""Build the fast engine: Unicorn 2.1.4 from its PyPI sdist, with hvfabric's patches.

The recipe, in order, each step checked:
1. fetch ``unicorn==2.1.4``'s sdist with pip (``pip download --no-binary``) and check its
   SHA-256 against the pin below, so the patches always meet the source they were written for;
2. unpack its ``src/`` (the Unicorn git tag) and apply ``patches/*.patch`` listed in PATCHES;
3. configure with cmake for the riscv targets only and build ``libunicorn.so.2`` with ninja;
   cmake and ninja come from PyPI, the C compiler is zig's (``ziglang``, also from PyPI), so
   no system toolchain is needed; if zig can't build it, the system's ``cc`` is tried;
4. store the library under the cache, keyed by the hash of everything above, with a
   ``build.json`` that says where it came from (``hv engine info``).

A build that cannot be done (no network for the sdist, no compiler) raises ``EngineBuildError``
with the reason; the caller falls back to the wheel's stock library. When a Unicorn release
carries equivalent fixes, drop the patches from PATCHES (one line each) or bump the pin.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hv._errors import HostError
from hv.build import Progress, cache_dir, ninja_step, run_logged, step_line

UNICORN_VERSION = "2.1.4"
SDIST_SHA256 = "00567a70e323f749b419cd86bee4f9115beab7ebba32194581c090cbb7c59cff"
PATCH_DIR = Path(__file__).parent / "patches"
# The patches applied, in order. Deleting a line drops that patch.
PATCHES = (
    "0001-store-fast-path.patch",
    "0002-inline-exit-check.patch",
    "0003-time-csr.patch",
    "0004-parallel-atomics.patch",
    "0005-fence-i-shared-code.patch",
)
# Bump when the recipe below changes in a way that changes the library.
RECIPE = "1"
LIB_NAME = "libunicorn.so.2"
# What a cold build costs, as measured (README, first-use note): 3 min 39 s (a fresh 2-core
# machine), 7 min 30 s and 9 min 23 s (2 cores shared with 7 other engineers' builds and
# tests; 2 min 9 s and 2 min 43 s of CPU), 2026-12-06.
BUILD_TIME = "about 3-10 min on 2 cores"


class EngineBuildError(HostError):
    """The fast engine could not be built (the message says why and what to do)."""


@dataclass(frozen=True)
class BuiltEngine:
    library: Path  # the directory holding libunicorn.so.2 (what LIBUNICORN_PATH wants)
    info: dict[str, object]


def engine_key() -> str:
    """Identity of a build: Unicorn version, sdist hash, the patches' bytes, the recipe."""
    h = hashlib.sha256(f"{UNICORN_VERSION}\0{SDIST_SHA256}\0{RECIPE}\0".encode())
    for name in PATCHES:
        h.update(name.encode() + b"\0" + (PATCH_DIR / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def engine_dir() -> Path:
    return cache_dir() / "engine" / f"unicorn-{UNICORN_VERSION}-hv-{engine_key()}"


def cached_engine() -> BuiltEngine | None:
    """The built engine for the current patches, if it is in the cache."""
    d = engine_dir()
    if not (d / LIB_NAME).is_file():
        return None
    try:
        info = json.loads((d / "build.json").read_text())
    except (OSError, ValueError):
        info = {}
    return BuiltEngine(d, info)


def failure_note() -> str | None:
    """Why the last build of the current patches failed, if it did (not retried on use)."""
    try:
        return (engine_dir().with_suffix(".failed")).read_text().strip() or "unknown reason"
    except OSError:
        return None


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One build at a time across processes (tests start several hv processes at once)."""
    root = cache_dir() / "engine"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_engine(progress: Progress | None = None, force: bool = False) -> BuiltEngine:
    """Build (or find in the cache) the patched Unicorn. Raises EngineBuildError."""
    say = progress or (lambda _line: None)
    with _build_lock():
        if not force and (got := cached_engine()) is not None:
            return got
        failed = engine_dir().with_suffix(".failed")
        try:
            built = _build(say)
        except EngineBuildError as e:
            failed.parent.mkdir(parents=True, exist_ok=True)
            failed.write_text(str(e) + "\n")
            raise
        failed.unlink(missing_ok=True)
        return built


def _run(cmd: list[str], cwd: Path, what: str, log: Path, say: Progress | None = None) -> None:
    """Run a build step, its output into ``log``; with ``say``, ninja's ``[n/m]`` lines are
    reported as steps (``[37/94] libunicorn: Building C object ...``), and cmake's ``-- ``
    lines as steps without a total (``[12] cmake: Check for working C compiler ...``: the
    first run of zig builds its own runtime there, which takes a while)."""
    checks = 0

    def on_line(line: str) -> None:
        nonlocal checks
        if say is None:
            return
        if (step := ninja_step(line)) is not None:
            say(step_line(step[0], step[1], f"libunicorn: {step[2]}"))
        elif line.startswith("-- "):
            checks += 1
            say(step_line(checks, None, f"cmake: {line[3:]}"))

    try:
        # ninja's own status line, whatever the user's NINJA_STATUS says
        env = {**os.environ, "NINJA_STATUS": "[%f/%t] "}
        status = run_logged(cmd, cwd=cwd, log=log, on_line=on_line, env=env)
    except OSError as e:
        raise EngineBuildError(f"{what}: cannot run {cmd[0]} ({e})") from e
    if status != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise EngineBuildError(f"{what} failed (exit {status}):\n{tail}")


def _fetch_sdist(work: Path, log: Path) -> Path:
    # --no-binary for unicorn alone: with ":all:", pip also builds the sdist's build
    # requirements (setuptools, setuptools-scm, ...) from source just to read its metadata.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "unicorn"]
    cmd += ["--disable-pip-version-check", "-q", "-d", str(work), f"unicorn=={UNICORN_VERSION}"]
    _run(cmd, work, f"fetching the unicorn {UNICORN_VERSION} sdist with pip", log)
    found = sorted(work.glob(f"unicorn-{UNICORN_VERSION}.tar.gz"))
    if not found:
        raise EngineBuildError(f"pip downloaded no unicorn-{UNICORN_VERSION}.tar.gz")
    digest = hashlib.sha256(found[0].read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise EngineBuildError(
            f"unicorn {UNICORN_VERSION} sdist has SHA-256 {digest}, expected {SDIST_SHA256}: "
            "refusing to patch a source the patches were not written for"
        )
    return found[0]


def _unpack_src(sdist: Path, work: Path) -> Path:
    prefix = f"unicorn-{UNICORN_VERSION}/src/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        tar.extractall(work, members=members, filter="data")
    return work / prefix


def _apply_patches(src: Path, log: Path) -> None:
    for name in PATCHES:
        patch = PATCH_DIR / name
        if shutil.which("git"):
            cmd = ["git", "apply", "--whitespace=nowarn", "-p1", str(patch)]
        elif shutil.which("patch"):
            cmd = ["patch", "-p1", "--batch", "--forward", "-i", str(patch)]
        else:
            raise EngineBuildError("applying patches needs git or patch; install either")
        _run(cmd, src, f"applying {name}", log)


def _tool(module: str, exe: str) -> str:
    """cmake/ninja from their PyPI packages (pip install hvfabric brings them), else PATH."""
    try:
        mod = __import__(module)
        path = Path(getattr(mod, "BIN_DIR", "") or getattr(mod, "CMAKE_BIN_DIR", "")) / exe
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    found = shutil.which(exe)
    if not found:
        raise EngineBuildError(f"{exe} not found: pip install {module}")
    return found


def _zig_wrappers(work: Path) -> dict[str, str]:
    """cmake wants a compiler path: small scripts that run zig's cc/ar/ranlib."""
    tools = {}
    for tool in ("cc", "ar", "ranlib"):
        path = work / f"zig-{tool}"
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ziglang {tool} "$@"\n')
        path.chmod(0o755)
        tools[tool] = str(path)
    return tools


def _compile(src: Path, work: Path, log: Path, say: Progress) -> tuple[Path, str]:
    """Configure and build with zig, then with the system compiler; (library, compiler)."""
    cmake, ninja = _tool("cmake", "cmake"), _tool("ninja", "ninja")
    base = [cmake, "-S", str(src), "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    base += ["-DUNICORN_ARCH=riscv", "-DCMAKE_BUILD_TYPE=Release", "-DUNICORN_BUILD_TESTS=OFF"]
    choices: list[tuple[str, list[str]]] = []
    try:
        import ziglang  # noqa: F401

        z = _zig_wrappers(work)
        zig = [f"-DCMAKE_C_COMPILER={z['cc']}", f"-DCMAKE_AR={z['ar']}"]
        choices.append(("zig cc", [*zig, f"-DCMAKE_RANLIB={z['ranlib']}"]))
    except ImportError:
        pass
    if shutil.which("cc"):
        choices.append(("system cc", []))
    if not choices:
        raise EngineBuildError("no C compiler: pip install ziglang, or install a system cc")
    errors = []
    for compiler, flags in choices:
        out = work / f"build-{compiler.split()[0]}"
        say(f"configuring (cmake, {compiler})")
        try:
            _run([*base, "-B", str(out), *flags], work, f"cmake with {compiler}", log, say)
            say(f"compiling libunicorn for riscv with {compiler} (ninja; steps below)")
            _run([ninja, "-C", str(out), "unicorn"], work, f"building with {compiler}", log, say)
        except EngineBuildError as e:
            errors.append(str(e))
            continue
        lib = out / LIB_NAME
        if lib.is_file():
            return lib, compiler
        errors.append(f"{compiler}: the build made no {LIB_NAME}")
    raise EngineBuildError("\n".join(errors))


def _build(say: Progress) -> BuiltEngine:
    start = time.monotonic()
    dest = engine_dir()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hv-engine-", dir=dest.parent) as tmp:
        work = Path(tmp)
        log = work / "build.log"
        say(f"fetching unicorn {UNICORN_VERSION} (sdist, SHA-256 checked)")
        sdist = _fetch_sdist(work, log)
        src = _unpack_src(sdist, work)
        say(f"applying {len(PATCHES)} patches")
        _apply_patches(src, log)
        lib, compiler = _compile(src, work, log, say)
        staged = work / "out"
        staged.mkdir()
        shutil.copy2(lib, staged / LIB_NAME)
        shutil.copy2(log, staged / "build.log")
        info: dict[str, object] = {
            "unicorn": UNICORN_VERSION,
            "sdist_sha256": SDIST_SHA256,
            "patches": list(PATCHES),
            "compiler": compiler,
            "key": engine_key(),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - start, 1),
        }
        (staged / "build.json").write_text(json.dumps(info, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staged, dest)
    say(f"built in {time.monotonic() - start:.0f} s: {dest / LIB_NAME}")
    return BuiltEngine(dest, info)
