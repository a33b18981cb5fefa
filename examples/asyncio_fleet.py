"""The job service of fleet.py, from an asyncio program: guests booted on demand through
hv.aio (hv's trio loop runs in a thread of its own; every call here is an ordinary await).

    python examples/asyncio_fleet.py [JOBS] [--parallel N]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time

import hv
import hv.aio

CHECKSUM = re.compile(rb"checksum: (0x[0-9a-f]+)")


async def checksum(iters: int, limit: asyncio.Semaphore) -> str:
    async with limit:
        config = hv.VmConfig(
            kernel=hv.guest_path("cpu"), cmdline=f"iters={iters}", mem_size=16 << 20,
            name=f"job-{iters}",
        )  # fmt: skip
        async with hv.aio.open_vm(config) as vm:
            async with asyncio.timeout(30):
                await vm.console.wait_for(b"checksum: ")
                info = await vm.wait()
            m = CHECKSUM.search(vm.console.transcript)
            if info.exit_code or m is None:
                raise RuntimeError(f"job {iters}: {info.reason}")
            return m[1].decode()


async def main(jobs: int, parallel: int) -> int:
    start = time.monotonic()
    limit = asyncio.Semaphore(parallel)
    results = await asyncio.gather(*(checksum(i, limit) for i in range(1, jobs + 1)))
    for iters, value in enumerate(results, 1):
        print(f"job iters={iters:<3} checksum {value}")
    print(f"asyncio fleet: {len(results)} jobs, at most {parallel} at once, "
          f"in {time.monotonic() - start:.2f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("jobs", type=int, nargs="?", default=8)
    p.add_argument("--parallel", type=int, default=4, metavar="N")
    a = p.parse_args()
    sys.exit(asyncio.run(main(a.jobs, a.parallel)))
