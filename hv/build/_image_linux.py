"""Build the Linux guest image: a riscv64 kernel ``Image`` and an initramfs, cached.

The kernel comes from Debian's ``linux-source-6.1`` package, built with Debian's
``riscv64-linux-gnu-`` cross compiler from ``make tinyconfig`` plus the fragment in
``hv/images/linux/config.fragment``. The initramfs holds our own static userland
(``hv/images/linux/userland/*.c``, one multi-call binary built with zig for
``riscv64-linux-musl``), packed as a newc cpio by this module, beside Debian's
``busybox-static`` for riscv64 (``/bin/busybox``: ``sh`` and the usual tools; downloaded by
``_debian``, its applets linked as ``_busybox`` says).

Everything lands in ``cache_dir()/images/linux-<key>/`` where the key hashes the kernel
source package version, the config fragment, the userland sources, ``_busybox.py``,
busybox's pinned version and sha256 (``_debian``'s ``packages.lock``) and
``BUILD_SCRIPT_VERSION``: an unchanged input set is a cache hit, any change rebuilds. The
unpacked source tree and the kernel object tree are kept per source version (under
``images/src`` and ``images/obj``) so a fragment change is an incremental ``make``; the
final directory is assembled in a temporary directory and renamed into place.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hv._errors import HostError
from hv.build import _busybox, _debian
from hv.build._progress import Progress, kbuild_step, run_logged, step_line
from hv.build._zig import cache_dir, zig_command

# Bump when this script's output changes for the same inputs (flags, cpio layout, ...).
BUILD_SCRIPT_VERSION = "2"

KERNEL_SOURCE_PACKAGE = "linux-source-6.1"
KERNEL_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
ARCH = "riscv"
CROSS_COMPILE = "riscv64-linux-gnu-"

# Works on QEMU virt and hv-virt: the 16550 at 0x1000_0000 is ttyS0 (found through the
# device tree); until its driver is up, early messages go through the SBI legacy console.
DEFAULT_CMDLINE = "console=ttyS0 earlycon=sbi"

# What building the kernel needs on Debian (no libssl/libelf: no module signing, no BTF,
# no objtool on riscv; no cpio: the initramfs is written by this module).
REQUIRED_PACKAGES: tuple[str, ...] = (
    KERNEL_SOURCE_PACKAGE,
    "gcc-riscv64-linux-gnu",
    "binutils-riscv64-linux-gnu",
    "gcc",
    "libc6-dev",
    "make",
    "bc",
    "bison",
    "flex",
    "xz-utils",
    *_debian.REQUIRED_PACKAGES,  # busybox-static for riscv64, from Debian's archive
)

# Debian's static busybox (riscv64), /bin/busybox in the initramfs.
BUSYBOX_PACKAGE = "busybox-static"
BUSYBOX_PATH = "usr/bin/busybox"  # in the package

USERLAND_CFLAGS: tuple[str, ...] = (
    "-target",
    "riscv64-linux-musl",
    "-static",
    "-Os",
    "-Wall",
    "-Wextra",
    "-ffunction-sections",
    "-fdata-sections",
    "-Wl,--gc-sections",
    "-s",
)

# Options the guest cannot do without. Checked against the final .config on top of the
# fragment's own lines, so that trimming the fragment cannot silently lose one of them.
REQUIRED_SYMBOLS: Mapping[str, str] = {
    "64BIT": "y",
    "MMU": "y",
    "FPU": "y",
    "RISCV_SBI": "y",
    "RISCV_SBI_V01": "y",
    "HVC_RISCV_SBI": "y",
    "SERIAL_EARLYCON_RISCV_SBI": "y",
    "RISCV_TIMER": "y",
    "SIFIVE_PLIC": "y",
    "TTY": "y",
    "SERIAL_8250": "y",
    "SERIAL_8250_CONSOLE": "y",
    "SERIAL_OF_PLATFORM": "y",
    "BLK_DEV_INITRD": "y",
    "PROC_FS": "y",
    "SYSFS": "y",
    "DEVTMPFS": "y",
    "DEVTMPFS_MOUNT": "y",
    "TMPFS": "y",
    "PRINTK": "y",
    "PRINTK_TIME": "y",
    "BINFMT_ELF": "y",
    "NET": "y",
    "INET": "y",
    "PACKET": "y",
    "UNIX": "y",
    "NETDEVICES": "y",
    "VIRTIO_MMIO": "y",
    "VIRTIO_NET": "y",
    "VIRTIO_BLK": "y",
    "VIRTIO_CONSOLE": "y",
    "EXT4_FS": "y",
    "FUTEX": "y",
    "EPOLL": "y",
    "SIGNALFD": "y",
    "TIMERFD": "y",
    "EVENTFD": "y",
    "POSIX_TIMERS": "y",
    "SHMEM": "y",
    "MODULES": "n",
    "IP_PNP": "n",
    # what network labs and hv exec rely on (issue 19)
    "IPV6": "y",
    "IP_MULTICAST": "y",
    "NETFILTER": "y",
    "NF_TABLES": "y",
    "NF_NAT": "y",
    "BRIDGE": "y",
    "TUN": "y",
    "VETH": "y",
    "NET_NS": "y",
    "NET_SCH_NETEM": "y",
    "VSOCKETS": "y",
    "VIRTIO_VSOCKETS": "y",
    "HW_RANDOM_VIRTIO": "y",
    "UNIX98_PTYS": "y",
}

IMAGES_DIR = Path(__file__).resolve().parent.parent / "images" / "linux"
FRAGMENT = IMAGES_DIR / "config.fragment"
USERLAND_DIR = IMAGES_DIR / "userland"

# kbuild's step lines (CC, AR, LD, ...) in a full build of this configuration, and what that
# build costs, as measured (the kernel stage's progress shows [n/~KERNEL_STEPS]): 1,399 lines
# and 609 s wall (431 s user, 76 s sys) for `make -j2 Image` from a fresh object tree at nice
# 19 on 2 cores shared with other jobs (2026-12-07, the fuller network config of issue 19;
# the smaller config before it: 1,151 lines, 854.6 s for `make -j2 Image` and 968.6 s for the
# whole image on 2 shared cores, 10 min 45 s for the whole image on a fresh 2-core machine).
KERNEL_STEPS = 1399
KERNEL_TIME = "11-16 min on 2 cores"


@dataclass(frozen=True)
class LinuxImage:
    kernel: Path  # the riscv64 kernel "Image" (load at RAM + 2 MiB, fw_jump convention)
    initrd: Path  # newc cpio, uncompressed
    cmdline: str  # default kernel command line
    key: str  # cache key of the inputs


# ---------------------------------------------------------------- packages


def _dpkg_status(pkgs: Sequence[str]) -> dict[str, str]:
    """Package -> installed version, for the packages of ``pkgs`` that are installed."""
    try:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${Package}\t${db:Status-Status}\t${Version}\n", *pkgs],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as e:
        raise HostError(
            "building the Linux guest needs a Debian (bookworm) host with dpkg: "
            f"cannot run dpkg-query ({e})"
        ) from e
    found: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1] == "installed":
            found[parts[0].split(":")[0]] = parts[2]
    return found


def missing_packages() -> list[str]:
    """The Debian packages the Linux build needs that are not installed."""
    installed = _dpkg_status(REQUIRED_PACKAGES)
    return [p for p in REQUIRED_PACKAGES if p not in installed]


def _install_hint(pkgs: Sequence[str]) -> str:
    return (
        f"run: apt-get install -y --no-install-recommends {' '.join(pkgs)}  "
        "(or, as root: hv image build linux --install-deps)"
    )


def install_packages(pkgs: Sequence[str]) -> None:
    """Install Debian packages with apt-get (root only)."""
    if not pkgs:
        return
    if os.geteuid() != 0:
        raise HostError(f"installing packages needs root; {_install_hint(pkgs)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", *pkgs],
    ):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        except OSError as e:
            raise HostError(f"cannot run apt-get ({e}); {_install_hint(pkgs)}") from e
        if proc.returncode != 0:
            raise HostError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{_tail(proc.stderr + proc.stdout)}"
            )
    still = [p for p in pkgs if p not in _dpkg_status(pkgs)]
    if still:
        raise HostError(f"apt-get did not install {' '.join(still)}")


# ---------------------------------------------------------------- config checking


_CONFIG_LINE = re.compile(r"^(?:CONFIG_(\w+)=(.*)|# CONFIG_(\w+) is not set)$")


def parse_config(text: str) -> dict[str, str]:
    """Kconfig text -> {symbol (without CONFIG_): value}; "is not set" becomes "n"."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        m = _CONFIG_LINE.match(raw.strip())
        if not m:
            continue
        if m.group(1):
            values[m.group(1)] = m.group(2)
        else:
            values[m.group(3)] = "n"
    return values


