"""The ``hv`` command line: run a guest with its console on the terminal, manage guests."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from hv import _log
from hv._errors import ConfigError, HvError
from hv._nic import Nic
from hv._values import MIB, argument, host_threads, size
from hv.build import StderrProgress, _guests, _image_linux, resolve_kernel
from hv.cli import _control as _control_cli
from hv.cli import _debian as _debian_cli
from hv.cli import _disk as _disk_cli
from hv.cli import _exec as _exec_cli
from hv.cli import _link as _link_cli
from hv.cli import _netem as _netem_cli
from hv.cli import _snapshot as _snapshot_cli
from hv.cli._terminal import EXIT_OUTPUT_CLOSED, EscapeKeys, raw_terminal
from hv.hw import DEFAULT_MIPS, DEFAULT_QUANTUM
from hv.hw import _platform as P

if TYPE_CHECKING:
    from hv._vm import Vm
    from hv.lab import Mesh
    from netfabric.ports.tap import TapPort
    from netfabric.switch import Switch

EXIT_CONFIG = 4  # bad command line or input file (the guest never ran)


def parse_size(text: str) -> int:
    """'128M', '1G', '512' (MiB, as QEMU's -m) -> bytes (``hv._values.size``)."""
    return argument(size, bare=MIB)(text)


def _whole(text: str) -> int:
    try:
        return int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None


def _quantum(text: str) -> int:
    n = _whole(text)
    if n <= 0:
        raise argparse.ArgumentTypeError("the quantum must be positive")
    return n


def _smp(text: str) -> int:
    n = _whole(text)
    if not 1 <= n <= P.SMP_MAX:
        raise argparse.ArgumentTypeError(f"{n} harts: use 1 to {P.SMP_MAX}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hv",
        description="hvfabric: run riscv64 guests on the hv-virt machine (Unicorn vCPUs, trio).",
        epilog="Run 'hv COMMAND --help' for a command's options.",
    )
    p.add_argument("--version", action="version", version="hvfabric 0.1.0")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="boot a kernel with its console on this terminal",
        description=(
            "Boot KERNEL on an hv-virt machine and connect its console (16550 UART and SBI "
            "console) to this terminal. KERNEL is an ELF file, a Linux riscv Image, a raw "
            "binary (loaded at 0x80200000), the name of a bundled guest (see 'hv guests "
            "list'), or 'linux' (after 'hv image build linux'). The exit status is the "
            "guest's: 0 after a clean shutdown, 1 when the guest reports a failure (or a "
            "Linux kernel panic), 2 after a fatal guest fault, 3 on a host error, 4 for bad "
            "input. On a terminal, type Ctrl-A x to quit."
        ),
    )
    run.add_argument("kernel", metavar="KERNEL", help="kernel file, bundled guest name, or linux")
    run.add_argument(
        "--mem",
        type=parse_size,
        default=P.MEM_DEFAULT,
        metavar="SIZE",
        help="guest RAM, e.g. 128M or 1G (default 128M; 16M to 16G)",
    )
    run.add_argument(
        "--append",
        metavar="CMDLINE",
        help="kernel command line (default: the image's own, e.g. console=ttyS0 for linux)",
    )
    run.add_argument("--initrd", type=Path, metavar="FILE", help="initial ramdisk to load")
    run.add_argument(
        "--dtb-out", type=Path, metavar="FILE", help="also write the generated device tree here"
    )
    run.add_argument(
        "--net",
        action="append",
        default=[],
        metavar="tap:NAME[,ip=ADDR/N][,mac=MAC]",
        help=(
            "a virtio-net NIC on the host's TAP interface NAME (created if missing: needs "
            "root or CAP_NET_ADMIN; or pre-create it with 'ip tuntap add mode tap user $USER "
            "name NAME'); ip= reaches the guest's command line; repeat for more NICs"
        ),
    )
    run.add_argument(
        "--disk",
        action="append",
        default=[],
        metavar="FILE[,ro][,format=raw|qcow2][,snapshot][,serial=ID]",
        help=(
            "a virtio-blk disk (repeatable): the format is detected unless given; snapshot "
            "sends writes to a temporary overlay dropped at exit (see hv disk create)"
        ),
    )
    run.add_argument(
        "--backing-dir",
        action="append",
        default=[],
        metavar="DIR",
        help=(
            "also follow qcow2 backing files into DIR (repeatable; by default only into the "
            "image's own folder); a block device as backing file must be named here itself"
        ),
    )
    run.add_argument(
        "--smp",
        type=_smp,
        default=1,
        metavar="N",
        help=(
            f"number of harts (CPUs) of the machine, 1 to {P.SMP_MAX} (default 1), as QEMU's "
            "-smp: hart 0 boots, the others are started by the guest (SBI HSM)"
        ),
    )
    run.add_argument(
        "--jobs",
        type=_whole,
        metavar="N",
        help=(
            "host threads the harts of an --smp guest run on at once, on real time (default: "
            "every core; on virtual time they take turns, so the run repeats)"
        ),
    )
    run.add_argument(
        "--quantum",
        type=_quantum,
        default=DEFAULT_QUANTUM,
        metavar="N",
        help=f"guest instructions per time slice, approximately (default {DEFAULT_QUANTUM:,})",
    )
    _add_clock_options(run, lab=False)
    _add_log_options(run)

    guests = sub.add_parser(
        "guests",
        help="list, build or locate the bundled firmware guests",
        description="The bundled firmware guests are built from C with zig on first use.",
    )
    gsub = guests.add_subparsers(dest="guests_command", metavar="ACTION", required=True)
    gsub.add_parser("list", help="list the bundled guests")
    gb = gsub.add_parser("build", help="build bundled guests (all by default)")
    gb.add_argument("names", nargs="*", metavar="NAME")
    gp = gsub.add_parser("path", help="print the path of a bundled guest's ELF (builds it)")
    gp.add_argument("name", metavar="NAME")

    image = sub.add_parser(
        "image",
        help="build and inspect guest OS images (Linux, Debian)",
        description=(
            "Guest OS images built from Debian packages and cached under the user's cache "
            "directory ($XDG_CACHE_HOME/hvfabric/images), rebuilt only when their inputs "
            "change (kernel source version, config fragment, userland sources; for debian: "
            "the package set and size)."
        ),
    )
    isub = image.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    ib = isub.add_parser(
        "build",
        help="build an image (linux: kernel Image + initramfs; debian: a root disk)",
        description=(
            "linux: build the riscv64 Linux kernel from Debian's linux-source-6.1 with Debian's "
            "cross compiler and the config fragment in hv/images/linux, and an initramfs with "
            "hvfabric's own userland (built with zig) and Debian's busybox-static. The first "
            f"build takes {_image_linux.KERNEL_TIME}, showing make's steps on stderr; then it "
            "is cached. "
            "debian: a Debian trixie riscv64 root file system as a qcow2 base for labs "
            '(image = "debian"): debootstrap\'s first stage on the host (root), its second '
            "stage inside an hv guest booting the linux image (built first if needed)."
        ),
    )
    ib.add_argument("name", choices=IMAGES, metavar="NAME", help="image to build: linux, debian")
    ib.add_argument(
        "--install-deps",
        action="store_true",
        help="install missing Debian packages with apt-get (needs root)",
    )
    ib.add_argument("--jobs", type=int, metavar="N", help="parallel compile jobs (default: CPUs)")
    ib.add_argument(
        "--refresh",
        action="store_true",
        help="ask Debian's archive for the current busybox-static (otherwise the one "
        "downloaded first is kept, and the build works offline)",
    )
    ii = isub.add_parser("info", help="show where a built image is")
    ii.add_argument("name", choices=IMAGES, metavar="NAME", help="image: linux, debian")
    ii.add_argument(
        "--json",
        action="store_true",
        help='print {"kernel", "initrd", "cmdline"} (debian: {"base", "manifest", "packages"})',
    )
    _debian_cli.add_arguments(ib, ii)
    isub.add_parser("list", help="list the built images")

    _disk_cli.add_parser(sub)

    up = sub.add_parser(
        "up",
        help="run a lab: switches and VMs described in a TOML file",
        description=(
            "Run the lab in LAB.toml: its switches (with captures) and VMs, each VM's console "
            "printed with its name in front of every line. The lab ends when every VM has "
            "stopped (status 0 only if all stopped cleanly), or with --exit-code-from when "
            "that VM stops. Ctrl-C stops everything; captures are flushed. Paths in the file "
            "are relative to it."
        ),
    )
    up.add_argument("lab", metavar="LAB.toml", nargs="?", help="the lab file")
    up.add_argument(
        "--restore",
        metavar="DIR",
        help="go on from the lab snapshot in DIR (hv snapshot LAB DIR) instead of booting: "
        "the lab's tables, clock, seed and rate are the snapshot's (give no LAB.toml)",
    )
    up.add_argument(
        "-d",
        "--detach",
        action="store_true",
        help="run the lab in the background (see hv ps, console, capture, stop, down)",
    )
    up.add_argument(
        "-p",
        "--project-name",
        metavar="NAME",
        help="the lab's name (default: the file's name = \"...\", else FOLDER-STEM of its path, "
        "as ~/net/lab.toml -> net-lab); hv ps, console, down ... take it",
    )
    up.add_argument("--attach", metavar="NAME", help="send this terminal's input to VM NAME")
    up.add_argument(
        "--start-timeout",
        type=_control_cli.start_timeout,
        default=_control_cli.START_TIMEOUT,
        metavar="S",
        help=f"with -d: give up (and stop the lab) if it does not answer within S seconds "
        f"(default {_control_cli.START_TIMEOUT:g})",
    )
    up.add_argument(
        "--force",
        action="store_true",
        help="let a capture overwrite an existing file that is not pcapng",
    )
    up.add_argument(
        "--shards",
        type=_whole,
        metavar="N",
        help=(
            "run the lab over N processes (MPI ranks, started with the mpich wheel's "
            "mpiexec; a VM's shard = K key places it, else they are spread evenly; "
            "docs/SCALING.md). As mpiexec -n N hv up LAB"
        ),
    )
    up.add_argument(
        "--exit-code-from", metavar="NAME", help="end the lab when VM NAME stops, with its status"
    )
    up.add_argument(
        "--host",
        metavar="NAME",
        help="a lab over several hosts ([hosts] in its file): run host NAME's part (its VMs, "
        "their switches, VXLAN to the other hosts); the lab's name is then NAME-HOST",
    )
    view = up.add_mutually_exclusive_group()
    view.add_argument(
        "--stats",
        dest="view",
        action="store_const",
        const="on",
        help="print per-VM and per-port rates every second even when stdout is not a terminal",
    )
    view.add_argument(
        "--no-view",
        dest="view",
        action="store_const",
        const="off",
        help="no live table on a terminal: the consoles only",
    )
    _add_clock_options(up, lab=True)
    _add_log_options(up)
    _control_cli.add_parsers(sub)  # ps, console, stop, down, capture: driving a running lab
    _netem_cli.add_parsers(sub, up)  # hv netem: a running lab's impaired cables
    _exec_cli.add_parsers(sub)  # hv exec, hv cp: commands and files in a lab's guests
    _link_cli.add_parsers(sub)  # hv link: a running lab's cables pulled out and plugged back
    _snapshot_cli.add_parsers(sub)  # hv snapshot: a running lab saved, to go on from later

    demo = sub.add_parser(
        "demo",
        help="boot a small network of guests that ping and exchange UDP, captured",
        description=(
            "Boot five bundled firmware guests on one switch: two UDP echo servers, two ping "
            "clients and a UDP load generator. They find each other by ARP, ping and exchange "
            "UDP; every frame goes to the capture (demo.pcapng: tshark -r demo.pcapng). Then a "
            "summary per guest and per switch port. Exit 0 if every ping was answered and no "
            "datagram was lost."
        ),
    )
    demo.add_argument(
        "--capture", metavar="FILE", default="demo.pcapng", help="default demo.pcapng"
    )
    demo.add_argument("--pings", type=int, default=10, help="pings per client (default 10)")
    demo.add_argument("--datagrams", type=int, default=2000, help="UDP datagrams (default 2000)")
    demo.add_argument(
        "--linux",
        action="store_true",
        help="the same network with Linux guests (needs 'hv image build linux'); TCP, not UDP",
    )
    _add_log_options(demo)

    engine = sub.add_parser(
        "engine",
        help="build and inspect the CPU engine (patched Unicorn)",
        description=(
            "hv runs guests on its fast engine: Unicorn "
            f"{_engine_version()} built from its PyPI sdist with hvfabric's patches (fast "
            "guest stores, one inline check per translated block), cached under "
            "$XDG_CACHE_HOME/hvfabric/engine. The first run builds it (about a minute). "
            "HV_ENGINE=stock runs on the unicorn wheel's own library instead."
        ),
    )
    esub = engine.add_subparsers(dest="engine_command", metavar="ACTION", required=True)
    eb = esub.add_parser("build", help="build the fast engine (or find it in the cache)")
    eb.add_argument("--force", action="store_true", help="rebuild even if it is cached")
    ei = esub.add_parser("info", help="which engine this process runs on, and where it is")
    ei.add_argument("--json", action="store_true", help="print it as JSON")
    return p


