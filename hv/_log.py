"""structlog set-up for the ``hv`` command: human-readable or JSON lines, on stderr."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

LEVELS = ("debug", "info", "warning", "error")


def configure(level: str = "warning", json: bool = False) -> None:
    processors: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso" if json else "%H:%M:%S", utc=json),
    ]
    if json:
        processors += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


class _Logger:
    """hv's loggers: the application's structlog set-up if it has one; otherwise warnings and
    errors only, on stderr (a library must not print debug lines into its user's stdout)."""

    _fallback: Any = None

    def __init__(self, name: str, **context: Any) -> None:
        self._name = name
        self._context = context

    def _target(self) -> Any:
        if structlog.is_configured():
            return structlog.get_logger(self._name).bind(**self._context)
        if _Logger._fallback is None:
            _Logger._fallback = structlog.wrap_logger(
                structlog.PrintLogger(sys.stderr),
                wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                processors=[
                    structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="%H:%M:%S"),
                    structlog.dev.ConsoleRenderer(colors=False),
                ],
            )
        return _Logger._fallback.bind(logger=self._name, **self._context)

    def bind(self, **context: Any) -> _Logger:
        return _Logger(self._name, **{**self._context, **context})

    def __getattr__(self, level: str) -> Any:
        return getattr(self._target(), level)


def get_logger(name: str) -> Any:
    return _Logger(name)