def check_config(config_text: str, required: Mapping[str, str]) -> list[str]:
    """Problems of a final .config against required {symbol: value}; empty when all hold.

    A wanted "n" is satisfied by an absent symbol (Kconfig omits invisible ones).
    """
    have = parse_config(config_text)
    problems = []
    for sym, want in required.items():
        name = sym.removeprefix("CONFIG_")
        got = have.get(name, "n")
        if got != want:
            shown = "not set" if got == "n" else got
            problems.append(f"CONFIG_{name}: wanted {want}, final .config has {shown}")
    return problems


def verify_config(config_path: Path, fragment_text: str) -> None:
    """Raise HostError unless every REQUIRED_SYMBOLS entry and fragment line held."""
    wanted = dict(parse_config(fragment_text))
    wanted.update(REQUIRED_SYMBOLS)
    problems = check_config(config_path.read_text(), wanted)
    if problems:
        raise HostError(
            "the kernel configuration lost options (an unmet Kconfig dependency?); fix "
            f"{FRAGMENT}:\n  " + "\n  ".join(problems)
        )


# ---------------------------------------------------------------- cache key


def _userland_sources(userland: Path = USERLAND_DIR) -> list[Path]:
    return sorted(p for p in userland.iterdir() if p.suffix in (".c", ".h"))