def _engine_version() -> str:
    from hv.engine import UNICORN_VERSION

    return UNICORN_VERSION


IMAGES = ("linux", "debian")


# One line on what virtual time is, for --help (docs/TIME.md says the rest).
VIRTUAL_TIME = (
    "guest time comes from the instructions the guests run, not from the host's clock: a run "
    "does not depend on the host, and an idle guest skips ahead to its next timer; "
    "docs/TIME.md"
)


def _add_clock_options(p: argparse.ArgumentParser, *, lab: bool) -> None:
    """``--clock``, ``--mips`` (and for a lab ``--seed``): what ``clock``, ``mips`` and
    ``seed`` in a lab file say."""
    p.add_argument(
        "--clock",
        choices=("real", "virtual"),
        help=(
            "the lab's clock, instead of its file's clock key: " if lab else "the guest's clock: "
        )
        + f"real (guest time is the host's{'' if lab else '; the default'}) or virtual "
        + f"({VIRTUAL_TIME})"
        + (". A lab with a TAP runs on real time only" if lab else ""),
    )
    p.add_argument(
        "--mips",
        type=_whole,
        metavar="N",
        help=(
            "with --clock virtual: how fast guest time runs, in millions of guest "
            f"instructions per second (default {DEFAULT_MIPS}; N must divide 1,000,000)"
            + (", instead of the lab file's mips key" if lab else "")
        ),
    )
    if lab:
        p.add_argument(
            "--jobs",
            type=_whole,
            metavar="N",
            help=(
                "host threads that run the lab's VMs at once (default: every core; on virtual "
                "time the run is byte for byte the same for any N; docs/SCALING.md)"
            ),
        )
        p.add_argument(
            "--seed",
            type=_whole,
            metavar="N",
            help=(
                "the seed of the lab's random choices (the impairments' loss, jitter, ...), "
                "instead of its file's seed key: with virtual time the same seed gives the "
                "same run"
            ),
        )


