"""User-facing errors: one line that names the file and the fix, mapped to an exit code by the CLI.

Exit codes (every command): 0 success; 1 validate-awq: a gate failed (push: the Hub kept failing after retries);
2 bad input (:class:`UserError`); 3 internal error (a bug or a crash inside a model: one line, ``--debug`` or
``TTS_AWQ_DEBUG=1`` for the traceback); 4 an operating-system error (read-only or full disk, permission denied, a
file deleted mid-run); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM). Temp directories are removed in every
case.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

EXIT_USER = 2
EXIT_INTERNAL = 3
EXIT_OS = 4
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class UserError(Exception):
    """A mistake in the user's input. The CLI prints ``error: <message>`` and exits with ``exit_code``."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message.strip().replace("\n", " "))
        if exit_code is not None:
            self.exit_code = exit_code


class Terminated(BaseException):
    """Raised by the SIGTERM handler so every ``finally`` / context manager cleans up as for Ctrl-C."""


_OS_HINTS = {
    errno.EROFS: "the filesystem is read-only; write OUT to a writable disk",
    errno.ENOSPC: "no space left on the device; free space or write OUT to another disk",
    errno.EDQUOT: "disk quota exceeded; free space or write OUT elsewhere",
    errno.EACCES: "permission denied; check the permissions or choose another path",
    errno.EPERM: "operation not permitted; check the permissions or choose another path",
    errno.ENOTDIR: "a component of the path is a file, not a directory; choose another path",
    errno.ENOENT: "no such file or directory (deleted while running?); check the path and run again",
    errno.EISDIR: "is a directory where a file was expected; check the path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) and run again",
}


def describe_os_error(exc: OSError) -> str:
    """``<path>: <what happened>; <what to do>`` on one line."""
    path = exc.filename or ""
    if exc.filename2:
        path = f"{path} -> {exc.filename2}"
    reason = exc.strerror or str(exc)
    hint = _OS_HINTS.get(exc.errno or -1, "check the path and the disk, then run again")
    return f"{path + ': ' if path else ''}{reason}; {hint}"


@contextlib.contextmanager
def naming_path(path: object) -> Iterator[None]:
    """Re-raise an ``OSError`` that names no file (``write()`` on a full disk) with ``path``, so the one error
    line says where it happened."""
    try:
        yield
    except OSError as exc:
        if exc.filename or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc
