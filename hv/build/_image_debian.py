"""Build a Debian guest disk: a riscv64 Debian root file system in a qcow2 image, cached.

A Debian VM is hvfabric's own kernel and initramfs (``_image_linux``) plus a virtio-blk disk
holding Debian's root file system: our init sees ``root=/dev/vda``, mounts it and carries on
there as the same init (network from ``ip=``/DHCP, hostname, ``hv.run=``, the disk's
``/bin/sh`` on the console). No systemd: under emulation every process start costs
(translating fresh code), and systemd starts dozens of units before a shell.

The build needs no qemu-user and no binfmt on the host; the hypervisor builds its own image:

1. ``debootstrap --foreign`` on the host downloads the packages and unpacks the essential ones;
2. ``mkfs.ext4 -d`` packs that folder into a raw ext4 image (owners, modes and device nodes
   survive: mke2fs copies them);
3. an hv guest boots the fast image with that disk as its root (``root=/dev/vda``) and runs
   debootstrap's second stage (``dpkg`` unpacks and configures every package), then cleans up
   (``apt-get clean``, hostname, fstab), prints the package manifest and powers off;
4. ``e2image -ra`` copies only the used blocks (free blocks that held the downloaded .debs
   become holes) and ``qemu-img convert -O qcow2`` makes the read-only base.

Everything lands in ``cache_dir()/images/debian-<key>/`` (``base.qcow2``, ``manifest``: the
installed packages and versions, ``build.log``), where the key hashes the suite, the
architecture, the mirror, the sorted package set, the disk size and ``BUILD_SCRIPT_VERSION``.
Labs give each VM a throwaway ``snapshot`` overlay on the base.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hv._errors import ConfigError, HostError
from hv.build._debian import ARCH, KEYRING, MIRROR, SUITE, apt_options, prepare_state
from hv.build._image_linux import (
    LinuxImage,
    _dpkg_status,
    _locked,
    _run,
    _Stages,
    build_linux,
    install_packages,
)
from hv.build._progress import Progress, run_logged, step_line
from hv.build._zig import cache_dir

# Bump when this script's output changes for the same inputs (the guest script, cleanup, ...).
BUILD_SCRIPT_VERSION = "1"

DEFAULT_SIZE = 2 << 30
MIN_SIZE = 512 << 20
MAX_SIZE = 64 << 30

# The default package set (`image = "debian"`, `hv image build debian`): what network labs
# run, and what CI's real-client tests use.
DEFAULT_PACKAGES: tuple[str, ...] = (
    "frr",
    "iperf3",
    "iproute2",
    "iputils-ping",
    "nginx-light",
    "procps",
    "tcpdump",
)

# Host packages: debootstrap (the first stage), e2fsprogs (mkfs.ext4 -d, e2image), qemu-utils
# (qemu-img convert), the Debian archive keyring (trixie's keys).
REQUIRED_PACKAGES: tuple[str, ...] = (
    "debootstrap",
    "e2fsprogs",
    "qemu-utils",
    "debian-archive-keyring",
)

# Guest RAM for the second stage, and a bound on it (a stuck guest must not hang CI forever).
STAGE2_MEM = "1G"
STAGE2_TIMEOUT_S = 90 * 60


# Debian package names (Policy 5.6.1): lowercase letters, digits, + - . ; 2+ characters.
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")

_GUEST_SCRIPT = """#!/bin/sh
# hvfabric: debootstrap's second stage inside an hv guest (hv/build/_image_debian.py)
echo "hv-debian: second stage starts"
/debootstrap/debootstrap --second-stage
status=$?
if [ "$status" -ne 0 ]; then
    echo "hv-debian: the tail of /debootstrap/debootstrap.log:"
    tail -n 40 /debootstrap/debootstrap.log
