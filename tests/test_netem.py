"""Impairment seen and changed from outside: drops by cause in the counters (``hv stats``,
``hv top``, the live view), and ``hv netem LAB CABLE set|show`` changing a cable of a running
lab through its control socket (real ``hv`` processes, firmware guests)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import wait_until, wait_until_sync
from test_control import Host

import hv
from hv.lab._netem import find_cable, netem
from hv.lab._stats import rates, render_snapshot, snapshot
from hv.lab._view import render_lines

# A pinger on lan, an echo server on wan, a lossy link between them; the pinger's own cable
# has a rate limit (an impairment on a NIC).
LOSSY = """
[switches.lan]
[switches.wan]

[[links]]
a = "lan"
b = "wan"
impair = { delay = "5ms", loss = "30%", seed = 3 }

[vms.s]
kernel = "udpecho"
mem = "16M"
append = "ip=10.0.0.2/24"
nics = [{ switch = "wan" }]

[vms.c]
kernel = "ping"
mem = "16M"
append = "ip=10.0.0.3/24 peer=10.0.0.2 count=1000000 interval=10"
nics = [{ switch = "lan", impair = { rate = "10Mbit" } }]
"""


def lossy_lab() -> hv.Lab:
    return (
        hv.Lab("lossy")
        .switch("lan")
        .switch("wan")
        .link("lan", "wan", impair={"delay": "5ms", "loss": "30%", "seed": 3})
        .vm("s", kernel="udpecho", mem="16M", append="ip=10.0.0.2/24", nics=["wan"])
        .vm("c", kernel="ping", mem="16M", nics=[{"switch": "lan", "impair": {"rate": "10Mbit"}}],
            append="ip=10.0.0.3/24 peer=10.0.0.2 count=1000000 interval=10")
    )  # fmt: skip


def loss_drops(snap: dict[str, Any], switch: str, port: str) -> int:
    (p,) = [p for p in snap["switches"][switch]["ports"] if p["name"] == port]
    n: int = p["drops_by"].get("loss", 0)
    return n


# -- in one process ------------------------------------------------------------------------


async def test_cable_drops_show_on_the_port_they_leave_by_and_netem_changes_one_setting() -> None:
    async with hv.open_lab(lossy_lab()) as run:
        await wait_until(
            lambda: loss_drops(snapshot(run), "lan", "link:wan"), "a loss drop on lan", 60
        )
        await wait_until(
            lambda: loss_drops(snapshot(run), "wan", "link:lan"), "a loss drop on wan", 60
        )
        snap = snapshot(run)
        assert json.loads(json.dumps(snap)) == snap
        ports = {p["name"]: p for sw in snap["switches"].values() for p in sw["ports"]}
        # lan -> wan (egress) is dropped leaving lan's link port; wan -> lan leaving wan's
        link = run.impairments["links[0]"]
        assert ports["link:wan"]["drops_by"]["loss"] == link.egress.counters["dropped_loss"]
        assert ports["link:lan"]["drops_by"]["loss"] == link.ingress.counters["dropped_loss"]
        assert ports["link:wan"]["drops"] >= ports["link:wan"]["drops_by"]["loss"]
        assert ports["link:wan"]["cable"] == "links[0]" and ports["c.eth0"]["cable"] == "c.eth0"
        assert ports["s.eth0"]["cable"] is None and ports["s.eth0"]["drops"] == 0
        assert set(ports["link:wan"]["cable_counts"]) == {"duplicated", "corrupted", "reordered"}
        cables = snap["impairments"]
        assert set(cables) == {"links[0]", "c.eth0"}
        eg = cables["links[0]"]["egress"]
        assert (eg["from"], eg["to"]) == ("lan", "wan")
        assert eg["settings"]["delay"] == 0.005 and eg["settings"]["loss"] == 0.3
        assert eg["counters"]["dropped_loss"] > 0
        nic = cables["c.eth0"]
        assert (nic["egress"]["from"], nic["egress"]["to"]) == ("c", "lan")
        assert nic["egress"]["settings"]["rate"] == 10e6
        # the plain forms show the causes
        lines = render_lines(rates(None, snap))
        line = next(x for x in lines if x.startswith("port lan link:wan "))
        assert "drops_by=" in line and "loss:" in line and " cable=links[0]" in line
        text = "\n".join(render_snapshot(snap))
        assert "cable links[0] lan-wan egress lan->wan delay=5ms" in text, text
        assert "loss=30%" in text and "dropped_loss=" in text

        # names: the key, the link's ends either way round, a VM with one impaired NIC
        assert find_cable(run, "links[0]") == find_cable(run, "lan-wan") == "links[0]"
        assert find_cable(run, "wan-lan") == "links[0]"
        assert find_cable(run, "c") == find_cable(run, "c.eth0") == "c.eth0"
        with pytest.raises(LookupError, match=r"no cable named 'x'.*links\[0\] \(lan-wan\)"):
            find_cable(run, "x")

        # a live change: loss off, the delay kept, the counters kept
        before = eg["counters"]["dropped_loss"]
        answer = netem(run, {"cable": "lan-wan", "set": {"loss": 0}})
        assert answer["cable"]["name"] == "links[0]"
        for d in ("egress", "ingress"):
            s = answer["cable"][d]["settings"]
            assert (s["loss"], s["delay"]) == (0.0, 0.005)
        assert answer["cable"]["egress"]["counters"]["dropped_loss"] >= before
        # one direction alone
        netem(run, {"cable": "links[0]", "direction": "ingress", "set": {"delay": "20ms"}})
        assert link.ingress.impairment.delay == 0.02 and link.egress.impairment.delay == 0.005
        assert link.ingress.impairment.loss == 0.0
        with pytest.raises(ValueError, match=r"delay: \"20 parsecs\" is not a duration"):
            netem(run, {"cable": "links[0]", "set": {"delay": "20 parsecs"}})
        with pytest.raises(ValueError, match="nonsense: unknown key"):
            netem(run, {"cable": "links[0]", "set": {"nonsense": 1}})
        # rate and mtu can be taken away again
        netem(run, {"cable": "c", "set": {"rate": None, "mtu": 1400}})
        assert run.impairments["c.eth0"].egress.impairment.rate is None
        assert run.impairments["c.eth0"].ingress.impairment.mtu == 1400
        # no drops by loss any more: the counter stands still while pings go on
        stood = link.egress.counters["dropped_loss"]
        out = link.egress.counters["frames_out"]
        await wait_until(
            lambda: link.egress.counters["frames_out"] >= out + 20, "20 more frames out", timeout=30
        )
        assert link.egress.counters["dropped_loss"] == stood


# -- hv up -d, hv stats, hv netem, hv top ----------------------------------------------------


@pytest.fixture(scope="module")
def lossy() -> Iterator[tuple[Host, str]]:
    h = Host()
    try:
        r = h.hv("up", "-d", str(h.lab_file("lossy", LOSSY)))
        assert r.returncode == 0, r.stdout + r.stderr
        yield h, "lossy"
    finally:
        h.cleanup()


def stats(h: Host, name: str) -> dict[str, Any]:
    r = h.hv("stats", name, "--json")
    assert r.returncode == 0, r.stderr
    got: dict[str, Any] = json.loads(r.stdout)
    return got


def test_hv_stats_shows_loss_drops_by_cause(lossy: tuple[Host, str]) -> None:
    h, name = lossy
    wait_until_sync(lambda: loss_drops(stats(h, name), "lan", "link:wan") > 0, "loss drops", 60)
    snap = stats(h, name)
    assert snap["impairments"]["links[0]"]["egress"]["counters"]["dropped_loss"] > 0
    r = h.hv("stats", name)  # plain: one line per VM, port and cable direction
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"lab hv-{name} ")  # the lab file is hv/NAME.toml
    port = next(x for x in lines if x.startswith("port lan link:wan "))
    assert "drops_by=" in port and "loss:" in port and "rx_wire=" in port, port
    assert any(x.startswith("cable links[0] lan-wan egress lan->wan ") for x in lines), lines
    r = h.hv("top", name, "--interval", "0.3", "--count", "1")
    assert r.returncode == 0, r.stderr
    assert any(x.startswith("port lan link:wan ") and "loss:" in x for x in r.stdout.splitlines())


def test_hv_netem_set_changes_only_what_it_names_and_show_says_so(
    lossy: tuple[Host, str],
) -> None:
    h, name = lossy
    r = h.hv("netem", name, "lan-wan", "show", "--json")
    assert r.returncode == 0, r.stderr
    cable = json.loads(r.stdout)
    assert cable["name"] == "links[0]" and cable["label"] == "lan-wan"
    assert cable["egress"]["settings"]["loss"] == 0.3
    r = h.hv("netem", name, "links[0]", "set", "--loss", "0", "--jitter", "1ms")
    assert r.returncode == 0, r.stderr
    r = h.hv("netem", name, "links[0]", "show", "--json")
    cable = json.loads(r.stdout)
    for d in ("egress", "ingress"):
        s = cable[d]["settings"]
        assert (s["loss"], s["jitter"], s["delay"], s["seed"]) == (0.0, 0.001, 0.005, 3)
    r = h.hv("netem", name, "links[0]")  # show is the default; plain text
    assert r.returncode == 0, r.stderr
    assert "egress lan->wan delay=5ms jitter=1ms loss=0%" in r.stdout, r.stdout
    assert "per direction" in r.stdout
    # containerlab's example, on one direction
    r = h.hv("netem", name, "c", "set", "--delay", "20ms", "--jitter", "5ms", "--loss", "1%",
             "--rate", "50Mbit", "--direction", "egress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    nic = json.loads(h.hv("netem", name, "c.eth0", "show", "--json").stdout)
    assert nic["egress"]["settings"]["delay"] == 0.02 and nic["egress"]["settings"]["loss"] == 0.01
    assert nic["egress"]["settings"]["rate"] == 50e6
    assert nic["ingress"]["settings"]["delay"] == 0 and nic["ingress"]["settings"]["rate"] == 10e6
    # every cable at once
    r = h.hv("netem", name, "--json")
    assert r.returncode == 0, r.stderr
    assert [c["name"] for c in json.loads(r.stdout)["cables"]] == ["links[0]", "c.eth0"]


def test_hv_netem_bad_names_and_values(lossy: tuple[Host, str]) -> None:
    h, name = lossy
    r = h.hv("netem", name, "lan-dmz", "show")
    assert r.returncode == 1
    assert "no cable named 'lan-dmz'" in r.stderr and "links[0] (lan-wan)" in r.stderr
    assert "c.eth0" in r.stderr
    for args, message in [
        (["--loss", "1"], "--loss: 1 is ambiguous: write 1% (or 100%)"),
        (["--delay", "20"], "--delay: 20 is not a duration; use e.g. 20ms"),
        (["--rate", "1000"], "--rate: 1000 needs a unit"),
        ([], "set: nothing to set"),
    ]:
        r = h.hv("netem", name, "links[0]", "set", *args)
        assert r.returncode == 4, (args, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = h.hv("netem", name, "links[0]", "show", "--loss", "1%")
    assert r.returncode == 4 and "settings go with set" in r.stderr


def test_hv_netem_and_hv_up_help_say_a_delay_is_per_direction() -> None:
    h = Host()
    try:
        for cmd in (["netem", "--help"], ["up", "--help"]):
            r = h.hv(*cmd)
            assert r.returncode == 0
            text = " ".join(r.stdout.split())
            assert "per direction" in text and "40 ms" in text, text
    finally:
        h.cleanup()
