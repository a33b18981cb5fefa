"""The engine: which Unicorn library runs the guest, and how hv's fast one is built.

hv runs guests on **the fast engine** by default: Unicorn 2.1.4 built from its PyPI sdist with
five small patches of hvfabric's own (``patches/``, documented in ``patches/README.md``):

* stores go to host memory directly unless their page holds translated code (stock 2.1.4
  sends every store of a guest with executable RAM down a slow path, and runs stale code
  written through a second mapping of a page);
* one inline check at each translated block's entry serves both stop requests and hv's time
  slice (stock 2.1.4 calls a helper at every block and after every load and store, and hv
  needed a block hook of its own on top for slicing);
* the ``time`` CSR reads a host function (``uc_hv_set_time``: hv's clock in
  ``_native/vcpu.c``), so ``rdtime`` no longer traps to be emulated;
* for SMP guests (one engine per hart over one RAM): AMOs and SC as host atomics when harts
  run on parallel threads (``uc_hv_set_parallel``), and ``fence.i`` dropping the engine's
  translations, since an engine sees only its own stores to code (``uc_hv_set_shared_code``).

``HV_ENGINE=stock`` runs on the wheel's library instead (as does any machine where the build
is impossible). ``hv engine info`` says which library is in use, ``hv engine build`` builds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hv._lazy import face_attribute

if TYPE_CHECKING:
    from hv.engine._vcpu import Exit, ExitKind, Vcpu, VcpuStats


from hv.engine._build import (
    PATCHES,
    UNICORN_VERSION,
    BuiltEngine,
    EngineBuildError,
    build_engine,
    cached_engine,
    engine_dir,
    failure_note,
)
from hv.engine._select import Choice, load_library


def engine_info() -> dict[str, object]:
    """What runs the guests in this process: loads the library if it is not loaded yet."""
    choice = load_library()
    from hv.engine import _abi  # loads libunicorn

    built = cached_engine()
    info: dict[str, object] = {
        "engine": "fast" if _abi.FAST_ENGINE else "stock",
        "requested": choice.requested,
        "source": choice.source,
        "library": _abi.library_path(),
        "unicorn": _abi.unicorn_version(),
        "patches": list(PATCHES) if _abi.FAST_ENGINE else [],
        "cache": str(engine_dir()),
        "built": built.info if built is not None else None,
    }
    if choice.note:
        info["note"] = choice.note
    return info


# The names other packages use, loaded on first use (importing one private module of this
# package does not load the others).
_FACE = {
    "VcpuStats": "hv.engine._vcpu",
    "Exit": "hv.engine._vcpu",
    "ExitKind": "hv.engine._vcpu",
    "Vcpu": "hv.engine._vcpu",
}


def __getattr__(name: str) -> Any:
    return face_attribute(__name__, _FACE, globals(), name)


__all__ = [
    "PATCHES",
    "UNICORN_VERSION",
    "BuiltEngine",
    "Choice",
    "EngineBuildError",
    "Exit",
    "ExitKind",
    "Vcpu",
    "VcpuStats",
    "build_engine",
    "cached_engine",
    "engine_dir",
    "engine_info",
    "failure_note",
    "load_library",
]
