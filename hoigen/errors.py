"""The one error type users see: a single line naming the file and what to do."""

from __future__ import annotations


class HoigenError(Exception):
    """A user-facing failure. The message is one line: what went wrong, where, and what to do.

    The CLI prints it as ``error: <message>`` and exits with ``exit_code``.
    """

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
