"""Download Debian riscv64 packages into a private apt state: no change to the host's apt.

``apt_download(["busybox-static"], dest, progress)`` returns the ``.deb`` files of Debian's
riscv64 build of each named package (only those: dependencies are not followed), downloaded
with the host's own ``apt-get`` told to use a state, cache and source list of its own under
``cache_dir()/debian/apt`` (``Dir::State``, ``Dir::Cache``, ``Dir::Etc::SourceList``,
``APT::Architecture=riscv64``), so the host's package lists, configuration and installed
packages are never read or written. The source is Debian ``trixie`` (riscv64 is an official
architecture there), checked by apt against ``debian-archive-keyring``.

Policy (what makes a build repeatable and work offline): the first call for a package runs
``apt-get update`` and ``apt-get download``, then writes ``dest/packages.lock`` (JSON:
package -> file, version, sha256). Later calls find every package in the lock with its file
present and of that sha256 and return without touching the network; ``refresh=True`` (``hv
image build linux --refresh``) asks the archive again and re-pins whatever is current. So a
package is resolved once per cache, its version recorded, and a cached image keyed on
``pinned()`` stays valid until someone asks for a refresh. ``extract_deb`` unpacks a ``.deb``
with ``dpkg-deb -x``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hv._errors import HostError
from hv.build._progress import Progress
from hv.build._zig import cache_dir

SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
ARCH = "riscv64"
LOCK_NAME = "packages.lock"

# Host packages this module runs: apt-get, dpkg-deb and the archive's keys.
REQUIRED_PACKAGES: tuple[str, ...] = ("apt", "dpkg", "debian-archive-keyring")


@dataclass(frozen=True)
class Deb:
    """One downloaded package, as pinned in ``packages.lock``."""

    package: str
    version: str
    sha256: str
    path: Path


def apt_dir() -> Path:
    """The private apt state (lists, status, archives cache, sources.list)."""
    return cache_dir() / "debian" / "apt"


def apt_options(root: Path) -> list[str]:
    """``-o`` options that point apt-get at the private state under ``root``."""
    opts = {
        "Dir::State": root / "state",
        "Dir::State::status": root / "state" / "status",
        "Dir::Cache": root / "cache",
        "Dir::Etc::SourceList": root / "sources.list",
        "Dir::Etc::SourceParts": "/dev/null",
        "Dir::Etc::Preferences": "/dev/null",
        "Dir::Etc::PreferencesParts": "/dev/null",
        "APT::Architecture": ARCH,
        "APT::Architectures": ARCH,
        # apt drops to the _apt user for downloads, who may not write the caller's folders.
        "APT::Sandbox::User": "root" if os.geteuid() == 0 else "",
    }
    out: list[str] = []
    for key, value in opts.items():
        if value != "":
            out += ["-o", f"{key}={value}"]
    return out


def prepare_state(root: Path) -> None:
    """Create the private state under ``root`` (folders, an empty dpkg status, the source
    list of Debian's archive for riscv64) that ``apt_options(root)`` points at."""
    for d in ("state/lists/partial", "cache/archives/partial"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "state" / "status").touch()
    (root / "sources.list").write_text(
        f"deb [arch={ARCH} signed-by={KEYRING}] {MIRROR} {SUITE} main\n"
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_lock(dest: Path) -> dict[str, Deb]:
    try:
        raw = json.loads((dest / LOCK_NAME).read_text())
        return {
            name: Deb(name, str(e["version"]), str(e["sha256"]), dest / str(e["file"]))
            for name, e in raw.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_lock(dest: Path, debs: dict[str, Deb]) -> None:
    data = {
        name: {"file": d.path.name, "version": d.version, "sha256": d.sha256}
        for name, d in sorted(debs.items())
    }
    tmp = dest / f".{LOCK_NAME}.tmp"
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, dest / LOCK_NAME)


def pinned(package: str, dest: Path) -> Deb | None:
    """The pinned download of ``package`` in ``dest`` (no network, no hashing), or None."""
    deb = _read_lock(dest).get(package)
    return deb if deb is not None and deb.path.is_file() else None


def _run(cmd: Sequence[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(
            list(cmd),
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"},
        )
    except OSError as e:
        raise HostError(f"cannot run {cmd[0]} ({e}); install: {' '.join(REQUIRED_PACKAGES)}") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-15:])
        raise HostError(f"{_shown(cmd)} failed ({proc.returncode}):\n{tail}")
    return proc.stdout


def _shown(cmd: Sequence[str]) -> str:
    """``cmd`` without its ``-o KEY=VALUE`` pairs (the private state's paths)."""
    words, skip = [], False
    for c in cmd:
        if not skip and c != "-o":
            words.append(c)
        skip = c == "-o"
    return " ".join(words)


def _deb_field(path: Path, field: str) -> str:
    return _run(["dpkg-deb", "-f", str(path), field]).strip()


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def apt_download(
    packages: Sequence[str],
    dest: Path,
    progress: Progress | None = None,
    *,
    refresh: bool = False,
) -> list[Path]:
    """The riscv64 ``.deb`` of each of ``packages`` in ``dest``, in order (see the module's
    policy: pinned ones are reused offline, the others downloaded and pinned)."""
    say = progress or (lambda _m: None)
    dest.mkdir(parents=True, exist_ok=True)
    root = apt_dir()
    with _locked(root):
        lock = _read_lock(dest)
        wanted = [p for p in packages if refresh or not _intact(lock.get(p))]
        if wanted:
            if not KEYRING.is_file():
                raise HostError(f"{KEYRING} is missing: apt-get install debian-archive-keyring")
            prepare_state(root)
            opts = apt_options(root)
            say(f"debian: apt-get update ({SUITE} {ARCH}, private state in {root})")
            _run(["apt-get", *opts, "-q", "update"])
            say(f"debian: apt-get download {' '.join(wanted)}")
            before = set(dest.glob("*.deb"))
            _run(["apt-get", *opts, "-q", "download", *wanted], cwd=dest)
            for name in wanted:
                found = [p for p in dest.glob(f"{name}_*_{ARCH}.deb") if p not in before] or sorted(
                    dest.glob(f"{name}_*_{ARCH}.deb"), key=lambda p: p.stat().st_mtime
                )
                if not found:
                    raise HostError(f"apt-get download {name} left no {name}_*_{ARCH}.deb")
                path = found[-1]
                old = lock.get(name)
                if old is not None and old.path != path:
                    old.path.unlink(missing_ok=True)
                lock[name] = Deb(name, _deb_field(path, "Version"), _sha256(path), path)
                say(f"debian: {name} {lock[name].version} ({path.stat().st_size:,} bytes)")
            _write_lock(dest, lock)
    return [lock[p].path for p in packages]


def _intact(deb: Deb | None) -> bool:
    return deb is not None and deb.path.is_file() and _sha256(deb.path) == deb.sha256


def extract_deb(deb: Path, into: Path) -> None:
    """Unpack ``deb``'s files under ``into`` (``dpkg-deb -x``; no maintainer scripts run)."""
    into.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(into)])
