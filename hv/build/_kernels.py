"""Kernel names as users write them: a path, a bundled guest's name, or a built image."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from hv._errors import ConfigError
from hv.build import _guests, _image_linux
from hv.build._progress import Progress


def _path(arg: str, base: Path | None) -> Path | None:
    """The file ``arg`` names (relative to ``base`` if given), or None for a name."""
    path = Path(arg)
    if base is not None and not path.is_absolute():
        path = base / path
    return path if path.exists() or os.sep in arg else None


def build_bundled(kernels: Iterable[str], base: Path | None, progress: Progress | None) -> None:
    """Build the bundled guests among ``kernels`` not in the cache yet, with progress steps
    (``[2/3] building udpecho``), before anything starts that would wait on them."""
    _guests.build_guests(
        [k for k in kernels if k in _guests.GUESTS and _path(k, base) is None], progress
    )


def resolve_kernel(
    arg: str, base: Path | None = None, progress: Progress | None = None
) -> tuple[Path, Path | None, str | None]:
    """(kernel, initrd, default cmdline) for a path (relative to ``base`` if given), a
    bundled guest (built first if needed, reported to ``progress``) or a built image."""
    path = _path(arg, base)
    if path is not None:
        return path, None, None
    if arg in _guests.GUESTS:
        return _guests.build_guests([arg], progress)[arg], None, None
    if arg == "linux":
        img = _image_linux.linux_image_info()
        if img is None:
            raise ConfigError("the linux image is not built yet; run: hv image build linux")
        return img.kernel, img.initrd, img.cmdline
    known = ", ".join([*_guests.guest_names(), "linux"])
    raise ConfigError(f"kernel '{arg}' not found: give a file path or one of: {known}")
