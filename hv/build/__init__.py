"""Things hv builds and caches: the zig build cache (``_zig``), the bundled firmware guests
(``_guests``) the Linux guest image (``_image_linux``) and the Debian root disk (``_image_debian``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hv._lazy import face_attribute

if TYPE_CHECKING:
    from hv.build._guests import guest_path
    from hv.build._image_debian import (
        DEFAULT_PACKAGES,
        build_command,
        debian_image_info,
        parse_packages,
    )
    from hv.build._image_linux import linux_image_info
    from hv.build._kernels import build_bundled, resolve_kernel
    from hv.build._progress import Progress, StderrProgress, ninja_step, run_logged, step_line
    from hv.build._zig import cache_dir


# The names other packages use, loaded on first use (importing one private module of this
# package does not load the others).
_FACE = {
    "DEFAULT_PACKAGES": "hv.build._image_debian",
    "build_command": "hv.build._image_debian",
    "debian_image_info": "hv.build._image_debian",
    "parse_packages": "hv.build._image_debian",
    "Progress": "hv.build._progress",
    "StderrProgress": "hv.build._progress",
    "build_bundled": "hv.build._kernels",
    "cache_dir": "hv.build._zig",
    "guest_path": "hv.build._guests",
    "linux_image_info": "hv.build._image_linux",
    "ninja_step": "hv.build._progress",
    "resolve_kernel": "hv.build._kernels",
    "run_logged": "hv.build._progress",
    "step_line": "hv.build._progress",
}


def __getattr__(name: str) -> Any:
    return face_attribute(__name__, _FACE, globals(), name)


__all__ = [
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
]
