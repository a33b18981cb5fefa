"""A Linux guest's disk throughput, hv against qemu-system-riscv64, raw and qcow2, and the
host-side ceiling (the backend alone, no guest).

Both boot the same kernel, initramfs and command line (from `hv image build linux`) with
128 MiB and one virtio-blk disk on the same kind of image file: hv as `hv run linux --disk
FILE,format=F`, qemu with `-drive file=FILE,if=none,format=F,cache=none` and
`-device virtio-blk-device` (OpenSBI fw_jump, TCG). The guest uses the raw block device
/dev/vda (no file system) with the userland's `dd`, which times itself and prints MB/s:

- seq write: `dd if=/dev/zero of=/dev/vda bs=1M count=N conv=fsync` (the fsync is timed);
- seq read: `dd if=/dev/vda of=/dev/null bs=1M count=N`, with the host's page cache dropped
  first ("cold"), then once more without dropping it ("warm");
- 4 KiB random reads: read-ahead off (`/sys/block/vda/queue/read_ahead_kb` = 0), then one
  `dd bs=4096 count=1 skip=K` per read, one at a time (queue depth 1). The userland's shell
  has no loops and the command line is short, so the host writes the list of reads as a
  shell script into the image, past the measured region; the guest copies it to /tmp and
  runs it. Each dd's MB/s gives that read's latency; the first WARMUP reads are not counted.

Every measurement is a fresh boot. The guest's page cache cannot help: a fresh boot has
none, and Linux drops a block device's cache when its last opener closes it (each `dd`).
The host's page cache is dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`, or
`posix_fadvise(DONTNEED)` on the image where that is refused) before every boot except
"warm". qemu's cache=none is O_DIRECT, so its reads never come from the host's cache; hv
does buffered I/O (reads that the page cache holds are answered without a thread), which is
what "warm" shows.

Each VMM gets a fresh image per repeat (a sparse raw file; a qcow2 made by `qemu-img
convert` from it, so only the script's cluster is allocated): the write boot allocates
what the read boots read. The order alternates (hv first, then qemu first, ...); each
figure is the best of --repeat (median in brackets).

The ceiling opens the same image with `blockdev.open.open_disk` in trio and does the same
operations directly, one at a time: 1 MiB writes then a flush, 1 MiB reads (cold, warm),
4 KiB reads at the same offsets.

    python bench/disk.py [--size 256M] [--rand-reads 400] [--repeat 3] [--formats raw,qcow2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as C
from hv.build import _image_linux

MiB = 1 << 20
BLOCK = 4096
WARMUP = 10  # random reads done first and not counted
SCRIPT_ROOM = 1 * MiB  # past the measured region: the random-read script
DD = re.compile(r"(\d+) bytes copied, ([\d.]+) s, ([\d.]+) MB/s")
MARK = "disk-bench-rand"
TESTS = ("write", "read", "read_warm", "rand")
LABELS = {
    "write": "seq write 1 MiB + fsync, MB/s",
    "read": "seq read 1 MiB, host cache dropped, MB/s",
    "read_warm": "seq read 1 MiB, host cache warm, MB/s",
    "rand": "4 KiB random read QD1, IOPS",
}
CMDLINE = 'console=ttyS0 quiet hv.run="{}"'


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": MiB, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    n = int(t[:-1]) * units[t[-1]] if t and t[-1] in units else int(t)
    if n <= 0 or n % MiB:
        raise argparse.ArgumentTypeError(f"{text}: give a positive whole number of MiB")
    return n


# -- the host side: images, caches ------------------------------------------------------------


def check_direct_io(directory: Path) -> None:
    """qemu's cache=none needs O_DIRECT, which tmpfs (and some others) refuse."""
    probe = directory / ".odirect-probe"
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
        os.close(fd)
    except OSError as exc:
        raise SystemExit(
            f"{directory}: O_DIRECT is refused ({exc.strerror}), so qemu's cache=none cannot "
            "open images there; give --dir on a disk file system"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def drop_host_cache(paths: Sequence[Path]) -> str:
    """Empty the host's page cache (of ``paths`` at least); say how."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches"
    except OSError:
        pass
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "fadvise"


def rand_offsets(size: int, n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(size // BLOCK) * BLOCK for _ in range(n)]


def rand_script(offsets: Sequence[int]) -> bytes:
    lines = [f"echo {MARK}"]
    lines += [f"dd if=/dev/vda of=/dev/null bs={BLOCK} count=1 skip={o // BLOCK}" for o in offsets]
    text = ("\n".join(lines) + "\n").encode()
    if len(text) > SCRIPT_ROOM:
        raise SystemExit(f"--rand-reads: too many for the script's {SCRIPT_ROOM} bytes")
    return text.ljust(-(-len(text) // BLOCK) * BLOCK, b"\n")


def make_image(directory: Path, fmt: str, size: int, script: bytes) -> Path:
    """A fresh image of ``size`` + SCRIPT_ROOM bytes: sparse, with ``script`` at ``size``."""
    raw = directory / "disk.raw"
    with contextlib.suppress(FileNotFoundError):
        raw.unlink()
    fd = os.open(raw, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size + SCRIPT_ROOM)
        os.pwrite(fd, script, size)
    finally:
        os.close(fd)
    if fmt == "raw":
        return raw
    q = directory / "disk.qcow2"
    with contextlib.suppress(FileNotFoundError):
        q.unlink()
    subprocess.run(
        [qemu_img(), "convert", "-f", "raw", "-O", "qcow2", str(raw), str(q)],
        check=True,
        capture_output=True,
    )
    raw.unlink()
    return q


def qemu_img() -> str:
    exe = shutil.which("qemu-img")
    if exe is None:
        raise SystemExit("needs qemu-img (qemu-utils): bash .ci/linux-deps.sh")
    return exe


def qemu_img_check(path: Path) -> str | None:
    """None if `qemu-img check` finds the image sound (leaks allowed), else its report."""
    r = subprocess.run([qemu_img(), "check", str(path)], capture_output=True, text=True)
    return None if r.returncode in (0, 3) else (r.stdout + r.stderr).strip()


# -- the guest side ----------------------------------------------------------------------------


def commands(size: int, script_len: int) -> dict[str, str]:
    count = size // MiB
    read = f"dd if=/dev/vda of=/dev/null bs=1M count={count}"
    script = (
        "echo 0 > /sys/block/vda/queue/read_ahead_kb; "
        f"dd if=/dev/vda of=/tmp/r.sh bs={BLOCK} skip={size // BLOCK} "
        f"count={script_len // BLOCK}; "
        "sh /tmp/r.sh"
    )
    return {
        "write": f"dd if=/dev/zero of=/dev/vda bs=1M count={count} conv=fsync",
        "read": read,
        "read_warm": read,
        "rand": script,
    }


def run_hv(
    image: Path, fmt: str, command: str, timeout: float, extra_env: Sequence[str] = ()
) -> str:
    cmd = [*C.hv_command(), "run", "linux", "--mem", "128M", "--disk", f"{image},format={fmt}",
           "--append", CMDLINE.format(f"{command}; poweroff")]  # fmt: skip
    env = C.python_env()
    env.update(item.split("=", 1) for item in extra_env)
    return run_guest(cmd, env, timeout)


def run_qemu(
    img: _image_linux.LinuxImage, image: Path, fmt: str, command: str, timeout: float
) -> str:
    cmd = [*C.qemu_command(), "-kernel", str(img.kernel), "-initrd", str(img.initrd),
           "-append", CMDLINE.format(f"{command}; poweroff"),
           "-drive", f"file={image},if=none,id=d0,format={fmt},cache=none",
           "-device", "virtio-blk-device,drive=d0"]  # fmt: skip
    return run_guest(cmd, None, timeout)


def run_guest(cmd: list[str], env: dict[str, str] | None, timeout: float) -> str:
    r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       errors="replace", timeout=timeout, check=False)  # fmt: skip
    if r.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd)} exited with status {r.returncode}:\n{r.stdout[-3000:]}"
            f"{r.stderr[-2000:]}"
        )
    return r.stdout


def dd_results(out: str) -> list[tuple[int, float, float]]:
    """(bytes, seconds, MB/s) of every dd the guest ran, in order."""
    return [(int(m[1]), float(m[2]), float(m[3])) for m in DD.finditer(out)]


def seq_figure(out: str, size: int) -> float:
    found = [r for r in dd_results(out) if r[0] == size]
    if len(found) != 1:
        raise SystemExit(f"no dd of {size} bytes in the guest's output:\n{out[-3000:]}")
    return found[0][2]


def rand_latencies(out: str, n: int) -> list[float]:
    """Seconds per counted read (dd's MB/s has more digits than its seconds)."""
    _, mark, rest = out.partition(MARK)
    runs = [r for r in dd_results(rest) if r[0] == BLOCK] if mark else []
    if len(runs) != n:
        raise SystemExit(f"{len(runs)} of {n} random reads in the guest's output:\n{out[-3000:]}")
    return [b / (mbps * 1e6) if mbps > 0 else max(s, 1e-3) for b, s, mbps in runs][WARMUP:]


def iops(latencies: Sequence[float]) -> float:
    return len(latencies) / sum(latencies)


# -- the ceiling: the backend alone ------------------------------------------------------------


def ceiling(
    directory: Path, fmt: str, size: int, offsets: Sequence[int], script: bytes
) -> dict[str, float]:
    import trio

    from blockdev.open import open_disk

    image = make_image(directory, fmt, size, script)
    spec = f"{image},format={fmt}"
    out: dict[str, float] = {}

    async def write() -> float:
        disk = await open_disk(spec)
        buf = bytes(MiB)
        t0 = time.perf_counter()
        for off in range(0, size, MiB):
            await disk.write(off, buf)
        await disk.flush()
        dt = time.perf_counter() - t0
        await disk.close()
        return size / dt / 1e6

    async def read() -> float:
        disk = await open_disk(spec)
        t0 = time.perf_counter()
        for off in range(0, size, MiB):
            await disk.read(off, MiB)
        dt = time.perf_counter() - t0
        await disk.close()
        return size / dt / 1e6

    async def rand() -> float:
        disk = await open_disk(spec)
        lat = []
        for off in offsets:
            t0 = time.perf_counter()
            await disk.read(off, BLOCK)
            lat.append(time.perf_counter() - t0)
        await disk.close()
        return iops(lat[WARMUP:])

    try:
        drop_host_cache([image])
        out["write"] = trio.run(write)
        drop_host_cache([image])
        out["read"] = trio.run(read)
        out["read_warm"] = trio.run(read)
        drop_host_cache([image])
        out["rand"] = trio.run(rand)
        if fmt == "qcow2" and (bad := qemu_img_check(image)):
            progress(f"warning: qemu-img check after the ceiling's writes:\n{bad}")
    finally:
        image.unlink()
    return out


# -- one VMM's sequence on a fresh image -------------------------------------------------------


def measure(
    vmm: str,
    run: Callable[[Path, str, str], str],
    directory: Path,
    fmt: str,
    size: int,
    n_rand: int,
    script: bytes,
    tag: str,
) -> dict[str, float]:
    image = make_image(directory, fmt, size, script)
    cmds = commands(size, len(script))
    out: dict[str, float] = {}
    try:
        for test in TESTS:
            if test != "read_warm":
                drop_host_cache([image])
            t0 = time.perf_counter()
            text = run(image, fmt, cmds[test])
            took = f"[boot to exit {time.perf_counter() - t0:.1f} s]"
            if test == "rand":
                lat = rand_latencies(text, n_rand + WARMUP)
                out["rand"] = iops(lat)
                out["rand_median_ms"] = statistics.median(lat) * 1e3
                progress(
                    f"{tag} {vmm:4} rand: {out['rand']:.0f} IOPS "
                    f"(median {out['rand_median_ms']:.3f} ms) {took}"
                )
            else:
                out[test] = seq_figure(text, size)
                progress(f"{tag} {vmm:4} {test}: {out[test]:.1f} MB/s {took}")
        if fmt == "qcow2" and (bad := qemu_img_check(image)):
            progress(f"warning: qemu-img check after {vmm}'s writes:\n{bad}")
    finally:
        image.unlink()
    return out


def fmt_cell(values: Sequence[float], digits: int, best: Callable[..., float] = max) -> str:
    if not values:
        return "-"
    b = best(values)
    if len(values) == 1:
        return f"{b:.{digits}f}"
    return f"{b:.{digits}f} ({statistics.median(values):.{digits}f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=256 * MiB,
                    help="bytes per sequential test, whole MiB (default 256M)")  # fmt: skip
    ap.add_argument("--rand-reads", type=int, default=400,
                    help=f"4 KiB random reads per run, after {WARMUP} uncounted "
                         "(default 400)")  # fmt: skip
    ap.add_argument("--repeat", type=int, default=3, help="runs of each VMM (default 3)")
    ap.add_argument("--formats", default="raw,qcow2", help="raw,qcow2 (default both)")
    ap.add_argument("--dir", type=Path, default=None,
                    help="where the images go (not tmpfs: qemu's cache=none needs O_DIRECT; "
                         "default a temporary directory in /var/tmp)")  # fmt: skip
    ap.add_argument("--no-ceiling", action="store_true", help="skip the backend-alone runs")
    ap.add_argument("--seed", type=int, default=1, help="random offsets' seed")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per boot")
    ap.add_argument("--hv-env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for the hv processes only (an experiment, e.g. "
                         "glibc's MALLOC_MMAP_THRESHOLD_=8388608); repeatable")  # fmt: skip
    args = ap.parse_args()
    if any("=" not in item for item in args.hv_env):
        raise SystemExit("--hv-env: NAME=VALUE")
    formats = [f for f in args.formats.split(",") if f]
    if any(f not in ("raw", "qcow2") for f in formats) or not formats:
        raise SystemExit("--formats: raw and/or qcow2")
    img = _image_linux.linux_image_info()
    if img is None:
        raise SystemExit("build the Linux image first: hv image build linux")
    C.qemu_command()
    qemu_img()
    progress(f"hv engine: {C.describe(C.engine_info('fast'))}; {C.qemu_version()}")
    if args.hv_env:
        progress(f"hv processes also get: {' '.join(args.hv_env)}")

    with contextlib.ExitStack() as stack:
        if args.dir is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(dir="/var/tmp")))
        else:
            directory = args.dir
            directory.mkdir(parents=True, exist_ok=True)
        check_direct_io(directory)
        progress(f"images in {directory}; host cache dropped with {drop_host_cache([])}")
        offsets = rand_offsets(args.size, args.rand_reads + WARMUP, args.seed)
        script = rand_script(offsets)
        n = args.rand_reads

        def hv(image: Path, fmt: str, command: str) -> str:
            return run_hv(image, fmt, command, args.timeout, args.hv_env)

        def qemu(image: Path, fmt: str, command: str) -> str:
            return run_qemu(img, image, fmt, command, args.timeout)

        results: dict[str, dict[str, dict[str, list[float]]]] = {}
        for fmt in formats:
            res = results[fmt] = {v: {} for v in ("hv", "qemu", "ceiling")}
            for i in range(args.repeat):
                order = [("hv", hv), ("qemu", qemu)]
                if i % 2:
                    order.reverse()
                for vmm, run in order:
                    got = measure(vmm, run, directory, fmt, args.size, n, script,
                                  f"[{fmt} {i + 1}/{args.repeat}]")  # fmt: skip
                    for k, v in got.items():
                        res[vmm].setdefault(k, []).append(v)
                if not args.no_ceiling:
                    got = ceiling(directory, fmt, args.size, offsets, script)
                    progress(
                        f"[{fmt} {i + 1}/{args.repeat}] ceiling: "
                        + ", ".join(f"{k} {v:.1f}" for k, v in got.items())
                    )
                    for k, v in got.items():
                        res["ceiling"].setdefault(k, []).append(v)

    size_mib = args.size // MiB
    print(f"disk: {size_mib} MiB sequential, {n} random 4 KiB reads; best of {args.repeat} "
          "(median)")  # fmt: skip
    head = f"{'':6}{'test':44}{'hv':>18}{'qemu':>18}{'hv/qemu':>9}{'ceiling':>18}"
    print(head)
    summary = []
    for fmt in formats:
        res = results[fmt]
        for test in TESTS:
            digits = 0 if test == "rand" else 1
            h, q = res["hv"].get(test, []), res["qemu"].get(test, [])
            c = res["ceiling"].get(test, [])
            ratio = max(h) / max(q) if h and q else float("nan")
            print(
                f"{fmt:6}{LABELS[test]:44}{fmt_cell(h, digits):>18}{fmt_cell(q, digits):>18}"
                f"{ratio:9.2f}{fmt_cell(c, digits):>18}"
            )
            summary.append(f"{fmt} {test} {ratio:.2f}")
        h, q = res["hv"].get("rand_median_ms", []), res["qemu"].get("rand_median_ms", [])
        print(f"{fmt:6}{'4 KiB random read, median latency ms':44}"
              f"{fmt_cell(h, 3, min):>18}{fmt_cell(q, 3, min):>18}")  # fmt: skip
    print("disk: hv/qemu " + ", ".join(summary))


if __name__ == "__main__":
    main()
