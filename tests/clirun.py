"""Run the real ``hoigen`` console entry point in-process, as a shell would, for the CLI tests."""

from __future__ import annotations

import sys

import pytest

from hoigen.cli import main


def run_hoigen(*args: object, capsys: pytest.CaptureFixture | None = None) -> tuple[int, str]:
    """``hoigen ARGS...``: returns (exit code, stderr captured by ``capsys``, or "" without it)."""
    argv = sys.argv
    sys.argv = ["hoigen", *map(str, args)]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = argv
    return code, capsys.readouterr().err if capsys is not None else ""


def exit_code(*args: object) -> int:
    """The exit code of ``hoigen ARGS...``."""
    return run_hoigen(*args)[0]