def _add_log_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-level",
        choices=_log.LEVELS,
        default="warning",
        help="log verbosity on stderr (default warning)",
    )
    p.add_argument("--log-json", action="store_true", help="log JSON lines instead of text")


class OutputClosed(Exception):
    """stdout is closed, or its reader went away: end quietly, as other Unix tools do."""


async def _pump_output(vm: Vm, out: int) -> None:
    while data := await vm.console.receive_some():
        if out < 0:
            continue  # no stdout at all: the guest runs, its output goes nowhere
        try:
            while data:
                n = await trio.to_thread.run_sync(os.write, out, data)
                data = data[n:]
        except (BrokenPipeError, ConnectionResetError) as e:
            vm.stop("the reader of hv's output went away")
            raise OutputClosed from e
        except OSError as e:
            vm.stop(f"cannot write the guest's output: {e.strerror or e}")
            raise OutputClosed from e


def _stdout_writer() -> Callable[[bytes], None]:
    """Writes to stdout (lab consoles, summaries); nothing if it is closed or gone."""
    out = _stdout_fd()

    def write(data: bytes) -> None:
        if out >= 0:
            with contextlib.suppress(BrokenPipeError):
                os.write(out, data)

    return write


def _stdout_fd() -> int:
    """fd 1 if it is open, else -1 (main() puts /dev/null on a closed one first)."""
    try:
        os.fstat(1)
    except OSError:
        return -1
    return 1


