"""Debian guests: `image = "debian"` in a lab boots our kernel and init on a Debian trixie
root disk (a snapshot overlay on the cached base from `hv image build debian`).

The image is built before pytest starts by the test command (`bash .ci/test`, its Debian
stage) or by `hv image build debian`: never here (many minutes, root and the network).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_fabric_lab import run as run_lab_text

from hv._errors import ConfigError
from hv.build import _image_debian as D
from hv.lab import parse_lab
from hv.lab._runner import image_file, open_image
from hv.lab._spec import IMAGE_MEM_DEFAULT, ImageSpec

BOOT_TIMEOUT = 240  # a Debian guest boots in seconds; a loaded CI machine is slower


@pytest.fixture(scope="session")
def debian_image() -> D.DebianImage:
    img = D.debian_image_info()
    if img is None:
        pytest.fail(
            "the Debian guest image is not built: run the tests with `bash .ci/test` (it "
            "builds it first, with progress), or build it with `hv image build debian` (root)",
            pytrace=False,
        )
    return img


async def run(text: str, tmp_path: Path, until: set[str]) -> tuple[str, int]:
    out, (status, _) = await run_lab_text(text, tmp_path, until, BOOT_TIMEOUT)
    return out.replace("\r", ""), status


# ---------------------------------------------------------------- lab files


def test_image_debian_is_the_default_package_set_with_more_ram(tmp_path: Path) -> None:
    spec = parse_lab('[vms.a]\nkernel = "linux"\nimage = "debian"\n', tmp_path)
    assert spec.vms["a"].image == ImageSpec(packages=D.DEFAULT_PACKAGES)
    assert spec.vms["a"].mem == IMAGE_MEM_DEFAULT
    spec = parse_lab('[vms.a]\nkernel = "linux"\nimage = "debian"\nmem = "256M"\n', tmp_path)
    assert spec.vms["a"].mem == 256 << 20


def test_image_packages_are_sorted_and_checked(tmp_path: Path) -> None:
    lab = '[vms.a]\nkernel = "linux"\nimage = { packages = ["tcpdump", "iperf3", "iperf3"] }\n'
    assert parse_lab(lab, tmp_path).vms["a"].image == ImageSpec(packages=("iperf3", "tcpdump"))
    bad = {
        'image = { packages = ["Not A Package"] }': "vms.a.image.packages: 'Not A Package'",
        'image = { packages = "iperf3" }': "vms.a.image.packages: expected a list",
        "image = { pkgs = [] }": "vms.a.image",
        "image = 3": "vms.a.image",
    }
    for line, error in bad.items():
        with pytest.raises(ConfigError, match=re.escape(error)):
            parse_lab(f'[vms.a]\nkernel = "linux"\n{line}\n', tmp_path)
    with pytest.raises(ConfigError, match=r'vms\.a\.image: needs kernel = "linux"'):
        parse_lab('[vms.a]\nkernel = "ping"\nimage = "debian"\n', tmp_path)


def test_an_unbuilt_image_names_the_command_that_builds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError, match=r"vms\.a\.image: .* run: hv image build debian$"):
        image_file(ImageSpec(packages=D.DEFAULT_PACKAGES), "vms.a.image")
    with pytest.raises(ConfigError, match=r"run: hv image build debian --packages iperf3$"):
        image_file(ImageSpec(packages=("iperf3",)), "vms.a.image")


def test_hv_up_refuses_a_foreign_or_corrupt_image_in_one_line(tmp_path: Path) -> None:
    from blockdev.qcow2 import create_image

    raw = tmp_path / "disk.img"
    raw.write_bytes(b"\0" * (1 << 20))
    empty = tmp_path / "empty.qcow2"
    create_image(empty, "qcow2", 64 << 20)
    corrupt = tmp_path / "corrupt.qcow2"
    corrupt.write_bytes(b"QFI\xfb" + b"\xff" * 4092)
    cases = {
        raw: "vms.a.image: ",  # raw: the format is required to be qcow2
        empty: "holds no ext4 file system",
        corrupt: "vms.a.image: ",
    }
    for image, error in cases.items():
        lab = tmp_path / "lab.toml"
        lab.write_text(f'[vms.a]\nkernel = "linux"\nimage = "{image.name}"\n')
        proc = subprocess.run(
            [sys.executable, "-m", "hv.cli", "up", str(lab)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 4, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and error in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr


async def test_an_image_without_ext4_is_refused_and_closed(tmp_path: Path) -> None:
    from blockdev.qcow2 import create_image

    empty = tmp_path / "empty.qcow2"
    create_image(empty, "qcow2", 64 << 20)
    with pytest.raises(ConfigError, match=r"^vms\.a\.image: .* holds no ext4 file system"):
        await open_image(empty, "vms.a")
    # closed again: a writer may open it now
    from blockdev.open import open_disk

    disk = await open_disk(str(empty))
    await disk.close()


def test_build_command_and_key() -> None:
    assert D.build_command(D.DEFAULT_PACKAGES) == "hv image build debian"
    assert D.build_command(()) == "hv image build debian --packages ''"
    assert D.image_key(("a", "b")) == D.image_key(("b", "a"))
    assert D.image_key(("a",)) != D.image_key(("a", "b"))
    assert D.image_key(("a",)) != D.image_key(("a",), size=4 << 30)
    with pytest.raises(ConfigError, match=r"--packages: 'A' is not a Debian package name"):
        D.parse_packages("iperf3,A")
    assert D.parse_packages(" iperf3, ,frr") == ("frr", "iperf3")


# ---------------------------------------------------------------- real Debian guests


ALPHA_RUN = (
    "cat /etc/debian_version; cat /proc/sys/kernel/hostname; iperf3 --version | head -n 1; "
    "ip -color=never -4 -o addr show eth0; echo marker > /root/written; sync; "
    "echo RUN-DONE; sleep 5; poweroff"  # (up while beta, on DHCP, pings it)
)
BETA_RUN = (
    "ip -color=never -4 -o addr show eth0; cat /root/written || echo NOT-WRITTEN; "
    "ping -c 1 -W 5 10.0.0.2 | tail -n 2; echo RUN-DONE; poweroff"
)
STATIC_LAB = f"""
[switches.lan]
subnet = "10.0.0.0/24"
dhcp = {{ pool = "10.0.0.100-10.0.0.150" }}

