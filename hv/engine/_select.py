"""Which libunicorn hv loads: the fast engine (patched, built once) or the wheel's stock one.

The Python binding loads its library when ``unicorn`` is first imported, from the directory in
``LIBUNICORN_PATH`` if set, else from the wheel. So the choice has to be made before that
import: ``hv/engine/_abi.py`` (the only module that imports unicorn) imports it inside
``library_for_import()``.

``HV_ENGINE`` chooses: ``fast`` (the default) or ``stock``. A ``LIBUNICORN_PATH`` the user set
is respected as it is ("custom"). If the fast engine is not built yet, the first use builds it
(a note on stderr, then the build's steps, ``[n/m]`` from ninja); if it cannot be built, hv
says so once, remembers why (``hv engine info``, ``hv engine build`` retries) and runs on the
stock library.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from hv._log import get_logger
from hv.build import StderrProgress
from hv.engine import _build

log = get_logger("hv.engine")

MODES = ("fast", "stock")


@dataclass(frozen=True)
class Choice:
    requested: str  # what HV_ENGINE asked for
    source: str  # "fast", "stock" or "custom" (the user's LIBUNICORN_PATH)
    library_dir: str | None  # what LIBUNICORN_PATH was set to for the import, if anything
    note: str = ""  # why the fast engine is not in use, when it was asked for


_choice: Choice | None = None


def requested_mode() -> str:
    mode = os.environ.get("HV_ENGINE", "fast").strip().lower() or "fast"
    if mode not in MODES:
        print(
            f"hv: HV_ENGINE={mode!r} is not one of {', '.join(MODES)}; using fast", file=sys.stderr
        )
        return "fast"
    return mode


def _choose() -> Choice:
    mode = requested_mode()
    user_path = os.environ.get("LIBUNICORN_PATH")
    if user_path:
        return Choice(mode, "custom", user_path)
    if mode == "stock":
        return Choice(mode, "stock", None)
    built = _build.cached_engine()
    if built is None:
        note = _build.failure_note()
        if note is not None:
            log.info("fast engine unavailable; using stock unicorn", reason=note)
            return Choice(mode, "stock", None, f"last build failed: {note.splitlines()[0]}")
        print(
            "hv: building the fast engine (Unicorn "
            f"{_build.UNICORN_VERSION} + hvfabric patches), once: {_build.BUILD_TIME}; "
            "'hv engine build' does it ahead",
            file=sys.stderr,
            flush=True,
        )
        progress = StderrProgress("hv: engine: ", clock=True)
        try:
            built = _build.build_engine(progress)
        except _build.EngineBuildError as e:
            progress.close()
            first = str(e).splitlines()[0]
            print(
                f"hv: the fast engine could not be built ({first}); running on the stock "
                "Unicorn library (slower). 'hv engine build' shows the whole error.",
                file=sys.stderr,
                flush=True,
            )
            return Choice(mode, "stock", None, f"build failed: {first}")
    return Choice(mode, "fast", str(built.library))


def load_library() -> Choice:
    """Choose the library (building the fast engine on first use). Idempotent."""
    global _choice
    if _choice is None:
        if "unicorn" in sys.modules:
            _choice = Choice(requested_mode(), "custom", None, "unicorn was imported before hv")
        else:
            _choice = _choose()
    return _choice


@contextlib.contextmanager
def library_for_import() -> Iterator[Choice]:
    """Around the first ``import unicorn``: points the binding at the chosen library.

    Only for that import: child processes choose for themselves (HV_ENGINE). If unicorn was
    imported before hv, its library stays; the vCPU tells which kind it got from the symbols
    the library exports."""
    choice = load_library()
    if choice.source != "fast" or not choice.library_dir or "unicorn" in sys.modules:
        yield choice
        return
    os.environ["LIBUNICORN_PATH"] = choice.library_dir
    try:
        yield choice
    finally:
        del os.environ["LIBUNICORN_PATH"]
