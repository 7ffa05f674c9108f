"""Atomic output directories: build in a temp dir beside OUT, rename into place only on success."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tts_awq.errors import UserError


def check_output_dir(out: Path, overwrite: bool, sources: tuple[Path, ...] = ()) -> Path:
    out = Path(out).absolute()
    real_out = out.resolve()
    for src in sources:
        src = Path(src).resolve()
        if real_out == src or src in real_out.parents or real_out in src.parents:
            raise UserError(f"{out}: output must not be inside or contain the source {src}; choose another OUT")
    if out.exists() and not overwrite:
        raise UserError(f"{out}: already exists; pass --overwrite to replace it or choose another OUT")
    return out


@contextmanager
def atomic_output_dir(out: Path, overwrite: bool = False, sources: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield a temp dir; on success it replaces ``out``; on any error it is removed and ``out`` is untouched."""
    out = check_output_dir(out, overwrite, sources)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the output is a normal directory
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / "old")
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