[vms.alpha]
kernel = "linux"
image = "debian"
nics = [{{ switch = "lan", ip = "10.0.0.2/24" }}]
append = 'hv.run="{ALPHA_RUN}"'

[vms.beta]
kernel = "linux"
image = "debian"
nics = [{{ switch = "lan", ip = "dhcp" }}]
append = 'hv.run="{BETA_RUN}"'
"""


async def test_debian_vms_boot_run_and_share_one_base(
    tmp_path: Path, debian_image: D.DebianImage, linux_image: Any
) -> None:
    before = hashlib.sha256(debian_image.base.read_bytes()).hexdigest()
    text, status = await run(STATIC_LAB, tmp_path, {"alpha", "beta"})
    assert status == 0, text[-4000:]
    alpha = "\n".join(re.findall(r"^alpha +\| (.*)$", text, re.M))
    beta = "\n".join(re.findall(r"^beta +\| (.*)$", text, re.M))
    assert "RUN-DONE" in alpha and "RUN-DONE" in beta, text[-4000:]
    assert re.search(r"^13\.\d+$", alpha, re.M), alpha[-3000:]
    assert re.search(r"^alpha$", alpha, re.M), alpha[-3000:]  # hostname
    assert re.search(r"^iperf 3\.\d+", alpha, re.M), alpha[-3000:]
    assert "inet 10.0.0.2/24" in alpha, alpha[-3000:]  # ip=
    assert re.search(r"inet 10\.0\.0\.1(0\d|1[0-4]\d|150)/24", beta), beta[-3000:]  # DHCP
    assert "1 received" in beta, beta[-3000:]
    # each VM writes its own overlay: beta does not see alpha's file, the base is unchanged
    assert "NOT-WRITTEN" in beta, beta[-3000:]
    assert hashlib.sha256(debian_image.base.read_bytes()).hexdigest() == before


def test_ci_installs_the_host_packages_and_builds_the_image_before_pytest() -> None:
    repo = Path(__file__).resolve().parent.parent
    script = (repo / ".ci" / "linux-deps.sh").read_text()
    m = re.search(r'^debian_pkgs="([^"]*)"', script, flags=re.MULTILINE)
    assert m is not None and set(m.group(1).split()) == set(D.REQUIRED_PACKAGES)
    test = (repo / ".ci" / "test").read_text()
    assert test.index("image build debian") < test.index("-m pytest")


def test_a_capture_onto_the_vms_image_file_is_refused(tmp_path: Path) -> None:
    """An `image` file is a disk like any other: a capture may not overwrite it."""
    from hv.lab import check_captures

    (tmp_path / "root.qcow2").write_bytes(b"QFI\xfb" + bytes(100))
    lab = (
        '[switches.lan]\ncapture = "root.qcow2"\n'
        '[vms.a]\nkernel = "linux"\nimage = "root.qcow2"\nnics = [{ switch = "lan" }]\n'
    )
    with pytest.raises(ConfigError, match=r"switches\.lan\.capture: .* is vms\.a\.image's file"):
        check_captures(parse_lab(lab, tmp_path))
