"""Run the real ``hoigen`` console entry point in-process, as a shell would, for the CLI tests."""

from __future__ import annotations

import os
import sys

import pytest

from hoigen.cli import main
from hoigen.data.faults import reset_passes


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


def cli_child(argv: list[str], env: dict[str, str], cwd: str | None = None, stderr: str | None = None) -> None:
    """Run ``hoigen ARGV`` in this (child) process with extra ``env``: the crash tests' entry point.

    Meant as a ``multiprocessing`` target in a forkserver that has imported the stages once, so each
    killed run costs no imports. ``stderr`` redirects file descriptor 2 to a file.
    """
    if stderr is not None:
        fd = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
    if cwd is not None:
        os.chdir(cwd)
    os.environ.update(env)
    reset_passes()
    sys.argv = ["hoigen", *argv]
    main()
