"""A trio application that boots guests on demand and drives them: a small job service.

    python examples/fleet.py [JOBS] [--parallel N]

Each job is "compute a checksum over N iterations": the service boots a fresh `cpu` guest for
it (at most --parallel at once, a trio.CapacityLimiter), waits for its answer on the console,
and hands the result back to whoever asked; a job whose guest faults or takes too long fails
alone. This is the embedding case: hv is a library here, the VMs are ordinary trio tasks.
"""

from __future__ import annotations

import argparse
import re
import sys
import time

import trio

import hv

CHECKSUM = re.compile(rb"checksum: (0x[0-9a-f]+)")


class Fleet:
    def __init__(self, nursery: trio.Nursery, parallel: int) -> None:
        self.nursery = nursery
        self.limit = trio.CapacityLimiter(parallel)
        self.booted = 0

    async def checksum(self, iters: int, timeout: float = 30) -> str:
        """Boot a guest for this job, read its answer, let it power off."""
        async with self.limit:
            config = hv.VmConfig(
                kernel=hv.guest_path("cpu"),
                cmdline=f"iters={iters}",
                mem_size=16 << 20,
                name=f"job-{iters}",
            )
            vm = await self.nursery.start(hv.run_vm, config)
            self.booted += 1
            with trio.fail_after(timeout):
                await vm.console.wait_for(b"checksum: ")
                info = await vm.wait()
            m = CHECKSUM.search(vm.console.transcript)
            if info.exit_code or m is None:
                raise RuntimeError(f"job {iters}: {info.reason}")
            return m[1].decode()


async def main(jobs: int, parallel: int) -> int:
    results: dict[int, str] = {}
    start = time.monotonic()
    async with trio.open_nursery() as nursery:
        fleet = Fleet(nursery, parallel)

        async def client(iters: int) -> None:
            results[iters] = await fleet.checksum(iters)

        async with trio.open_nursery() as clients:
            for iters in range(1, jobs + 1):
                clients.start_soon(client, iters)
    for iters, value in sorted(results.items()):
        print(f"job iters={iters:<3} checksum {value}")
    took = time.monotonic() - start
    print(f"fleet: {len(results)} jobs on {fleet.booted} guests, at most {parallel} at once, "
          f"in {took:.2f} s")  # fmt: skip
    return 0 if len(results) == jobs else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("jobs", type=int, nargs="?", default=12)
    p.add_argument("--parallel", type=int, default=4, metavar="N")
    a = p.parse_args()
    sys.exit(trio.run(main, a.jobs, a.parallel))
