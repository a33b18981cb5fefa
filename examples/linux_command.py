"""Boot the Linux guest, run a command at its shell, print the output, power it off.

hv image build linux        # once
python examples/linux_command.py "uname -a"
"""

from __future__ import annotations

import re
import sys

import trio

import hv
from hv.build import linux_image_info

PROMPT = re.compile(rb"\n[^\n]*# $")


async def main(command: str) -> int:
    img = linux_image_info()
    if img is None:
        print("build the image first: hv image build linux", file=sys.stderr)
        return 4
    cfg = hv.VmConfig(kernel=img.kernel, initrd=img.initrd, cmdline=img.cmdline, name="linux")
    async with trio.open_nursery() as nursery:
        vm: hv.Vm = await nursery.start(hv.run_vm, cfg)
        with trio.fail_after(60):
            await vm.console.wait_for(PROMPT)
            await vm.console.send_all(command + "\n")
            out = await vm.console.wait_for(PROMPT)
        print(b"\n".join(out.replace(b"\r", b"").split(b"\n")[1:-1]).decode(errors="replace"))
        await vm.console.send_all("poweroff\n")
        info = await vm.wait()
    return info.exit_code


if __name__ == "__main__":
    sys.exit(trio.run(main, " ".join(sys.argv[1:]) or "uname -a"))