async def _pump_input(vm: Vm, fd: int, interactive: bool, *, detach: bool = False) -> bool:
    """The terminal's (or a pipe's) bytes to the VM's console until EOF (False) or Ctrl-A x
    (True), which stops the VM, or with ``detach`` only ends the input."""
    keys = EscapeKeys()
    while True:
        if interactive:  # no thread: a cancelled read must not take a key the shell is owed
            await trio.lowlevel.wait_readable(fd)
            data = os.read(fd, 1024)
        else:
            data = await trio.to_thread.run_sync(os.read, fd, 1024, abandon_on_cancel=True)
        if not data:
            return False  # EOF: the guest keeps running without input
        quit_ = False
        if interactive:
            data, quit_ = keys.feed(data)
        if data:
            await vm.console.send_all(data)
        if quit_:
            if not detach:
                vm.stop("quit from the terminal (Ctrl-A x)")
            return True


async def _attach(vm: Vm, fd: int) -> None:
    """``hv up --attach VM``: the terminal's keys go to the VM, raw, until Ctrl-A x detaches
    or the VM stops; then the terminal is as it was and the lab goes on (Ctrl-C stops it)."""
    detached = False
    with raw_terminal(fd) as interactive:
        if interactive:
            _say(f"hv: attached to {vm.name}; Ctrl-A x detaches (the lab goes on)")
        async with trio.open_nursery() as nursery:

            async def until_stopped() -> None:
                await vm.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_stopped)
            detached = await _pump_input(vm, fd, interactive, detach=True)
            if not detached and not interactive:
                return  # a pipe's end: the input ends, nothing to say
            nursery.cancel_scope.cancel()
    if not interactive:
        return
    if detached:
        _say(f"hv: detached from {vm.name} (the lab goes on; Ctrl-C stops it)")
    elif vm.exit is not None:
        _say(f"hv: {vm.name} stopped, exit {vm.exit.exit_code} (the lab goes on; Ctrl-C stops it)")


