"""One stderr format for every warning: ``warning: <where>: <message>``.

:func:`configure` (the CLI calls it from its global ``-v/--verbose`` and ``--log-level`` options) sends
Python warnings (``warnings.warn``) and log records — hoigen's own loggers and the libraries' (diffusers,
transformers, trimesh, ...) — through one formatter on stderr. ``<where>`` is the package that spoke
(``diffusers``, ``trimesh``, ``render``), for a Python warning the module that raised it. Library INFO
and DEBUG lines are hidden by default (level ``warning``); ``-v`` shows INFO, ``-vv`` or
``--log-level debug`` DEBUG.

diffusers and transformers install their own stderr handler on their root logger and stop
propagation; their root loggers are created here first, as loggers that keep propagating to ours.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, TextIO

LEVELS = ("debug", "info", "warning", "error")
LEVEL_ENV = "HOIGEN_LOG_LEVEL"  # worker processes configure themselves from it
#: Libraries that attach their own stderr handler to their root logger (HF's logging utilities).
OWN_HANDLER_LIBRARIES = ("diffusers", "transformers", "huggingface_hub")
_VERBOSITY_ENV = {"diffusers": "DIFFUSERS_VERBOSITY", "transformers": "TRANSFORMERS_VERBOSITY"}


def level_for(verbose: int = 0, log_level: str | None = None) -> str:
    """``--log-level`` if given, else warning, info (``-v``) or debug (``-vv``)."""
    if log_level is not None:
        return log_level.lower()
    return LEVELS[max(0, 2 - min(int(verbose), 2))]


def where_of(name: str) -> str:
    """A logger's name as ``<where>``: hoigen's own without ``hoigen.``, a library's top package."""
    if name == "hoigen" or name.startswith("hoigen."):
        return name.split(".")[1] if "." in name else "hoigen"
    return name.split(".")[0] or "root"


def module_of(filename: str) -> str:
    """The dotted module of a source file (``.../site-packages/trimesh/exchange/obj.py``: ``trimesh.exchange.obj``)."""
    path = Path(filename)
    parts = list(path.with_suffix("").parts)
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            return ".".join(parts[len(parts) - parts[::-1].index(anchor):])
    if "hoigen" in parts:
        return ".".join(parts[len(parts) - 1 - parts[::-1].index("hoigen"):])
    return path.stem


class Formatter(logging.Formatter):
    """``<level>: <where>: <message>`` on one line (a message that already starts with ``<where>:`` keeps it once)."""

    def format(self, record: logging.LogRecord) -> str:
        where = where_of(record.name)
        message = " ".join(record.getMessage().split())
        if record.exc_info and logging.getLogger().isEnabledFor(logging.DEBUG):
            message += "\n" + self.formatException(record.exc_info)
        if message.startswith(f"{where}: "):
            message = message[len(where) + 2:]
        return f"{record.levelname.lower()}: {where}: {message}"


class StderrHandler(logging.Handler):
    """Writes to the *current* ``sys.stderr`` (test capture and redirections replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class _Propagating(logging.Logger):
    """A library root logger that keeps propagating to hoigen's handler: the library's own handler and its
    ``propagate = False`` are ignored (its levels still apply)."""

    def addHandler(self, hdlr: logging.Handler) -> None:  # noqa: N802 - logging's name
        if isinstance(hdlr, StderrHandler):
            super().addHandler(hdlr)

    @property
    def propagate(self) -> bool:  # type: ignore[override]
        return True

    @propagate.setter
    def propagate(self, value: bool) -> None:
        pass


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:  # fmt: skip
    """``warnings.showwarning`` in hoigen's format: ``warning: <module>: <Category>: <message>``."""
    kind = "" if category is UserWarning else f"{category.__name__}: "
    text = " ".join(str(message).split())
    (file or sys.stderr).write(f"warning: {module_of(filename)}: {kind}{text}\n")


def configure(level: str = "warning") -> None:
    """Route warnings and log records through :class:`Formatter` at ``level``; idempotent."""
    level = level.lower()
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    number = getattr(logging, level.upper())
    os.environ[LEVEL_ENV] = level
    for env in _VERBOSITY_ENV.values():  # read when the library sets up its logger (after this)
        os.environ[env] = level
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(handler)
    handler = StderrHandler()
    handler.setFormatter(Formatter())
    root.addHandler(handler)
    root.setLevel(number)
    for name in OWN_HANDLER_LIBRARIES:
        _adopt(name, number)
    warnings.showwarning = show_warning


def _adopt(name: str, number: int) -> None:
    """Make library ``name``'s root logger propagate to ours (created now, or stripped of its handler)."""
    existing = logging.root.manager.loggerDict.get(name)
    if isinstance(existing, logging.Logger) and not isinstance(existing, _Propagating):
        for h in list(existing.handlers):
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stderr, sys.__stderr__):
                existing.removeHandler(h)
        existing.propagate = True
        logger: logging.Logger = existing
    else:
        saved = logging.getLoggerClass()
        logging.setLoggerClass(_Propagating)
        try:
            logger = logging.getLogger(name)
        finally:
            logging.setLoggerClass(saved)
    logger.setLevel(number)


def configure_from_env(environ: Any = os.environ) -> None:
    """In a worker process: the level the CLI chose (``HOIGEN_LOG_LEVEL``), if any."""
    level = environ.get(LEVEL_ENV)
    if level in LEVELS:
        configure(level)
