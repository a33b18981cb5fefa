"""A pytest file that uses hvfabric's plugin (installed with hvfabric: nothing to import or
register; the fixtures need pytest-trio, `pip install 'hvfabric[pytest]'`, and
`trio_mode = true` in the pytest configuration).

    python -m pytest examples/test_pair.py

If a test fails, its report shows each VM's console tail and the capture files.
"""

from __future__ import annotations

from typing import Any

import hv


def pair(count: int = 3) -> hv.Lab:
    return (
        hv.Lab("pair")
        .switch("lan")
        .vm("s", kernel="udpecho", mem="16M", nics=[{"switch": "lan", "ip": "10.0.0.2/24"}])
        .vm(
            "p",
            kernel="ping",
            mem="16M",
            append=f"peer=10.0.0.2 count={count} interval=10",
            nics=[{"switch": "lan", "ip": "10.0.0.1/24"}],
        )
    )


async def test_every_ping_is_answered(hv_lab: Any) -> None:
    lab = await hv_lab(pair())
    info = await lab.vms["p"].wait()
    assert info.exit_code == 0, lab.vms["p"].console.transcript
    assert b"3 sent, 3 received" in lab.vms["p"].console.transcript


async def test_two_vms_of_our_own(hv_vm: Any) -> None:
    echo = await hv_vm(kernel="udpecho", mem="16M", nics=[{"switch": "lan", "ip": "10.0.0.2/24"}])
    ping = await hv_vm(
        kernel="ping",
        mem="16M",
        append="peer=10.0.0.2 count=2 interval=10",
        nics=[{"switch": "lan", "ip": "10.0.0.1/24"}],
    )
    assert (await ping.wait()).exit_code == 0
    await echo.console.wait_for(b"udpecho: echoing")
