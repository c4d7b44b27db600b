"""Logging: structlog to stdout, JSON lines for journald, readable in a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_level = logging.INFO


def configure(level: str, fmt: Literal["auto", "json", "console"] = "auto") -> None:
    """Configure structlog; callable again (on reload) to change the level or format."""
    global _level
    _level = _LEVELS[level]
    json_lines = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        # No file given: each line goes to sys.stdout as it is then, not to the stream that was
        # sys.stdout at configure time (which a caller that swapped it may have closed since).
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    # Libraries (alembic, grpc) log through the standard library; keep them quiet but visible.
    logging.basicConfig(stream=sys.stdout, level=max(_LEVELS[level], logging.WARNING), force=True)


def get(name: str) -> structlog.stdlib.BoundLogger:
    """A logger for one part of the daemon."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


def enabled(level: str) -> bool:
    """Whether lines of `level` are written now: a check for paths that run on every call, where
    even a filtered line costs binding a logger (loggers are not cached, so that a reload can
    change the level)."""
    return _LEVELS[level] >= _level