def _say(line: str) -> None:
    """A line on stderr from the start of a line (a guest's output may have left one open)."""
    with contextlib.suppress(OSError):
        os.write(2, f"\r{line}\r\n".encode() if os.isatty(2) else f"{line}\n".encode())


def _net_option(text: str) -> tuple[str, str | None, str | None]:
    """``tap:NAME[,ip=ADDR/N][,mac=MAC]`` -> (tap name, ip, mac)."""
    kind, _, rest = text.partition(":")
    if kind != "tap" or not rest:
        raise ConfigError(f"--net {text!r}: use tap:NAME[,ip=ADDR/N][,mac=MAC], e.g. tap:hvtap0")
    name, *opts = rest.split(",")
    found: dict[str, str] = {}
    for opt in opts:
        key, eq, value = opt.partition("=")
        if key not in ("ip", "mac") or not eq or not value:
            raise ConfigError(f"--net {text!r}: unknown option {opt!r} (known: ip=, mac=)")
        found[key] = value
    return name, found.get("ip"), found.get("mac")


async def _run(args: argparse.Namespace) -> int:
    from hv._disk import close_disks, open_disks
    from hv._vm import Vm, VmConfig  # loads the engine: only for the commands that run guests
    from hv.board import NotAKernel
    from hv.lab import open_tap
    from netfabric.switch import Switch

    if not isinstance(args.mem, int):  # argparse hands "--mem=--" over as a list
        raise ConfigError(f"--mem needs a size such as 128M or 1G, not {args.mem!r}")
    kernel, initrd, cmdline = resolve_kernel(args.kernel, progress=StderrProgress("hv: "))
    nets = [_net_option(text) for text in args.net]
    named: set[str] = set()
    for text, (tap, _, _) in zip(args.net, nets, strict=True):
        if tap in named:  # before any is opened: the second open would blame another process
            raise ConfigError(
                f"--net {text}: TAP {tap} is named twice (a VM's NICs need a TAP each)"
            )
        named.add(tap)
    _check_clock(args)
    switches = [Switch(f"net{i}") for i in range(len(nets))]
    taps = [open_tap(sw, tap) for sw, (tap, _, _) in zip(switches, nets, strict=True)]
    if len(args.disk) + len(nets) > P.VIRTIO_SLOTS:  # before opening dozens of files
        raise ConfigError(
            f"{len(args.disk)} --disk and {len(nets)} --net, but hv-virt has "
            f"{P.VIRTIO_SLOTS} virtio slots (one per disk or NIC)"
        )
    disks = await open_disks(args.disk, backing_dirs=args.backing_dir)
    config = VmConfig(
        disks=tuple(disks),
        nics=tuple(
            Nic(sw, ip=ip, mac=mac) for sw, (_, ip, mac) in zip(switches, nets, strict=True)
        ),
        kernel=kernel,
        mem_size=args.mem,
        cmdline=args.append if args.append is not None else cmdline or "",
        initrd=args.initrd or initrd,
        quantum=args.quantum,
        smp=args.smp,
        jobs=None if args.jobs is None else host_threads(args.jobs, "--jobs"),
        name=Path(args.kernel).name,
        dtb_out=args.dtb_out,
        clock="virtual" if args.clock == "virtual" else "real",
        mips=args.mips if args.mips is not None else DEFAULT_MIPS,
    )
    try:
        try:
            vm = Vm(config)  # bad input (file, size, not a kernel) raises ConfigError here
        except NotAKernel as e:
            what = "a lab file (TOML)" if e.lab else "text"
            hint = (
                f": did you mean 'hv up {args.kernel}'?"
                if e.lab
                else " (an ELF, a Linux Image or a raw binary)"
            )
            raise ConfigError(f"{args.kernel!r} is {what}, not a kernel{hint}") from None
        return await _run_vm(vm, [(sw, tap) for sw, tap in zip(switches, taps, strict=True)])
    finally:
        await close_disks(disks)


