"""Build C sources with ``ziglang`` (a PyPI package) and cache the result by content hash.

Both the bundled guests and the native vCPU helpers are built this way, so no system
toolchain is needed. A build is keyed by the hash of its sources and flags: changing a source
file rebuilds, an unchanged tree reuses the cached output.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from hv._errors import ConfigError, HostError

# Bump to invalidate every cached build (e.g. after changing default flags).
BUILD_ABI = "1"


def cache_dir() -> Path:
    """The user's cache directory for hvfabric (XDG_CACHE_HOME, else ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hvfabric"


def zig_command() -> list[str]:
    return [sys.executable, "-m", "ziglang"]


def content_key(files: Sequence[Path], flags: Sequence[str]) -> str:
    """Hash of the files' names and bytes plus the flags: the identity of a build."""
    h = hashlib.sha256(BUILD_ABI.encode())
    for f in sorted(files):
        h.update(f.name.encode() + b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    for fl in flags:
        h.update(fl.encode() + b"\0")
    return h.hexdigest()[:16]


def run_zig(args: Sequence[str], cwd: Path | None = None) -> None:
    cmd = [*zig_command(), *args]
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise HostError(f"cannot run zig ({e}); install the 'ziglang' package") from e
    if proc.returncode != 0:
        raise HostError(f"zig failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr.strip()}")


def cached_output(name: str, inputs: Sequence[Path], flags: Sequence[str]) -> Path:
    """Where :func:`cached_build` keeps the output for (inputs, flags), built or not."""
    return cache_dir() / "build" / f"{name}-{content_key(inputs, flags)}" / name


def cached_build(
    name: str,
    inputs: Sequence[Path],
    flags: Sequence[str],
    build: Callable[[Path], None],
) -> Path:
    """Return the cached output for (inputs, flags), building it with ``build`` if absent.

    ``build(out)`` must write the output file ``out``. The write is atomic: a crashed build
    never leaves a half-written file that a later run would trust.
    """
    out = cached_output(name, inputs, flags)
    out_dir = out.parent
    if out.exists():
        return out
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp_dir = tempfile.TemporaryDirectory(dir=out_dir)
    except OSError as e:
        raise ConfigError(
            f"cannot write hv's build cache {out_dir}: {e.strerror or e}; set XDG_CACHE_HOME "
            "to a folder of your own"
        ) from None
    with tmp_dir as tmp:
        tmp_out = Path(tmp) / name
        build(tmp_out)
        os.replace(tmp_out, out)
    return out
