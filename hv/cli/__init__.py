"""The ``hv`` command line."""

from hv.cli._main import main

__all__ = ["main"]
