"""The ``hv`` command line."""

from hv.cli import _early  # noqa: F401  (first: a shard's early signal; see the module)
from hv.cli._main import main

__all__ = ["main"]
