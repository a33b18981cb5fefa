"""The hvfabric pytest plugin, run the way a user's project runs it: pytest in a subprocess
(``pytester``) on a sample test file, the plugin loaded through its ``pytest11`` entry point
(no ``-p``, no conftest). The sample is the documented example (docs/EMBEDDING.md), plus
configuration errors, a lab from a file and a failing test; the checks: the fixtures'
outcomes, and the failing test's report with its VMs' console tails and the capture paths."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from hv.build._zig import cache_dir

pytest_plugins = ["pytester"]

DOC = Path(__file__).resolve().parent.parent / "docs" / "EMBEDDING.md"
# pytester points HOME at its own folder: keep the built guests and engine where they are
CACHE_BASE = cache_dir().parent

MORE = """
import pytest


async def test_a_typo_is_a_config_error(hv_lab, hv_vm):
    with pytest.raises(hv.ConfigError, match="kernel 'nosuch' not found"):
        await hv_lab(hv.Lab().switch("lan").vm("a", kernel="nosuch", nics=["lan"]))
    with pytest.raises(hv.ConfigError, match="cannot read lab file"):
        await hv_lab("missing.toml")
    with pytest.raises(hv.ConfigError, match="kernel 'nosuch' not found"):
        await hv_vm(kernel="nosuch")

async def test_unanswered(hv_lab, hv_vm):
    lone = await hv_vm(
        kernel="udpecho", mem="16M", nics=[{"switch": "wire", "ip": "10.9.0.1/24", "capture": True}]
    )
    lab = await hv_lab("unanswered.toml")  # next to this file
    await lone.console.wait_for(b"udpecho: echoing")
    info = await lab.vms["p"].wait()
    assert info.exit_code == 0
"""

LAB_FILE = """
[switches.lan]

[vms.s]
kernel = "udpecho"
mem = "16M"
nics = [{ switch = "lan", ip = "10.0.0.2/24" }]

[vms.p]
kernel = "ping"
mem = "16M"
append = "peer=10.0.0.7 count=1"
nics = [{ switch = "lan", ip = "10.0.0.1/24" }]
"""

SETTINGS = """
import pytest


@pytest.mark.hv(console_tail=2, capture=False)
async def test_marked(hv_vm):
    vm = await hv_vm(kernel="udpecho", mem="16M", nics=[{"switch": "lan", "ip": "10.0.0.2/24"}])
    await vm.console.wait_for(b"udpecho: echoing")
    assert False


async def test_unmarked(hv_vm):
    vm = await hv_vm(kernel="udpecho", mem="16M", nics=[{"switch": "lan", "ip": "10.0.0.2/24"}])
    await vm.console.wait_for(b"udpecho: echoing")
    assert False
"""


def example(name: str) -> str:
    """The code block after ``<!-- example: NAME -->`` in docs/EMBEDDING.md."""
    m = re.search(
        rf"<!-- example: {re.escape(name)} -->\n```\w+\n(.*?)\n```", DOC.read_text(), re.S
    )
    assert m is not None, f"no example {name!r} in {DOC}"
    return m.group(1) + "\n"


@pytest.fixture
def sample(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("XDG_CACHE_HOME", str(CACHE_BASE))
    for var in ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_PLUGINS", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(var, raising=False)
    ini = example("pytest.ini")
    assert ini.startswith("[pytest]\n")
    pytester.makeini(ini + "filterwarnings = error\n")
    return pytester


def section(output: str, test: str) -> str:
    """The "hvfabric consoles" section of ``test``'s failure report."""
    report = output.split(f"_ {test} _", 1)[1]
    body = report.split("- hvfabric consoles -", 1)[1]
    return re.split(r"\n(?:=+ |_+ )", body, maxsplit=1)[0]


def test_the_fixtures_and_a_failed_tests_report(sample: pytest.Pytester) -> None:
    sample.makepyfile(test_lab=example("pytest") + MORE)
    sample.makefile(".toml", unanswered=LAB_FILE)
    result = sample.runpytest_subprocess("-v", timeout=300)
    out = result.stdout.str()
    result.assert_outcomes(passed=3, failed=1)
    assert "test_lab.py::test_every_ping_is_answered PASSED" in out
    assert "test_lab.py::test_vms_of_our_own PASSED" in out
    assert "test_lab.py::test_a_typo_is_a_config_error PASSED" in out
    assert out.count("hvfabric consoles") == 1  # only the failed test has the section
    text = section(out, "test_unanswered")
    # every VM of the test, with its state and its console's last lines
    assert re.search(r"^vm udpecho: stopped \(exit 130\): the test ended; console, 2 lines:$",
                     text, re.M), text  # fmt: skip
    assert "  | udpecho: echoing on port 7" in text
    assert re.search(r"^vm s \[lab unanswered\]: stopped \(exit 130\)", text, re.M), text
    assert re.search(r"^vm p \[lab unanswered\]: failure \(exit 1\)", text, re.M), text
    assert "  | ping: no reply from 10.0.0.7: seq=1" in text
    assert "  | ping: 10.0.0.7: 1 sent, 0 received" in text
    # the captures: the hv_vm switch and the lab's, in the test's tmp_path, on disk
    paths = dict(re.findall(r"^  switch (\S+(?: \[lab \w+\])?): (\S+\.pcapng)$", text, re.M))
    assert set(paths) == {"wire", "lan [lab unanswered]"}, text
    lan = Path(paths["lan [lab unanswered]"])
    assert lan.name == "unanswered-lan.pcapng" and lan.parent.name == "test_unanswered0"
    data = lan.read_bytes()
    assert data[:4] == b"\x0a\x0d\x0d\x0a"  # a pcapng section header
    assert bytes([10, 0, 0, 7]) in data  # p's ARP requests for 10.0.0.7 are in it
    assert Path(paths["wire"]).is_file()
    nic = re.search(r"^  nic udpecho\.eth0: (\S+)$", text, re.M)
    assert nic is not None and Path(nic[1]) == lan.parent / "udpecho.eth0.pcapng", text
    assert Path(nic[1]).read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"


