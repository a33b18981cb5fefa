"""Debian's ``busybox-static`` (riscv64) in the Linux guest's initramfs: its applets and where
each one's symlink goes, read out of the binary on the host (it cannot run here).

A busybox binary keeps its applet names as one sorted, NUL-separated string (``[``, ``[[``,
``acpid``, ...) and, beside it, the install directory of each applet as 4-bit numbers, two a
byte (``applet_install_loc``: 0 ``/``, 1 ``/bin``, 2 ``/sbin``, 3 ``/usr/bin``, 4
``/usr/sbin``), the table ``busybox --list-full`` prints. ``applet_dirs`` finds both: the
names after the ``[\\0[[\\0`` that starts them, the directory table as the one run of
``ceil(n/2)`` bytes with every nibble in 0..4 that puts the applets of ``ANCHORS`` where
busybox's sources have always put them. Anything else (no names, no table, two tables) is a
HostError: the image is not built with links in the wrong places. A guest test compares the
links with ``busybox --list-full`` run inside the guest.

One byte of the binary is changed (``quiet_prompt``): the interactive shell's line editor
ends every prompt with ``ESC [6n`` (busybox's FEATURE_EDITING_ASK_TERMINAL: "terminal, where
is the cursor?"), so a console's text would end in that query instead of the prompt, and every
script that waits for ``# `` at the end of the output (tests, bench/boot.py, the README's
example) would wait forever. The query string becomes empty; the shell then asks nothing and
takes the prompt's width from its own count, as it does on a terminal that never answers
(after each line it still sleeps the 20 ms it allows a late answer).

Where one of our applets (``hvbox``, hv/images/linux/userland/main.c) has busybox's name,
``OURS`` says which of ours win (the others are busybox's), and busybox's link for them is
not made in any directory, so that PATH order never decides.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping

from hv._errors import HostError

DIRS = ("", "bin", "sbin", "usr/bin", "usr/sbin")  # applet_install_loc's values, under /

# Applets whose place no busybox release has changed: the check on the table found.
ANCHORS: Mapping[str, str] = {
    "[": "usr/bin",
    "sh": "bin",
    "ash": "bin",
    "ip": "sbin",
    "udhcpc": "sbin",
    "wget": "usr/bin",
    "nslookup": "usr/bin",
    "head": "usr/bin",
    "httpd": "usr/sbin",
    "udhcpd": "usr/sbin",
    "vi": "bin",
    "ls": "bin",
}

# Our applets that win over busybox's of the same name, and why:
#   init        PID 1 (ip=, vlan=, hv.run=, the reaper), which busybox's init is not;
#   ip          `ip link add ... type vlan`, `ip route` as the tests and docs use it;
#   ping        its summary lines ("2 packets transmitted, 2 received", "rtt min/avg/max")
#               are what tests, benches and the README's labs read;
#   dd          reports MB/s, the disk benchmarks' figure;
#   true false  stress's exec target (/bin/true): the small binary keeps its figures.
# busybox wins for the rest: sh (arithmetic, pipes, job control, line editing), echo, cat,
# ls, mkdir, rm, mount, umount, sync, dmesg, ps, kill, uname, sleep, and poweroff and reboot
# (our init takes busybox's signals: USR2 and USR1 power off, TERM reboots).
OURS = frozenset({"init", "ip", "ping", "dd", "true", "false"})

# busybox's shell runs its own applets before looking at PATH (Debian builds it with
# FEATURE_SH_STANDALONE), so in the shell ours win as functions, from /etc/profile (read by
# the login shells init starts: the console's and hv.run's) and $ENV (other interactive
# shells). true and false are the shell's builtins either way.
SHELL_FUNCTIONS = ("dd", "ip", "ping")


def profile() -> bytes:
    """/etc/profile: the shell functions that make our applets win (see SHELL_FUNCTIONS)."""
    lines = ["# hvfabric: hvbox's applets that win over busybox's (hv/build/_busybox.py)"]
    lines += [f'{name}() {{ /bin/hvbox {name} "$@"; }}' for name in SHELL_FUNCTIONS]
    return ("\n".join(lines) + "\n").encode()


# Never linked: /linuxrc (an initrd's init in busybox's scheme: ours is /init), and the
# binary's own name (/bin/busybox is the file itself).
SKIP = frozenset({"linuxrc", "busybox"})

_NAMES_START = b"[\0[[\0"
_NIBBLES_OK = bytes(b for b in range(256) if b & 15 <= 4 and b >> 4 <= 4)


def applet_names(binary: bytes) -> list[str]:
    """The applet names of a busybox binary, in its (sorted) table order."""
    start = binary.find(_NAMES_START)
    if start < 0:
        raise HostError("no busybox applet table in the binary (no '[', '[[' names)")
    end = binary.find(b"\0\0", start)
    names = [n.decode("ascii", "replace") for n in binary[start:end].split(b"\0")]
    if len(names) < 50 or names != sorted(names):
        raise HostError(f"busybox's applet names look wrong ({len(names)} names, unsorted?)")
    return names


def applet_dirs(binary: bytes) -> dict[str, str]:
    """{applet: directory under / ("bin", "usr/sbin", ...)} for a busybox binary."""
    names = applet_names(binary)
    size = (len(names) + 1) // 2
    index = {n: i for i, n in enumerate(names)}
    anchors = [(index[n], DIRS.index(d)) for n, d in ANCHORS.items() if n in index]
    if len(anchors) < len(ANCHORS) // 2:
        raise HostError("busybox lacks most of sh, ip, wget, httpd...: not a full busybox")
    ok = re.escape(_NIBBLES_OK)
    found = []
    for run in re.finditer(b"[" + ok + b"]{%d,}" % size, binary):
        for off in range(run.start(), run.end() - size + 1):
            table = binary[off : off + size]
            if all(_nibble(table, i) == loc for i, loc in anchors):
                found.append(table)
    if len(found) != 1:
        raise HostError(
            f"busybox's install-directory table: {len(found)} candidates, wanted 1 "
            "(a busybox this build does not know: update hv/build/_busybox.py)"
        )
    return {n: DIRS[_nibble(found[0], i)] for i, n in enumerate(names)}


_ASK_TERMINAL = b"\0\x1b[6n\0"  # lineedit's query, a string of its own


def quiet_prompt(binary: bytes) -> bytes:
    """``binary`` with the line editor's cursor-position query emptied (see the module)."""
    at = binary.find(_ASK_TERMINAL)
    if at < 0 or binary.find(_ASK_TERMINAL, at + 1) >= 0:
        raise HostError(
            "busybox: the line editor's ESC[6n query is not there exactly once "
            "(a busybox this build does not know: update hv/build/_busybox.py)"
        )
    return binary[: at + 1] + b"\0" + binary[at + 2 :]


def _nibble(table: bytes, i: int) -> int:
    return table[i // 2] >> 4 if i & 1 else table[i // 2] & 15


def links(busybox_dirs: Mapping[str, str], ours: list[str]) -> dict[str, str]:
    """{path in the initramfs: symlink target} for busybox's applets and ours (``ours``:
    hvbox's applet names; they live in /bin)."""
    out: dict[str, str] = {}
    for name, d in sorted(busybox_dirs.items()):
        if name in SKIP or name in OURS or not d:
            continue
        # relative, so that the links still work where the initramfs's folders are bound
        # under a disk root (/run/hv/bin, /run/hv/sbin: init.c's switch_to_disk_root)
        out[f"{d}/{name}"] = posixpath.relpath("bin/busybox", d)
    for name in ours:
        if name == "init" or (name in busybox_dirs and name not in OURS):
            continue
        out[f"bin/{name}"] = "hvbox"
    return out