def _check_clock(args: argparse.Namespace) -> None:
    """``hv run``'s ``--clock`` and ``--mips`` go together, and virtual time takes no TAP
    (as a lab's ``clock`` and ``mips``: hv.lab.with_clock)."""
    from hv.hw import VirtualClock

    if args.mips is not None:
        if args.clock != "virtual":
            raise ConfigError("--mips: sets how fast virtual time runs: add --clock virtual")
        try:
            VirtualClock(args.mips)
        except ValueError as e:
            raise ConfigError(f"--mips: {e}") from None
    if args.clock == "virtual" and args.net:
        raise ConfigError(
            f"--net {args.net[0]}: a TAP puts the host on the wire, and the host lives in real "
            "time, so this VM cannot run on virtual time: use --clock real, or leave out --net"
        )


async def _run_vm(vm: Vm, ports: list[tuple[Switch, TapPort]]) -> int:
    closed = False
    stdin = sys.stdin.fileno() if sys.stdin is not None else -1
    with raw_terminal(stdin) if stdin >= 0 else contextlib.nullcontext(False) as interactive:
        async with trio.open_nursery() as nursery:
            if stdin >= 0:
                nursery.start_soon(_pump_input, vm, stdin, interactive)
            for sw, tap in ports:
                nursery.start_soon(sw.run)
                nursery.start_soon(tap.run)
            nursery.start_soon(vm.run)
            try:
                await _pump_output(vm, _stdout_fd())  # returns once the VM has stopped
            except OutputClosed:
                closed = True
            nursery.cancel_scope.cancel()
    info = await vm.wait()
    if closed:
        return EXIT_OUTPUT_CLOSED
    if info.exit_code:
        print(f"hv: {info.reason} (exit status {info.exit_code})", file=sys.stderr)
    return info.exit_code


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def _with_signals(
    command: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace
) -> int:
    """Run a command that runs guests; SIGINT or SIGTERM cancels it cleanly: every VM stops,
    switch captures are flushed and closed. (Without this, trio would raise the interrupt
    wherever Python happened to be, and inside an engine hook that exception is lost.)"""
    got: list[int] = []
    result: list[int] = []
    failure: list[BaseException] = []
    async with trio.open_nursery() as nursery:

        async def body() -> None:
            try:
                result.append(await command(args))
            except HvError as e:  # reported by main(), not wrapped in an exception group
                failure.append(e)
            except BaseExceptionGroup as group:  # from inside a lab's nurseries
                errors, rest = group.split(HvError)
                if errors is None or rest is not None:
                    raise
                failure.append(_first_leaf(errors))
            nursery.cancel_scope.cancel()

        async def watch() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for sig in signals:
                    got.append(sig)
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(watch)
        nursery.start_soon(body)
    if failure:
        raise failure[0]
    if got:
        print(f"hv: stopped by {signal.Signals(got[0]).name}", file=sys.stderr)
        return 128 + got[0]
    return result[0] if result else 130


