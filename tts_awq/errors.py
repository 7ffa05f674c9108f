"""User-facing errors: one line that names the file and the fix, mapped to an exit code by the CLI."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input. The CLI prints ``error: <message>`` and exits with ``exit_code``."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message.strip().replace("\n", " "))
        if exit_code is not None:
            self.exit_code = exit_code
