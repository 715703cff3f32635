"""Scanpy-style timed logging: ``start = logg.info(...)`` then ``logg.info("    finished", time=start, deep=...)``."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta

from ._settings import settings

__all__ = ["error", "warning", "info", "hint", "debug"]

_LEVELS = {"error": 0, "warning": 1, "info": 2, "hint": 3, "debug": 4}


def _fmt(elapsed: timedelta) -> str:
    s = elapsed.total_seconds()
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{int(h)}:{int(m):02d}:{sec:05.2f}" if h else f"{int(m)}:{sec:05.2f}"


def _log(level: str, msg: str, *, time: datetime | None = None, deep: str | None = None) -> datetime:
    now = datetime.now()
    if settings.verbosity >= _LEVELS[level]:
        text = msg
        if time is not None:
            text = f"{text} ({_fmt(now - time)})"
        if deep is not None and settings.verbosity >= _LEVELS["hint"]:
            text = f"{text}\n{deep}"
        elif deep is not None and time is not None:
            text = f"{text}\n{deep}"
        prefix = {"error": "ERROR: ", "warning": "WARNING: "}.get(level, "")
        print(prefix + text, file=sys.stderr, flush=True)
    return now


def error(msg: str, **kw) -> datetime:
    """Log an error message."""
    return _log("error", msg, **kw)


def warning(msg: str, **kw) -> datetime:
    """Log a warning."""
    return _log("warning", msg, **kw)


def info(msg: str, **kw) -> datetime:
    """Log at info level; returns the time, to pass as ``time=`` to a later call."""
    return _log("info", msg, **kw)


def hint(msg: str, **kw) -> datetime:
    """Log a hint."""
    return _log("hint", msg, **kw)


def debug(msg: str, **kw) -> datetime:
    """Log a debug message."""
    return _log("debug", msg, **kw)