def _reserve_std_fds() -> None:
    """A closed stdin/stdout/stderr (``hv run hello >&-``) would hand its number to the next
    file hv opens, and guest output would land in it: put /dev/null there first."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            with contextlib.suppress(OSError):
                got = os.open(os.devnull, os.O_RDWR)
                if got != fd:
                    os.dup2(got, fd)
                    os.close(got)


def main(argv: Sequence[str] | None = None) -> int:
    _reserve_std_fds()
    faulthandler.enable()  # a crash in native code still says where Python was
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if args.command is None:
        parser.print_help()
        return 2
    _log.configure(getattr(args, "log_level", "warning"), getattr(args, "log_json", False))
    try:
        if args.command == "run":
            return trio.run(_with_signals, _run, args)
        if args.command == "guests":
            return _guests_command(args)
        if args.command == "image":
            return _image_command(args)
        if args.command == "engine":
            return _engine_command(args)
        if args.command == "up":
            if args.shards is not None and args.shards > 1:
                return _up_shards(args)
            if args.detach:
                return _control_cli.up_detached(args)
            return trio.run(_with_signals, _up, args)
        if args.command == "netem":
            return _netem_cli.netem_command(args)
        if args.command in _exec_cli.COMMANDS:
            return _exec_cli.exec_command(args)
        if args.command == "link":
            return _link_cli.link_command(args)
        if args.command == "snapshot":
            return _snapshot_cli.snapshot_command(args)
        if args.command in _control_cli.COMMANDS:
            return _control_cli.control_command(args)
        if args.command == "disk":
            return _disk_cli.disk_command(args)
        if args.command == "demo":
            return trio.run(_with_signals, _demo, args)
    except HvError as e:
        if isinstance(e, ConfigError) and _quiet_rank():
            # The first shard finds the same and says it; plain mpiexec ends every shard
            # once one fails: give it the time to.
            import time

            time.sleep(1.0)
        else:
            print(f"hv: {e}", file=sys.stderr)
            _shard_report(f"hv: {e}")
        return EXIT_CONFIG if isinstance(e, ConfigError) else 3
    except KeyboardInterrupt:
        print("hv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `hv engine info | head -1`: end quietly
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OUTPUT_CLOSED
    parser.error(f"unknown command {args.command}")
    return 2  # pragma: no cover


def _guests_command(args: argparse.Namespace) -> int:
    if args.guests_command == "list":
        width = max(map(len, _guests.GUESTS))
        for name, what in _guests.GUESTS.items():
            print(f"{name:<{width}}  {what}")
        return 0
    if args.guests_command == "build":
        names = args.names or _guests.guest_names()
        for name, path in _guests.build_guests(names, StderrProgress(clock=True)).items():
            print(f"{name}: {path}", flush=True)
        return 0
    print(_guests.build_guests([args.name], StderrProgress("hv: "))[args.name])
    return 0


def _image_command(args: argparse.Namespace) -> int:
    if args.image_command in ("build", "info") and args.name == "debian":
        return _debian_cli.debian_command(args)
    if args.image_command == "build":
        progress = StderrProgress(clock=True)
        try:
            built = _image_linux.build_linux(
                install_deps=args.install_deps,
                progress=progress,
                jobs=args.jobs,
                refresh=args.refresh,
            )
        finally:
            progress.close()
        print(f"kernel: {built.kernel}\ninitrd: {built.initrd}\ncmdline: {built.cmdline}")
        return 0
    img = _image_linux.linux_image_info()
    if args.image_command == "list":
        if img is None:
            print("no linux image built (hv image build linux)")
        else:
            size = (img.kernel.stat().st_size + img.initrd.stat().st_size) >> 10
            print(f"linux  {img.key}  {size} KiB  {img.kernel.parent}")
        _debian_cli.list_images()
        return 0
    if img is None:
        raise ConfigError("the linux image is not built yet; run: hv image build linux")
    if args.json:
        info = {"kernel": str(img.kernel), "initrd": str(img.initrd), "cmdline": img.cmdline}
        print(json.dumps(info))
    else:
        print(f"kernel: {img.kernel}\ninitrd: {img.initrd}\ncmdline: {img.cmdline}")
    return 0


async def _demo(args: argparse.Namespace) -> int:
    from hv.lab import run_demo

    write = _stdout_writer()
    return await run_demo(write, Path(args.capture), args.pings, args.datagrams, args.linux)


def _shard_report(line: str) -> None:
    """A shard under ``hv up --shards`` also gives its last words to the launcher
    (``_launch_shards``), which says them if mpiexec did not."""
    path = os.environ.get("HV_SHARD_REPORT")
    if not path:
        return
    with contextlib.suppress(OSError), open(path, "a") as f:
        f.write(line + "\n")


def _quiet_rank() -> bool:
    """One of a sharded lab's processes other than the first (rank 0 says what all of them
    find wrong with the lab, once)."""
    from hv.lab import mpi_rank, mpi_size

    return mpi_size() > 1 and mpi_rank() > 0


def _up_shards(args: argparse.Namespace) -> int:
    """``hv up --shards N``: mpiexec running ``hv up`` N times (hv.lab._shards)."""

    from hv.lab import launch_argv, mpi_size

    if mpi_size() > 1:
        raise ConfigError("--shards: this hv already runs under mpiexec (drop --shards)")
    if args.detach:
        raise ConfigError("--shards: a lab over several processes runs in the foreground (no -d)")
    from hv.lab import assign_shards

    # What is wrong with the lab, said once, before any process starts.
    assign_shards(_control_cli.load_named(Path(args.lab), args.project_name, args), args.shards)
    return _launch_shards(launch_argv(args.argv, args.shards))


def _launch_shards(argv: list[str]) -> int:
    """Run mpiexec, its stderr through us: a shard that ends the lab with an error also
    writes it to a report file (HV_SHARD_REPORT), and what mpiexec did not pass on before it
    exited (it can end before it forwards a shard's last words: a peer killed, a loaded
    host) is said here, once."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("r", prefix="hv-shards-", suffix=".txt") as report:
        env = {**os.environ, "HV_SHARD_REPORT": report.name}
        said: set[str] = set()
        with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env) as proc:
            assert proc.stderr is not None
            for line in proc.stderr:
                sys.stderr.write(line)
                said.add(line.rstrip("\n"))
            rc = proc.wait()
        reported = [line for line in report.read().splitlines() if line]
        for line in reported:
            if line not in said:
                print(line, file=sys.stderr)
                said.add(line)
    if rc != 0 and not reported:
        # No shard said why: one was killed before it could, and mpiexec ended the others.
        print(
            f"hv: a shard of this lab ended without a word (killed?); mpiexec stopped the "
            f"others (exit status {rc})",
            file=sys.stderr,
        )
    return rc


