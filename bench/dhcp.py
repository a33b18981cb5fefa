"""100 firmware guests lease their addresses from one switch's DHCP server: time and memory.

One switch with `subnet = "10.0.0.0/24"` and `dhcp = { pool = "10.0.0.128-10.0.0.254" }`,
and N `udpecho` guests (16 MiB each) on it. With `ip = "dhcp"` each guest's runtime prints
`net: eth0 MAC dhcp`, runs DISCOVER/OFFER/REQUEST/ACK and prints `dhcp: eth0 bound ...`;
the reference, in the same invocation, is the same lab with static addresses (10.0.0.2 and
up, outside the pool: the guest prints `net: eth0 MAC 10.0.0.x/24` and starts at once).
Each variant runs in a child process of its own (so each has its own peak RSS), in process
through `run_lab`; the clock starts just before `run_lab` and the lab is cancelled once every
guest has printed its line. Times are when each line reached the VM's console (recorded as
the output arrives), in seconds from the start. The frame columns are the switch's port
counters summed over the guests' ports: what the guests sent, what the switch gave them;
CPU / waiting: the child's CPU time and its time runnable but waiting for a core (other
processes), over the lab's run.

    python bench/dhcp.py [--guests 100] [--runs 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as C

POOL = ("10.0.0.128", "10.0.0.254")
LINES = {"net": b"net: eth0 ", "bound": b"dhcp: eth0 bound", "nolease": b"dhcp: eth0 no lease"}
MS = re.compile(rb"dhcp: eth0 bound (10\.0\.0\.\d+)/24 router [\d.]+ lease \d+ s in (\d+) ms")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def lab_text(guests: int, dhcp: bool) -> str:
    parts = [f'[switches.lan]\nsubnet = "10.0.0.0/24"\ndhcp = {{ pool = "{POOL[0]}-{POOL[1]}" }}\n']
    for i in range(guests):
        ip = "dhcp" if dhcp else f"10.0.0.{2 + i}/24"
        parts.append(
            f'[vms.g{i:03}]\nkernel = "udpecho"\nmem = "16M"\n'
            f'nics = [{{ switch = "lan", ip = "{ip}" }}]\n'
        )
    return "".join(parts)


@contextlib.contextmanager
def line_times(seen: dict[tuple[int, str], float], t0: list[float]) -> Iterator[None]:
    """Record, per console (by id) and per LINES key, when its text first arrived (and the
    first output of all, as "first"), in seconds after t0[0]. Observes only."""
    from hv._console import Console

    append = Console._append

    def observed(self: Console, data: bytes) -> None:
        append(self, data)
        if not data:
            return
        now = time.perf_counter() - t0[0]
        me = id(self)
        seen.setdefault((me, "first"), now)
        tail = bytes(self._buf[-(len(data) + 64) :])
        for key, text in LINES.items():
            if (me, key) not in seen and text in tail:
                seen[(me, key)] = now

    Console._append = observed  # type: ignore[method-assign]
    try:
        yield
    finally:
        Console._append = append  # type: ignore[method-assign]


def run_delay() -> float:
    """Seconds this thread has waited on a run queue (other processes had the CPUs)."""
    try:
        return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def child(guests: int, dhcp: bool, timeout: float) -> dict[str, Any]:
    import trio

    from hv.lab import LabRun, parse_lab, run_lab

    spec = parse_lab(lab_text(guests, dhcp), Path.cwd(), "dhcp")
    want = LINES["bound"] if dhcp else LINES["net"]
    seen: dict[tuple[int, str], float] = {}
    t0 = [0.0]
    started = done = 0.0
    run: LabRun | None = None

    async def main() -> None:
        nonlocal started, done, run
        async with trio.open_nursery() as nursery:

            async def lab(task_status: trio.TaskStatus[LabRun]) -> None:
                await run_lab(spec, None, task_status=task_status)

            t0[0] = time.perf_counter()
            run = await nursery.start(lab)
            started = time.perf_counter() - t0[0]
            with trio.move_on_after(timeout):
                async with trio.open_nursery() as waiters:
                    for vm in run.vms.values():
                        waiters.start_soon(vm.console.wait_for, want)
            done = time.perf_counter() - t0[0]
            nursery.cancel_scope.cancel()

    cpu0, wait0 = time.process_time(), run_delay()
    with line_times(seen, t0):
        trio.run(main)
    wall = time.perf_counter() - t0[0]
    cpu, wait = (time.process_time() - cpu0) / wall, (run_delay() - wait0) / wall
    assert run is not None
    names = {id(vm.console): name for name, vm in run.vms.items()}
    per: dict[str, dict[str, float]] = {n: {} for n in names.values()}
    for (cid, key), t in seen.items():
        if cid in names:
            per[names[cid]][key] = t
    exchange_ms, addresses = [], []
    for vm in run.vms.values():
        m = MS.search(vm.console.transcript)
        if m is not None:
            addresses.append(m[1].decode())
            exchange_ms.append(int(m[2]))
    ports = [p for p in run.switches["lan"].ports.values() if p.name.endswith(".eth0")]
    host = run.services.get("lan")
    leases = sorted(str(lease.ip) for lease in host.leases().values()) if host else []
    return {
        "guests": guests,
        "dhcp": dhcp,
        "started": started,
        "done": done,
        "per": per,
        "exchange_ms": exchange_ms,
        "addresses": sorted(addresses),
        "leases": leases,
        "to_guests": sum(p.counters.tx_frames for p in ports),
        "from_guests": sum(p.counters.rx_frames for p in ports),
        "cpu": cpu,
        "wait": wait,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_child(guests: int, dhcp: bool, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "dhcp" if dhcp else "static"]
    cmd += ["--guests", str(guests), "--timeout", str(timeout)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=C.python_env(), check=False)
    if p.returncode != 0 or not p.stdout.strip():
        raise SystemExit(f"child {' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    return result


def stats(xs: list[float]) -> str:
    if not xs:
        return "—"
    return f"{min(xs):.2f} / {statistics.median(xs):.2f} / {max(xs):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guests", type=int, default=100, help="firmware guests (default 100)")
    ap.add_argument("--runs", type=int, default=2, help="rounds of static then dhcp (default 2)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per lab (120)")
    ap.add_argument("--child", choices=("dhcp", "static"), help=argparse.SUPPRESS)
    ap.add_argument("--bytecode", choices=C.BYTECODE_MODES, default="cached", help=C.BYTECODE_HELP)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.guests, args.child == "dhcp", args.timeout)))
        return
    C.set_bytecode(args.bytecode)
    if args.guests > 127:
        raise SystemExit("the pool holds 127 addresses: --guests 127 at most")
    results: list[dict[str, Any]] = []
    for i in range(args.runs):
        for dhcp in (False, True):
            log(f"run {i + 1}: {args.guests} guests, {'dhcp' if dhcp else 'static'}")
            r = run_child(args.guests, dhcp, args.timeout)
            log(f"  started {r['started']:.2f} s, done {r['done']:.2f} s, {r['rss_mib']:.0f} MiB")
            results.append(r)
    print(f"\n{args.guests} udpecho guests (16 MiB each), one switch; seconds from the start\n")
    print(
        "| run | addresses | VMs started | first output min / median / max "
        "| `net:` line min / median / max | `dhcp: bound` min / median / max "
        "| all there | peak RSS | frames from / to the guests | CPU / waiting |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(results):
        per = r["per"].values()
        first = [p["first"] for p in per if "first" in p]
        net = [p["net"] for p in per if "net" in p]
        bound = [p["bound"] for p in per if "bound" in p]
        kind = "dhcp" if r["dhcp"] else "static"
        got = len(bound) if r["dhcp"] else len(net)
        print(
            f"| {i // 2 + 1} | {kind} | {r['started']:.2f} | {stats(first)} | {stats(net)} | "
            f"{stats(bound)} | {max(bound or net or [0.0]):.2f} ({got}/{r['guests']}) "
            f"| {r['rss_mib']:.0f} MiB | {r['from_guests']} / {r['to_guests']} "
            f"| {100 * r['cpu']:.0f} % / {100 * r['wait']:.0f} % |"
        )
    for r in results:
        if not r["dhcp"]:
            continue
        per = r["per"].values()
        bound = [p["bound"] for p in per if "bound" in p]
        failed = sum(1 for p in per if "nolease" in p)
        unique = len(set(r["addresses"])) == len(r["addresses"])
        ok = unique and r["addresses"] == r["leases"] and len(bound) == r["guests"]
        ex = r["exchange_ms"]
        span = f"{r['addresses'][0]}..{r['addresses'][-1]}" if r["addresses"] else "none"
        print(
            f"\ndhcp: {len(bound)} of {r['guests']} bound, {failed} without a lease; addresses "
            f"{'distinct and the server agrees' if ok else 'NOT consistent'} "
            f"({span}); "
            f"the guests' own DISCOVER-to-ACK times: median {statistics.median(ex):.0f} ms, "
            f"max {max(ex)} ms"
        )
    dh = [r for r in results if r["dhcp"]]
    st = [r for r in results if not r["dhcp"]]
    d_all = min(max(p.get("bound", float("inf")) for p in r["per"].values()) for r in dh)
    s_all = min(max(p.get("net", float("inf")) for p in r["per"].values()) for r in st)
    d_rss = max(r["rss_mib"] for r in dh)
    s_rss = max(r["rss_mib"] for r in st)
    print(
        f"dhcp: {args.guests} guests all bound {d_all:.2f} s after the lab's start (static: all "
        f"up {s_all:.2f} s; ratio {d_all / s_all:.2f}), peak RSS {d_rss:.0f} MiB "
        f"(static {s_rss:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