def _source_version() -> str | None:
    return _dpkg_status([KERNEL_SOURCE_PACKAGE]).get(KERNEL_SOURCE_PACKAGE)


def image_key(
    source_version: str,
    fragment: Path = FRAGMENT,
    userland: Path = USERLAND_DIR,
    busybox: str = "",
) -> str:
    """Hash of everything the image is built from (``busybox``: its "version sha256")."""
    h = hashlib.sha256()
    parts = (BUILD_SCRIPT_VERSION, source_version, ARCH, CROSS_COMPILE, DEFAULT_CMDLINE, busybox)
    for part in parts:
        h.update(part.encode() + b"\0")
    h.update(b" ".join(a.encode() for a in USERLAND_CFLAGS) + b"\0")
    # _busybox.py: which applet is whose and where its link goes is part of the image.
    for f in [fragment, *_userland_sources(userland), Path(_busybox.__file__)]:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _images_root() -> Path:
    return cache_dir() / "images"


def debs_dir() -> Path:
    """Where the Debian packages of the image are downloaded and pinned."""
    return cache_dir() / "debian" / "debs"


def _busybox_pin() -> str | None:
    deb = _debian.pinned(BUSYBOX_PACKAGE, debs_dir())
    return None if deb is None else f"{deb.version} {deb.sha256}"