async def _up(args: argparse.Namespace) -> int:
    from hv.lab import mpi_size

    if mpi_size() > 1:
        from hv.cli import _early
        from hv.lab import Mesh

        mesh = Mesh(peer_died=_early.peer_died)
        try:
            status = await _up_lab(args, mesh)
        except BaseException as e:
            mesh.abort(str(e) or type(e).__name__)
            raise
        mesh.close()
        return status
    return await _up_lab(args, None)


async def _up_lab(args: argparse.Namespace, mesh: Mesh | None) -> int:
    from functools import partial

    from hv._status import StopKind
    from hv.lab import ControlServer, LiveConsole, live_view, run_lab, view_mode

    spec, restore = _control_cli.up_spec(args)
    if mesh is not None and mesh.rank > 0:
        # Another shard of a lab over several processes: its VMs' consoles on stdout; the
        # first shard has the control socket and says how the lab ended.
        return await run_lab(
            spec, _stdout_writer(), args.exit_code_from, force=args.force, mesh=mesh
        )
    if args.attach is not None and args.attach not in spec.vms:
        raise ConfigError(f"--attach: no VM named {args.attach!r} ({', '.join(spec.vms)})")
    write = _stdout_writer()
    # The live view: a table on a terminal (consoles printed above it), lines with --stats
    mode = view_mode(args.view, _stdout_fd() >= 0 and os.isatty(1))
    shown = LiveConsole(write) if mode is not None else None
    stdin = sys.stdin.fileno() if sys.stdin is not None and args.attach else -1
    lab_file = Path(args.lab) if args.lab is not None else None
    with ControlServer(spec, lab_file) as control:  # refused if the lab's name is taken
        async with trio.open_nursery() as nursery:
            lab = partial(
                run_lab, spec, None, args.exit_code_from, force=args.force, mesh=mesh,
                restore=restore,
            )  # fmt: skip
            run = await nursery.start(lab)  # its consoles are the control server's
            if shown is not None:
                nursery.start_soon(partial(live_view, run, shown, terminal=mode == "table"))
            if stdin >= 0:
                nursery.start_soon(_attach, run.vms[args.attach], stdin)
            status = await control.serve(run, shown.write if shown is not None else write)
            nursery.cancel_scope.cancel()  # the lab is over: stop reading the terminal
    for name, info in run.exits.items():
        if info.exit_code and info.kind is not StopKind.STOPPED:
            print(f"hv: {name}: {info.reason} (exit status {info.exit_code})", file=sys.stderr)
    return status


def _engine_command(args: argparse.Namespace) -> int:
    from hv import engine

    if args.engine_command == "build":
        progress = StderrProgress(clock=True)
        try:
            built = engine.build_engine(progress=progress, force=args.force)
        except engine.EngineBuildError as e:
            progress.close()
            print(f"hv: the fast engine could not be built:\n{e}", file=sys.stderr)
            print(
                "hv: guests will run on the stock Unicorn library (HV_ENGINE=stock)",
                file=sys.stderr,
            )
            return 3
        print(built.library / "libunicorn.so.2")
        return 0
    info = engine.engine_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"engine:   {info['engine']} (HV_ENGINE={info['requested']}, source: {info['source']})")
    print(f"library:  {info['library']}")
    print(f"unicorn:  {info['unicorn']}")
    patches = info["patches"]
    print(f"patches:  {', '.join(patches) if isinstance(patches, list) and patches else 'none'}")
    made = info["built"]
    if isinstance(made, dict):
        print(f"built:    {made.get('built')} with {made.get('compiler')}")
    print(f"cache:    {info['cache']}")
    if "note" in info:
        print(f"note:     {info['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