elif [ -d /var/cache/hvfabric-debs ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d  # no service starts in the build
    chmod 755 /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        /var/cache/hvfabric-debs/*.deb
    status=$?
    rm -rf /usr/sbin/policy-rc.d /var/cache/hvfabric-debs
fi
if [ "$status" -eq 0 ]; then
    apt-get clean
    rm -rf /var/lib/apt/lists/* /var/log/bootstrap.log /var/cache/debconf/*-old
    rm -f /etc/dpkg/dpkg.cfg.d/hvfabric-unsafe-io
    echo debian > /etc/hostname
    echo "/dev/vda / ext4 defaults,noatime 0 1" > /etc/fstab
    echo "hv-debian: manifest begins"
    dpkg-query -W -f='${Package}\\t${Version}\\n'
    echo "hv-debian: manifest ends"
fi
rm -f /hv-second-stage.sh
sync
echo "hv-debian: second stage exit $status"
/run/hv/bin/poweroff
"""

_EXIT = re.compile(r"hv-debian: second stage exit (\d+)")
_STEP = re.compile(
    r"^(?:I: )?(Unpacking|Configuring|Extracting|Retrieving|Setting up) (\S+?)(?:\.\.\.)?(?: .*)?$"
)


@dataclass(frozen=True)
class DebianImage:
    base: Path  # the read-only qcow2 base
    manifest: Path  # "package<TAB>version" lines
    packages: tuple[str, ...]  # the requested set, sorted
    key: str


def parse_packages(text: str | Sequence[str], key: str = "--packages") -> tuple[str, ...]:
    """``iperf3,frr`` or a list -> a sorted, de-duplicated tuple; ConfigError naming ``key``."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = set()
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{key}: expected package names, not {item!r}")
        name = item.strip()
        if not name:
            continue
        if not _PACKAGE.match(name):
            raise ConfigError(f"{key}: {name!r} is not a Debian package name")
        out.add(name)
    return tuple(sorted(out))


def image_key(packages: Sequence[str], size: int = DEFAULT_SIZE) -> str:
    h = hashlib.sha256()
    for part in (BUILD_SCRIPT_VERSION, SUITE, ARCH, MIRROR, ",".join(sorted(packages)), str(size)):
        h.update(part.encode() + b"\0")
    h.update(_GUEST_SCRIPT.encode())
    return h.hexdigest()[:16]


def _images_root() -> Path:
    return cache_dir() / "images"


def _from_dir(d: Path, packages: tuple[str, ...], key: str) -> DebianImage | None:
    base, manifest = d / "base.qcow2", d / "manifest"
    if not (base.is_file() and manifest.is_file()):
        return None
    return DebianImage(base=base, manifest=manifest, packages=packages, key=key)


def debian_image_info(
    packages: Sequence[str] = DEFAULT_PACKAGES, size: int = DEFAULT_SIZE
) -> DebianImage | None:
    """The cached image for this package set, or None if it has not been built."""
    pkgs = tuple(sorted(set(packages)))
    key = image_key(pkgs, size)
    return _from_dir(_images_root() / f"debian-{key}", pkgs, key)


def built_images() -> list[DebianImage]:
    """Every Debian image in the cache (its package set from its ``packages`` file)."""
    found = []
    for d in sorted(_images_root().glob("debian-*")):
        try:
            pkgs = tuple((d / "packages").read_text().split())
        except OSError:
            continue
        img = _from_dir(d, pkgs, d.name.removeprefix("debian-"))
        if img is not None:
            found.append(img)
    return found


def build_command(packages: Sequence[str]) -> str:
    """The command that builds the image for ``packages`` (for error messages)."""
    if tuple(sorted(packages)) == DEFAULT_PACKAGES:
        return "hv image build debian"
    listed = ",".join(sorted(packages)) or "''"
    return f"hv image build debian --packages {listed}"


# ---------------------------------------------------------------- build steps


def _first_stage(target: Path, packages: Sequence[str], log: Path, stages: _Stages) -> None:
    stages.start("debootstrap", f"first stage on the host: {SUITE} {ARCH} minbase")
    cmd = ["debootstrap", "--foreign", f"--arch={ARCH}", "--variant=minbase"]
    if KEYRING.is_file():
        cmd.append(f"--keyring={KEYRING}")
    cmd += [SUITE, str(target), MIRROR]
    done = 0

    def on_line(line: str) -> None:
        nonlocal done
        m = _STEP.match(line.strip())
        if m is not None:
            done += 1
            stages.say(step_line(done, None, f"{m.group(1)} {m.group(2)}"))

    _run(cmd, cwd=None, log=log, on_line=on_line)
    stages.end("debootstrap")


def _download(target: Path, packages: Sequence[str], log: Path, stages: _Stages) -> int:
    """Download ``packages`` and their dependencies for riscv64 with apt's own resolver (a
    private state folder; the host's apt is not touched) into the image, where the guest
    installs them with apt after the minbase second stage. debootstrap's ``--include``
    cannot do it: it takes the first alternative of every dependency and installs them in
    batches that break on pre-dependencies (frr -> logrotate -> cron -> systemd fails)."""
    stages.start("download", f"apt-get --download-only {' '.join(packages)} ({ARCH})")
    state = target.parent / "apt"
    prepare_state(state)
    debs = target / "var/cache/hvfabric-debs"
    debs.mkdir(parents=True)
    opts = [*apt_options(state), "-o", f"Dir::Cache::archives={debs}/"]
    opts += ["-o", "APT::Install-Recommends=false"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = 0

    def on_line(line: str) -> None:
        nonlocal done
        if line.startswith("Get:"):
            done += 1
            stages.say(step_line(done, None, " ".join(line.split()[3:5])))

    _run(["apt-get", *opts, "update"], cwd=None, log=log, env=env)
    _run(["apt-get", *opts, "install", "--download-only", "-y", *packages], cwd=None, log=log,
         env=env, on_line=on_line)  # fmt: skip
    shutil.rmtree(debs / "partial", ignore_errors=True)
    (debs / "lock").unlink(missing_ok=True)
    shutil.rmtree(state)
    stages.end("download")
    return len(list(debs.glob("*.deb")))


def _prepare(target: Path) -> int:
    """Make the first stage's tree bootable by our init and return the package count."""
    proc = target / "proc"
    if proc.is_symlink():  # debootstrap --foreign leaves proc -> /proc
        proc.unlink()
        proc.mkdir()
    # dpkg fsyncs every file it unpacks; the image is thrown away if the build fails.
    cfg = target / "etc/dpkg/dpkg.cfg.d"
    cfg.mkdir(parents=True, exist_ok=True)
    (cfg / "hvfabric-unsafe-io").write_text("force-unsafe-io\n")
    script = target / "hv-second-stage.sh"
    script.write_text(_GUEST_SCRIPT)
    script.chmod(0o755)
    count = 0
    for name in ("required", "base"):
        f = target / "debootstrap" / name
        if f.is_file():
            count += len(f.read_text().split())
    return count


def _mkfs(target: Path, raw: Path, size: int, log: Path, stages: _Stages) -> None:
    stages.start("mkfs", f"mkfs.ext4 -d ({size >> 20} MiB)")
    _run(
        ["mkfs.ext4", "-q", "-F", "-L", "debian", "-d", str(target), str(raw), f"{size >> 10}K"],
        cwd=None,
        log=log,
    )
    stages.end("mkfs")


def _second_stage(
    raw: Path, packages: int, linux: LinuxImage, log: Path, stages: _Stages
) -> list[str]:
    """Boot the fast image with ``raw`` as root and run the guest script; the manifest lines."""
    total = 2 * packages if packages else None
    stages.start(
        "second stage",
        f"dpkg in an hv guest ({packages} packages; about 1 s of host time each)",
    )
    cmdline = f"{linux.cmdline} root=/dev/vda hv.run=/hv-second-stage.sh"
    cmd = [
        sys.executable, "-m", "hv.cli", "run", str(linux.kernel), "--initrd", str(linux.initrd),
        "--mem", STAGE2_MEM, "--disk", f"{raw},format=raw", "--append", cmdline,
    ]  # fmt: skip
    done = 0
    status: int | None = None
    manifest: list[str] | None = None
    listing = False
    tail: list[str] = []

    def on_line(line: str) -> None:
        nonlocal done, status, manifest, listing
        text = line.strip()
        tail.append(text)
        del tail[:-60]
        if text in ("hv-debian: manifest begins", "hv-debian: manifest ends"):
            listing = text.endswith("begins")
            manifest = [] if listing else manifest
            return
        if listing and manifest is not None:
            manifest.append(text)
            return
        m = _EXIT.search(text)
        if m is not None:
            status = int(m.group(1))
            return
        step = _STEP.match(text)
        if step is not None:
            done += 1
            stages.say(step_line(done, total, f"{step.group(1)} {step.group(2)}", estimated=True))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = ["timeout", "--kill-after=10", str(STAGE2_TIMEOUT_S), *cmd]
    try:
        _run(cmd, cwd=None, log=log, env=env, on_line=on_line)
    except HostError as e:
        if status is None:
            raise HostError(f"the second-stage guest failed (log: {log}): {e}") from None
    if status != 0:
        what = f"exit status {status}" if status is not None else "it never said it ended"
        raise HostError(
            f"debootstrap's second stage failed in the guest ({what}); log: {log}\n"
            + "\n".join(tail[-40:])
        )
    if not manifest:
        raise HostError(f"the second-stage guest printed no package manifest; log: {log}")
    stages.end("second stage")
    return manifest


def _pack(raw: Path, out: Path, log: Path, stages: _Stages) -> None:
    stages.start("qcow2", "e2image -ra (used blocks only) + qemu-img convert -O qcow2")
    sparse = raw.with_suffix(".sparse")
    # The guest powers off without unmounting its root (like a pulled plug, after sync):
    # e2fsck replays the journal and clears the orphan list; 1 means "fixed", not a failure.
    cmd = ["e2fsck", "-fy", str(raw)]
    status = run_logged(cmd, cwd=None, log=log, on_line=lambda _line: None)
    if status not in (0, 1):
        raise HostError(f"{' '.join(cmd)} failed ({status}); log: {log}")
    _run(["e2image", "-ra", str(raw), str(sparse)], cwd=None, log=log)
    raw.unlink()
    _run(["qemu-img", "convert", "-O", "qcow2", str(sparse), str(out)], cwd=None, log=log)
    sparse.unlink()
    out.chmod(0o444)
    stages.end("qcow2")


def missing_packages() -> list[str]:
    installed = _dpkg_status(REQUIRED_PACKAGES)
    return [p for p in REQUIRED_PACKAGES if p not in installed]


def build_debian(
    packages: Sequence[str] = DEFAULT_PACKAGES,
    *,
    size: int = DEFAULT_SIZE,
    install_deps: bool = False,
    progress: Progress | None = None,
    linux: LinuxImage | None = None,
) -> DebianImage:
    """Build (or find in the cache) the Debian image for ``packages``; the second stage boots
    ``linux`` (default: the fast image, built first if needed)."""
    stages = _Stages(progress)
    pkgs = tuple(sorted(set(packages)))
    key = image_key(pkgs, size)
    root = _images_root()
    final = root / f"debian-{key}"
    cached = _from_dir(final, pkgs, key)
    if cached is not None:
        stages.say(f"cached: {final} ({time.monotonic() - stages.t0:.1f} s)")
        return cached
    missing = missing_packages()
    if missing:
        if not install_deps:
            raise HostError(
                f"missing Debian packages: {' '.join(missing)}; run: apt-get install -y "
                f"{' '.join(missing)}  (or, as root: hv image build debian --install-deps)"
            )
        stages.start("packages", f"apt-get install {' '.join(missing)}")
        install_packages(missing)
        stages.end("packages")
    if os.geteuid() != 0:
        raise HostError("building the Debian image needs root (debootstrap creates devices)")
    with _locked(root / ".debian-build.lock", stages, "the Debian image"):
        cached = _from_dir(final, pkgs, key)
        if cached is not None:
            stages.say(f"cached: {final}")
            return cached
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".debian-"))
        log = tmp / "build.log"
        log.write_text(f"hvfabric Debian image build, key {key}, packages {' '.join(pkgs)}\n")
        try:
            target = tmp / "root"
            _first_stage(target, pkgs, log, stages)
            extra = _download(target, pkgs, log, stages) if pkgs else 0
            count = _prepare(target) + extra
            raw = tmp / "root.img"
            _mkfs(target, raw, size, log, stages)
            shutil.rmtree(target)
            if linux is None:
                linux = build_linux(progress=stages.progress)
            manifest = _second_stage(raw, count, linux, log, stages)
            _pack(raw, tmp / "base.qcow2", log, stages)
            (tmp / "manifest").write_text("\n".join(manifest) + "\n")
            (tmp / "packages").write_text(" ".join(pkgs) + "\n")
            (tmp / "key").write_text(f"{key}\n{SUITE} {ARCH} {MIRROR} size {size}\n")
            tmp.chmod(0o755)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            keep = root / "debian-build.log"
            if log.is_file():
                shutil.copyfile(log, keep)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    result = _from_dir(final, pkgs, key)
    if result is None:
        raise HostError(f"the build finished but {final} is incomplete")
    stages.say(f"done: {final} (cold build: {time.monotonic() - stages.t0:.1f} s)")
    return result


def _main(argv: Sequence[str]) -> int:
    """``python -m hv.build._image_debian [--install-deps] [--packages a,b]``."""
    install = "--install-deps" in argv
    pkgs: Sequence[str] = DEFAULT_PACKAGES
    for a in argv:
        if a.startswith("--packages="):
            pkgs = parse_packages(a.split("=", 1)[1])
    try:
        img = build_debian(
            pkgs, install_deps=install, progress=lambda m: print(m, file=sys.stderr, flush=True)
        )
    except (HostError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"base:     {img.base}\nmanifest: {img.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
