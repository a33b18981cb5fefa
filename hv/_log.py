"""Logging: structlog, on stderr, human-readable or JSON lines.

hv's modules log through ``get_logger(name)``. Which structlog set-up they use:

- the ``hv`` command calls ``configure(level, json)``: records below ``level`` are dropped
  without importing structlog at all (it costs ~50 ms of start-up, which `hv run` pays for
  nothing at the default level);
- an application that configured structlog itself gets hv's records through its set-up;
- otherwise (a library user who set nothing up) only warnings and errors, on stderr: a library
  must not print debug lines into its user's stdout.
"""

from __future__ import annotations

import sys
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
_RANK = {name: i for i, name in enumerate(("debug", "info", "warning", "error", "critical"))}
_RANK.update(exception=_RANK["error"], warn=_RANK["warning"], msg=_RANK["info"])

_cli: dict[str, Any] | None = None  # set by configure(): {"level": str, "json": bool}
_fallback: Any = None
_structlog_ready = False


def configure(level: str = "warning", json: bool = False) -> None:
    """Set up logging for the ``hv`` command (structlog itself is set up on first use)."""
    global _cli, _structlog_ready
    _cli = {"level": level, "json": json}
    _structlog_ready = False


def _setup_structlog() -> None:
    global _structlog_ready
    import logging

    import structlog

    assert _cli is not None
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(
            fmt="iso" if _cli["json"] else "%H:%M:%S", utc=_cli["json"]
        ),
    ]
    if _cli["json"]:
        processors += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, _cli["level"].upper())
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    _structlog_ready = True


def _library_fallback() -> Any:
    global _fallback
    if _fallback is None:
        import logging

        import structlog

        _fallback = structlog.wrap_logger(
            structlog.PrintLogger(sys.stderr),
            wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="%H:%M:%S"),
                structlog.dev.ConsoleRenderer(colors=False),
            ],
        )
    return _fallback


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class _Logger:
    """A logger that picks its structlog set-up when a record is emitted (see the module doc)."""

    def __init__(self, name: str, **context: Any) -> None:
        self._name = name
        self._context = context

    def bind(self, **context: Any) -> _Logger:
        return _Logger(self._name, **{**self._context, **context})

    def __getattr__(self, level: str) -> Any:
        if _cli is not None:
            if _RANK.get(level, 0) < _RANK[_cli["level"]]:
                return _noop
            if not _structlog_ready:
                _setup_structlog()
            import structlog

            return getattr(structlog.get_logger(self._name).bind(**self._context), level)
        app_structlog: Any = sys.modules.get("structlog")
        if app_structlog is not None and app_structlog.is_configured():
            logger = app_structlog.get_logger(self._name).bind(**self._context)
            return getattr(logger, level)
        if _RANK.get(level, 0) < _RANK["warning"]:
            return _noop
        return getattr(_library_fallback().bind(logger=self._name, **self._context), level)


def get_logger(name: str) -> Any:
    return _Logger(name)
