"""The public faces of hv's subpackages: what each ``__init__`` names (pinned, as
``hv.__all__`` is in test_board and ``netfabric.__all__`` in test_ports), that every name
resolves, and that no code outside a package (hv's other packages, netfabric, blockdev, the
examples, the benchmarks) imports one of its private modules: it goes through the face."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FACES: dict[str, list[str]] = {
    "hv.hw": [
        "AsyncWork",
        "Bus",
        "Clock",
        "Completion",
        "Counters",
        "DEFAULT_MIPS",
        "DEFAULT_QUANTUM",
        "Device",
        "DeviceContext",
        "DeviceTime",
        "Fields",
        "GATE",
        "Gate",
        "GuestMemory",
        "IrqLine",
        "KERNEL_ADDR",
        "PLIC_BASE",
        "PLIC_NUM_SOURCES",
        "PLIC_SIZE",
        "Pool",
        "QUANTUM_MAX",
        "QUANTUM_MIN",
        "RAM_BASE",
        "SnapshotFile",
        "State",
        "TEST_BASE",
        "TEST_SIZE",
        "TIMEBASE_HZ",
        "TimeSource",
        "UART0_BASE",
        "UART0_IRQ",
        "UART0_SIZE",
        "VIRTIO_IRQ_BASE",
        "VIRTIO_SLOTS",
        "VIRTIO_STRIDE",
        "VirtualClock",
        "decode_state",
        "default_jobs",
        "encode_state",
        "virtio_slot_base",
        "write_snapshot",
    ],
    "hv.riscv": [
        "ERR_ALREADY_AVAILABLE",
        "ERR_INVALID_PARAM",
        "HSM_STARTED",
        "HSM_START_PENDING",
        "HSM_STOPPED",
        "HSM_SUSPENDED",
        "LEGACY_PUTCHAR",
        "ResetKind",
        "SUCCESS",
        "Sbi",
    ],
    "hv.devices": [
        "FinishKind",
        "Finisher",
        "Plic",
        "Uart16550",
    ],
    "hv.build": [
        "DEFAULT_PACKAGES",
        "Progress",
        "StderrProgress",
        "build_bundled",
        "build_command",
        "cache_dir",
        "debian_image_info",
        "guest_path",
        "linux_image_info",
        "ninja_step",
        "parse_packages",
        "resolve_kernel",
        "run_logged",
        "step_line",
    ],
    "hv.engine": [
        "BuiltEngine",
        "Choice",
        "EngineBuildError",
        "Exit",
        "ExitKind",
        "PATCHES",
        "UNICORN_VERSION",
        "Vcpu",
        "VcpuStats",
        "build_engine",
        "cached_engine",
        "engine_dir",
        "engine_info",
        "failure_note",
        "load_library",
    ],
    "hv.virtio": [
        "BadRequest",
        "BlkRequest",
        "DescriptorChain",
        "QueueError",
        "VirtioBackend",
        "VirtioBlk",
        "VirtioMmio",
        "VirtioNet",
        "VirtioRng",
        "VirtioVsock",
        "Virtqueue",
        "VsockError",
        "VsockListener",
        "VsockRefused",
        "VsockStream",
        "VsockUnavailable",
        "parse_request",
        "virtio_blk",
        "virtio_net",
        "virtio_rng",
        "virtio_vsock",
    ],
    "hv.board": [
        "DeviceTreeSpec",
        "Machine",
        "MachineConfig",
        "NotAKernel",
        "build_device_tree",
        "check_smp",
        "device_kind",
        "is_linux_image",
        "load_file",
        "load_kernel",
    ],
    "hv.lab": [
        "ControlError",
        "ControlServer",
        "ENDED_KEEP",
        "Follower",
        "LOG_ENV",
        "Lab",
        "LabPaths",
        "LabRestore",
        "LabRun",
        "LabSnapshotInfo",
        "LabSpec",
        "LineBuffer",
        "LineTooLong",
        "LiveConsole",
        "Mesh",
        "NicSpec",
        "Output",
        "Shards",
        "SwitchSpec",
        "VmSpec",
        "already_running",
        "as_spec",
        "assign_shards",
        "cable_counters_text",
        "check_captures",
        "check_lab_name",
        "duration_text",
        "ended_lab",
        "ended_labs",
        "for_host",
        "launch_argv",
        "live_view",
        "load_lab",
        "lock_holder",
        "log_names",
        "mpi_rank",
        "mpi_size",
        "open_lab",
        "open_tap",
        "parse_changes",
        "parse_lab",
        "parse_switch",
        "private_labs_dir",
        "render_snapshot",
        "run_demo",
        "run_lab",
        "running_labs",
        "services_config",
        "settings_text",
        "view_mode",
        "with_clock",
    ],
}


@pytest.mark.parametrize("package", sorted(FACES))
def test_each_face_is_pinned_and_resolves(package: str) -> None:
    module = importlib.import_module(package)
    assert sorted(module.__all__) == FACES[package]
    for name in FACES[package]:
        assert getattr(module, name) is not None, f"{package}.{name}"


def test_no_private_module_is_imported_across_packages() -> None:
    """``from hv.board._machine import Machine`` outside hv.board is a reach past the face
    (tests may reach in: they test the insides)."""
    reaches = []
    for folder in ("hv", "netfabric", "blockdev", "examples", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            here = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.ImportFrom) or not node.module or node.level:
                    continue
                parts = node.module.split(".")
                if parts[0] != "hv" or len(parts) < 3 or not parts[2].startswith("_"):
                    continue
                package = ".".join(parts[:2])
                if here == package or here.startswith(package + "."):
                    continue
                reaches.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}")
    assert not reaches, "\n".join(reaches)