def _image_from_dir(d: Path, key: str) -> LinuxImage | None:
    kernel, initrd = d / "Image", d / "initrd.cpio"
    if not (kernel.is_file() and initrd.is_file()):
        return None
    cmdline_file = d / "cmdline"
    cmdline = cmdline_file.read_text().strip() if cmdline_file.is_file() else DEFAULT_CMDLINE
    return LinuxImage(kernel=kernel, initrd=initrd, cmdline=cmdline, key=key)


def linux_image_info() -> LinuxImage | None:
    """The cached image for the current inputs, or None if it has not been built."""
    version = _source_version()
    pin = _busybox_pin()
    if version is None or pin is None:
        return None
    key = image_key(version, busybox=pin)
    return _image_from_dir(_images_root() / f"linux-{key}", key)


# ---------------------------------------------------------------- initramfs


def _cpio_entry(
    name: str, mode: int, data: bytes = b"", ino: int = 0, rdev: tuple[int, int] = (0, 0)
) -> bytes:
    namez = name.encode() + b"\0"
    fields = (
        ino,
        mode,
        0,
        0,
        2 if stat.S_ISDIR(mode) else 1,
        0,
        len(data),
        0,
        0,
        rdev[0],
        rdev[1],
        len(namez),
        0,
    )
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = header + namez
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def write_initramfs(
    out: Path, binary: Path, applets: Sequence[str], busybox: bytes | None = None
) -> None:
    """A newc cpio: /bin/hvbox, symlinks /init and /bin/<applet>, the mount points; with
    ``busybox`` (the binary), /bin/busybox and its applets' links (``_busybox.links``)."""
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = []
    dirs = ["bin", "dev", "etc", "mnt", "proc", "root", "sys", "tmp"]
    if busybox is not None:
        dirs += ["sbin", "usr", "usr/bin", "usr/sbin", "var", "var/www"]
    for d in dirs:
        entries.append((d, stat.S_IFDIR | 0o755, b"", (0, 0)))
    # The kernel opens /dev/console for init before anything is mounted.
    entries.append(("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)))
    entries.append(("dev/null", stat.S_IFCHR | 0o666, b"", (1, 3)))
    entries.append(("bin/hvbox", stat.S_IFREG | 0o755, binary.read_bytes(), (0, 0)))
    entries.append(("init", stat.S_IFLNK | 0o777, b"bin/hvbox", (0, 0)))
    if busybox is None:
        links = {f"bin/{name}": "hvbox" for name in applets if name != "init"}
    else:
        entries.append(("bin/busybox", stat.S_IFREG | 0o755, busybox, (0, 0)))
        links = _busybox.links(_busybox.applet_dirs(busybox), list(applets))
        for name, text in (
            ("passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
            ("group", b"root:x:0:\n"),
            ("profile", _busybox.profile()),
        ):
            entries.append((f"etc/{name}", stat.S_IFREG | 0o644, text, (0, 0)))
    for path, target in links.items():
        entries.append((path, stat.S_IFLNK | 0o777, target.encode(), (0, 0)))
    entries.append(
        ("etc/hvfabric-release", stat.S_IFREG | 0o644, b"hvfabric linux guest\n", (0, 0))
    )
    blob = bytearray()
    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        blob += _cpio_entry(name, mode, data, ino=ino, rdev=rdev)
    blob += _cpio_entry("TRAILER!!!", 0)
    blob += b"\0" * (-len(blob) % 512)
    out.write_bytes(bytes(blob))


def read_cpio_names(data: bytes) -> dict[str, int]:
    """Parse a newc cpio: {name: mode}; raises ValueError if it is not a valid archive."""
    names: dict[str, int] = {}
    off = 0
    while True:
        if data[off : off + 6] != b"070701":
            raise ValueError(f"bad newc magic at offset {off}")
        fields = [int(data[off + 6 + 8 * i : off + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name_start = off + 110
        name = data[name_start : name_start + namesize - 1].decode()
        off = name_start + namesize
        off += -off % 4
        off += filesize
        off += -off % 4
        if name == "TRAILER!!!":
            return names
        names[name] = mode
        if off > len(data):
            raise ValueError("truncated cpio archive")


def userland_applets(userland: Path = USERLAND_DIR) -> list[str]:
    """Applet names from the dispatch table in userland/main.c."""
    text = (userland / "main.c").read_text()
    return re.findall(r'^\s*\{"([A-Za-z0-9_.-]+)",\s*\w+,', text, flags=re.MULTILINE)


# ---------------------------------------------------------------- build steps


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class _Stages:
    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.t0 = time.monotonic()
        self.stage_t0 = self.t0

    def start(self, stage: str, detail: str = "") -> None:
        self.stage_t0 = time.monotonic()
        self.say(f"{stage}{': ' + detail if detail else ''}")

    def end(self, stage: str) -> None:
        now = time.monotonic()
        self.say(f"{stage} done in {now - self.stage_t0:.1f} s (total {now - self.t0:.1f} s)")

    def say(self, msg: str) -> None:
        if self.progress is not None:
            self.progress(msg)


def _run(
    cmd: Sequence[str],
    *,
    cwd: Path | None,
    log: Path,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] = lambda _line: None,
) -> None:
    try:
        status = run_logged(cmd, cwd=cwd, log=log, on_line=on_line, env=env)
    except OSError as e:
        raise HostError(f"cannot run {cmd[0]}: {e}") from e
    if status != 0:
        raise HostError(
            f"{' '.join(cmd)} failed ({status}); log: {log}\n"
            f"{_tail(log.read_text(errors='replace'))}"
        )


@contextmanager
def _locked(path: Path, stages: _Stages, what: str = "the Linux image") -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stages.say(f"waiting for another build of {what} to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _unpack_source(version: str, stages: _Stages) -> Path:
    """The unpacked kernel tree for this package version (unpacked once, atomically)."""
    src_root = _images_root() / "src"
    tree = src_root / f"linux-{version}"
    if (tree / "Makefile").is_file():
        return tree
    if not KERNEL_TARBALL.is_file():
        raise HostError(f"{KERNEL_TARBALL} is missing; {_install_hint([KERNEL_SOURCE_PACKAGE])}")
    stages.start("unpack", f"{KERNEL_TARBALL} -> {tree}")
    src_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=src_root, prefix=".unpack-") as tmp:
        log = Path(tmp) / "unpack.log"
        _run(["tar", "-xJf", str(KERNEL_TARBALL), "-C", tmp], cwd=None, log=log)
        top = [p for p in Path(tmp).iterdir() if p.is_dir()]
        if len(top) != 1 or not (top[0] / "Makefile").is_file():
            raise HostError(f"unexpected layout in {KERNEL_TARBALL}: {[p.name for p in top]}")
        if tree.exists():
            shutil.rmtree(tree)
        os.replace(top[0], tree)
    stages.end("unpack")
    return tree


def _kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ARCH=ARCH,
        CROSS_COMPILE=CROSS_COMPILE,
        KBUILD_BUILD_USER="hvfabric",
        KBUILD_BUILD_HOST="hvfabric",
        KBUILD_BUILD_TIMESTAMP="2024-01-01",
        LC_ALL="C",
    )
    env.pop("KCONFIG_ALLCONFIG", None)
    return env


def _configure(tree: Path, obj: Path, fragment: Path, log: Path, stages: _Stages) -> Path:
    stages.start("configure", "tinyconfig + config.fragment")
    env = _kernel_env()
    obj.mkdir(parents=True, exist_ok=True)
    make = ["make", "-C", str(tree), f"O={obj}"]
    _run([*make, "tinyconfig"], cwd=None, log=log, env=env)
    # -n: allnoconfig with tinyconfig + fragment as KCONFIG_ALLCONFIG (see the fragment).
    _run(
        [
            str(tree / "scripts/kconfig/merge_config.sh"),
            "-n",
            "-O",
            str(obj),
            str(obj / ".config"),
            str(fragment),
        ],
        cwd=tree,
        log=log,
        env=env,
    )
    config = obj / ".config"
    verify_config(config, fragment.read_text())
    stages.end("configure")
    return config


def _build_kernel(tree: Path, obj: Path, log: Path, jobs: int, stages: _Stages) -> Path:
    # Steps are kbuild's own lines (`  CC      kernel/fork.o`), counted against the count of
    # the last full build of this tree, else KERNEL_STEPS; an incremental build has no total.
    counted = obj / ".hv-kernel-steps"
    fresh = not (obj / "vmlinux").exists()
    total: int | None = None
    if fresh:
        try:
            total = int(counted.read_text())
        except (OSError, ValueError):
            total = KERNEL_STEPS
    stages.start(
        "kernel",
        f"make -j{jobs} Image ({'about ' + str(total) if total else 'an incremental build:'}"
        f" steps; {KERNEL_TIME} on a fresh tree)",
    )
    done = 0

    def on_line(line: str) -> None:
        nonlocal done
        step = kbuild_step(line)
        if step is not None:
            done += 1
            stages.say(step_line(done, total, step, estimated=True))

    _run(
        ["make", "-C", str(tree), f"O={obj}", f"-j{jobs}", "Image"],
        cwd=None,
        log=log,
        env=_kernel_env(),
        on_line=on_line,
    )
    image = obj / "arch/riscv/boot/Image"
    check_kernel_image(image)
    if fresh:
        counted.write_text(f"{done}\n")
    stages.end("kernel")
    return image


def check_kernel_image(path: Path) -> None:
    """Raise HostError unless ``path`` is a RISC-V Linux Image (magic "RSC\\x05" at 56)."""
    with path.open("rb") as f:
        head = f.read(64)
    if len(head) < 64 or head[56:60] != b"RSC\x05":
        raise HostError(f"{path} is not a riscv Linux Image (no RSC\\x05 magic at offset 56)")


def _build_userland(out: Path, userland: Path, log: Path, stages: _Stages) -> None:
    # One zig command, no steps to count: the first one for this target also builds musl's
    # libc (89 s of the 968 s cold build measured for KERNEL_TIME; seconds after that).
    stages.start(
        "userland", "zig cc -target riscv64-linux-musl (the first time also musl: 1-2 min)"
    )
    sources = [str(p) for p in _userland_sources(userland) if p.suffix == ".c"]
    cmd = [*zig_command(), "cc", *USERLAND_CFLAGS, "-o", str(out), *sources]
    with log.open("ab") as f:
        f.write(("\n$ " + " ".join(cmd) + "\n").encode())
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise HostError(f"cannot run zig ({e}); install the 'ziglang' package") from e
    with log.open("a") as f:
        f.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise HostError(f"building the guest userland failed:\n{_tail(proc.stderr)}")
    if "warning:" in proc.stderr:
        stages.say(f"userland compiler warnings:\n{_tail(proc.stderr)}")
    stages.end("userland")


def _fetch_busybox(stages: _Stages, refresh: bool) -> tuple[Path, str]:
    """Debian's busybox-static .deb (downloaded once, then pinned: ``_debian``) and its pin."""
    stages.start("busybox", f"Debian {_debian.SUITE} {BUSYBOX_PACKAGE} ({_debian.ARCH})")
    (deb,) = _debian.apt_download([BUSYBOX_PACKAGE], debs_dir(), stages.say, refresh=refresh)
    pin = _busybox_pin()
    assert pin is not None
    stages.say(f"busybox: {deb.name}")
    stages.end("busybox")
    return deb, pin


def build_linux(
    *,
    install_deps: bool = False,
    progress: Progress | None = None,
    jobs: int | None = None,
    refresh: bool = False,
) -> LinuxImage:
    """Build (or find in the cache) the Linux guest kernel and initramfs. ``refresh``: ask
    Debian's archive for the current busybox-static even if one is pinned."""
    stages = _Stages(progress)
    missing = missing_packages()
    if missing:
        if not install_deps:
            raise HostError(
                f"missing Debian packages: {' '.join(missing)}; " + _install_hint(missing)
            )
        stages.start("packages", f"apt-get install {' '.join(missing)}")
        install_packages(missing)
        stages.end("packages")
    version = _source_version()
    if version is None:
        raise HostError(
            f"{KERNEL_SOURCE_PACKAGE} is not installed; " + _install_hint([KERNEL_SOURCE_PACKAGE])
        )
    deb, pin = _fetch_busybox(stages, refresh)
    key = image_key(version, busybox=pin)
    root = _images_root()
    final = root / f"linux-{key}"
    cached = _image_from_dir(final, key)
    if cached is not None:
        stages.say(f"cached: {final}")
        return cached
    with _locked(root / ".linux-build.lock", stages):
        cached = _image_from_dir(final, key)  # built by whoever held the lock
        if cached is not None:
            stages.say(f"cached: {final}")
            return cached
        tree = _unpack_source(version, stages)
        obj = root / "obj" / f"linux-{version}"
        log = root / "linux-build.log"  # kept after a failure, copied into the image dir
        log.write_text(f"hvfabric Linux image build, key {key}\n")
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".linux-"))
        try:
            # Build from a snapshot of the inputs, so that an edit during the build cannot
            # end up in an image filed under the old key; the snapshot stays with the image.
            fragment = tmp / "inputs" / FRAGMENT.name
            userland = tmp / "inputs" / "userland"
            userland.mkdir(parents=True)
            shutil.copyfile(FRAGMENT, fragment)
            for f in _userland_sources():
                shutil.copyfile(f, userland / f.name)
            snap_key = image_key(version, fragment, userland, pin)
            if snap_key != key:
                stages.say(f"inputs changed since the start: building key {snap_key}")
                key, final = snap_key, root / f"linux-{snap_key}"
            config = _configure(tree, obj, fragment, log, stages)
            image = _build_kernel(tree, obj, log, jobs or os.cpu_count() or 1, stages)
            binary = tmp / "hvbox"
            _build_userland(binary, userland, log, stages)
            stages.start("initramfs", "newc cpio")
            _debian.extract_deb(deb, tmp / "busybox-deb")
            busybox = _busybox.quiet_prompt((tmp / "busybox-deb" / BUSYBOX_PATH).read_bytes())
            shutil.rmtree(tmp / "busybox-deb")
            write_initramfs(tmp / "initrd.cpio", binary, userland_applets(userland), busybox)
            stages.end("initramfs")
            shutil.copyfile(image, tmp / "Image")
            shutil.copyfile(config, tmp / "config")
            shutil.copyfile(log, tmp / "build.log")
            (tmp / "cmdline").write_text(DEFAULT_CMDLINE + "\n")
            (tmp / "key").write_text(
                f"{key}\n{KERNEL_SOURCE_PACKAGE} {version}\n{BUSYBOX_PACKAGE} {pin}\n"
            )
            binary.unlink()
            tmp.chmod(0o755)  # mkdtemp makes it 0700
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    result = _image_from_dir(final, key)
    if result is None:
        raise HostError(f"the build finished but {final} is incomplete")
    stages.say(f"done: {final}")
    return result


def _main(argv: Sequence[str]) -> int:
    """``python -m hv.build._image_linux [--install-deps] [-jN]``: build and print the paths."""
    install = "--install-deps" in argv
    jobs = next((int(a[2:]) for a in argv if a.startswith("-j") and a[2:].isdigit()), None)
    try:
        img = build_linux(
            install_deps=install,
            jobs=jobs,
            progress=lambda m: print(m, file=sys.stderr, flush=True),
        )
    except HostError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"kernel:  {img.kernel}\ninitrd:  {img.initrd}")
    print(f"cmdline: {img.cmdline}\nkey:     {img.key}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
