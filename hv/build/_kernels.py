"""Kernel names as users write them: a path, a bundled guest's name, or a built image."""

from __future__ import annotations

import os
from pathlib import Path

from hv._errors import ConfigError
from hv.build import _guests, _image_linux


def resolve_kernel(arg: str, base: Path | None = None) -> tuple[Path, Path | None, str | None]:
    """(kernel, initrd, default cmdline) for a path (relative to ``base`` if given), a
    bundled guest or a built image."""
    path = Path(arg)
    if base is not None and not path.is_absolute():
        path = base / path
    if path.exists() or os.sep in arg:
        return path, None, None
    if arg in _guests.GUESTS:
        return _guests.build_guest(arg), None, None
    if arg == "linux":
        img = _image_linux.linux_image_info()
        if img is None:
            raise ConfigError("the linux image is not built yet; run: hv image build linux")
        return img.kernel, img.initrd, img.cmdline
    known = ", ".join([*_guests.guest_names(), "linux"])
    raise ConfigError(f"kernel '{arg}' not found: give a file path or one of: {known}")