def test_the_plugin_is_the_hvfabric_entry_point(sample: pytest.Pytester) -> None:
    sample.makepyfile(test_lab=example("pytest"))
    result = sample.runpytest_subprocess("-p", "no:hvfabric", timeout=120)
    result.assert_outcomes(errors=2)
    assert "fixture 'hv_lab' not found" in result.stdout.str()


def test_the_report_settings_from_options_and_markers(sample: pytest.Pytester) -> None:
    sample.makepyfile(test_settings=SETTINGS)
    result = sample.runpytest_subprocess("--hv-console-tail", "1", "--strict-markers",
                                         timeout=300)  # fmt: skip
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    marked, unmarked = section(out, "test_marked"), section(out, "test_unmarked")
    assert "console, last 1 of 2 lines:" in unmarked  # --hv-console-tail
    assert "  | udpecho: echoing on port 7" in unmarked and "  | net: eth0" not in unmarked
    assert re.search(r"^  switch lan: \S+test_unmarked0/lan\.pcapng$", unmarked, re.M), unmarked
    assert "console, 2 lines:" in marked  # the marker beats the option
    assert "captures: none" in marked


NO_TRIO_MODE = """
import pytest


async def test_async_without_trio(hv_vm):
    await hv_vm(kernel="udpecho", mem="16M")


def test_sync(hv_lab):
    pass


@pytest.mark.trio
async def test_marked_runs(hv_vm):
    vm = await hv_vm(kernel="hello", mem="16M")
    await vm.console.wait_for(b"Hello")
"""


def test_without_trio_mode_says_what_to_add(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ``trio_mode``: a test using the fixtures fails at setup with one line naming the
    setting to add (not pytest-trio's RuntimeError and pytest-internal assertions); a test
    marked ``@pytest.mark.trio`` still runs."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(CACHE_BASE))
    for var in ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_PLUGINS", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(var, raising=False)
    pytester.makeini("[pytest]\n")  # no trio_mode
    pytester.makepyfile(test_mode=NO_TRIO_MODE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=1, errors=2)
    out = result.stdout.str()
    assert "Trio fixtures can only be used by Trio tests" not in out
    assert "AssertionError" not in out
    assert out.count("trio_mode = true") >= 2, out
    assert "test_sync uses hv_lab" in out and "async def" in out, out


LAB_SWITCH = """
async def test_dhcp_on_a_fixture_switch(hv_vm):
    await hv_vm.switch("lan", subnet="10.5.0.0/24", dhcp=True, dns=True)
    vm = await hv_vm(kernel="udpecho", mem="16M", nics=[{"switch": "lan", "ip": "dhcp"}])
    await vm.console.wait_for(b"bound 10.5.0.")
    assert hv_vm.services["lan"].leases()


async def test_bad_switch_keys(hv_vm):
    import hv, pytest
    with pytest.raises(hv.ConfigError, match="subnet"):
        await hv_vm.switch("lan", subnet="10.5.0.0/33")
    with pytest.raises(hv.ConfigError, match="nosuch"):
        await hv_vm.switch("wan", nosuch=1)
"""


def test_hv_vm_switches_with_services(sample: pytest.Pytester) -> None:
    """A switch ``hv_vm`` starts can have a subnet and DHCP (and DNS, TFTP), with the keys
    and errors of a lab file's switch table."""
    sample.makepyfile(test_switch=LAB_SWITCH)
    result = sample.runpytest_subprocess("-p", "no:cacheprovider", timeout=180)
    result.assert_outcomes(passed=2)


def test_the_documented_snapshot_example(sample: pytest.Pytester, linux_image: Any) -> None:
    """docs/EMBEDDING.md's example, two tests on one snapshot, as a user's project runs it;
    the snapshot is deleted when the session ends."""
    sample.makepyfile(
        test_fresh=example("pytest snapshot") + "\ntest_another_fresh_guest = test_a_fresh_guest\n"
    )
    result = sample.runpytest_subprocess("-v", f"--basetemp={sample.path / 'tmp'}", timeout=300)
    result.assert_outcomes(passed=2)
    assert list((sample.path / "tmp").glob("hv-snapshots*/*")) == []
