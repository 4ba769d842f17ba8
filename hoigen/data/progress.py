"""Progress bars and status lines on stderr: shown on a terminal, silent in pipes or with --quiet."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True, highlight=False)


def show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def make_progress(quiet: bool) -> Progress:
    """A bar with a free ``status`` field (add tasks with ``status=""``)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not show_progress(quiet),
        transient=False,
    )


def info(message: str, quiet: bool = False) -> None:
    """A status line on stderr (stdout stays free for data)."""
    if not quiet:
        console.print(message)


def warn(message: str) -> None:
    """A warning line on stderr, shown even with --quiet (something was found and repaired)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
