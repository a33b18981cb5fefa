"""Run several bundled guests at once in one trio.run and report how each one ended.

    python examples/many_guests.py [N]

Each VM is a trio task; the CPU-bound `cpu` guests share the process fairly while the `sleep`
guests wait in wfi at no cost, and the `fault` guest's fatal fault stops only itself.
"""

from __future__ import annotations

import sys

import trio

import hv


async def main(n: int) -> int:
    guests = ["hello", "sleep", "fault"] + ["cpu"] * n
    args = {"sleep": "ms=50 count=3", "cpu": "iters=5"}
    async with trio.open_nursery() as nursery:
        vms: list[hv.Vm] = []
        for i, name in enumerate(guests):
            cfg = hv.VmConfig(
                kernel=hv.guest_path(name), cmdline=args.get(name, ""), name=f"{name}-{i}"
            )
            vms.append(await nursery.start(hv.run_vm, cfg))
        for vm in vms:
            info = await vm.wait()
            last = vm.console.transcript.decode(errors="replace").strip().splitlines()[-1:]
            print(f"{vm.name:8} exit {info.exit_code:3}  {info.reason}  | {' '.join(last)}")
    # hello, sleep and the cpu guests end cleanly; the fault guest ends with status 2.
    return 0 if all(vm.exit and vm.exit.exit_code in (0, 2) for vm in vms) else 1


if __name__ == "__main__":
    sys.exit(trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 2))
