"""Atomic output directories: build in a temp dir beside OUT, rename into place only on success.

Two runs writing the same OUT: an exclusive ``flock`` on ``.OUT.lock`` (released by the kernel if a run dies) lets
only one build at a time, and the final rename re-checks that OUT did not appear meanwhile, so a finished package
is never replaced without ``--overwrite``. ``--overwrite`` replaces only a directory that tts-awq wrote for the
same stage (its ``provenance.json`` says so), never the working directory, the home directory or a root.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tts_awq.errors import UserError

PROVENANCE_NAME = "provenance.json"


def _stage_of(path: Path) -> str | None:
    try:
        data = json.loads((path / PROVENANCE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or (data.get("tool") or {}).get("name") != "tts-awq":
        return None
    stage = data.get("stage")
    return stage if isinstance(stage, str) else None


def check_overwrite_target(out: Path, stage: str) -> None:
    """Refuse to ``--overwrite`` anything but a tts-awq output of ``stage`` (or an empty directory)."""
    real = out.resolve()
    protected = {Path.cwd().resolve(), Path.home().resolve(), Path(real.anchor)}
    if real in protected or real in Path.cwd().resolve().parents:
        raise UserError(f"{out}: refusing to --overwrite the working, home or root directory (or a parent of the "
                        "working directory); choose a dedicated OUT")
    if not real.is_dir():
        raise UserError(f"{out}: exists and is not a directory; remove it or choose another OUT")
    if not any(real.iterdir()):
        return  # an empty directory holds nothing to lose
    found = _stage_of(real)
    if found != stage:
        what = f"a tts-awq {found} output" if found else "not a tts-awq output (no tts-awq provenance.json)"
        raise UserError(f"{out}: --overwrite only replaces a tts-awq {stage} output, and this is {what}; "
                        "remove it yourself or choose another OUT")


def check_output_dir(out: Path, overwrite: bool, sources: tuple[Path, ...] = (), stage: str | None = None) -> Path:
    out = Path(out).absolute()
    real_out = out.resolve()
    for src in sources:
        src = Path(src).resolve()
        if real_out == src or src in real_out.parents or real_out in src.parents:
            raise UserError(f"{out}: output must not be inside or contain the source {src}; choose another OUT")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise UserError(f"{out}: already exists; pass --overwrite to replace it or choose another OUT")
        if stage is not None:
            check_overwrite_target(out, stage)
    if out.parent.exists() and not out.parent.is_dir():
        raise UserError(f"{out.parent}: is a file, so OUT cannot be created inside it; choose another OUT")
    return out


@contextmanager
def _exclusive_lock(out: Path) -> Iterator[None]:
    import fcntl

    lock_path = out.parent / f".{out.name}.lock"
    handle = open(lock_path, "a+", encoding="ascii")  # noqa: SIM115 - held for the whole build
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserError(f"{out}: is being written by another run (pid {holder}); wait for it to finish or "
                            "choose another OUT") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()
        handle.close()


def partial_dir(out: Path, key: str, resume: bool) -> Path:
    """The deterministic build directory ``.OUT.partial-<key>`` of a resumable run (created unless resuming)."""
    tmp = out.parent / f".{out.name}.partial-{key}"
    prefix = f".{out.name}.partial-"
    others = sorted(p for p in out.parent.iterdir() if p.name.startswith(prefix) and p != tmp)
    if others:
        raise UserError(f"{others[0]}: a stale partial run of this OUT with other sources or options; remove it "
                        "(rm -r) and run again")
    if tmp.exists():
        if not resume:
            raise UserError(f"{tmp}: a stale partial run of this same command (killed?); rerun with --resume to "
                            "continue after its last finished layer, or remove it")
        return tmp
    tmp.mkdir(mode=0o700)
    return tmp


@contextmanager
def atomic_output_dir(out: Path, overwrite: bool = False, sources: tuple[Path, ...] = (),
                      stage: str | None = None, partial_key: str | None = None,
                      resume: bool = False) -> Iterator[Path]:
    """Yield a temp dir; on success it replaces ``out``; on any error it is removed and ``out`` is untouched.

    ``stage`` (the writing command's provenance stage) limits ``overwrite`` to outputs of that stage. With
    ``partial_key`` the temp dir is ``.OUT.partial-<key>`` (see :func:`partial_dir`): only a SIGKILL (or an error
    whose ``keep_partial`` attribute is true: a resume state refused before anything was added) leaves it, and
    ``resume=True`` reuses it."""
    out = check_output_dir(out, overwrite, sources, stage)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(out):
        existed = out.exists()
        if existed and not overwrite:  # appeared between the check and the lock
            raise UserError(f"{out}: appeared while this run started; pass --overwrite or choose another OUT")
        if partial_key is None:
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        else:
            tmp = partial_dir(out, partial_key, resume)
        umask = os.umask(0)
        os.umask(umask)
        try:
            yield tmp
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the output is a normal directory
            if out.exists():
                if not overwrite or not existed:
                    raise UserError(f"{out}: appeared while this run was writing (another run finished first); "
                                    "nothing was replaced; pass --overwrite to replace it")
                trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.replace(out, trash / "old")
                os.replace(tmp, out)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException as exc:
            if not (partial_key is not None and getattr(exc, "keep_partial", False)):
                shutil.rmtree(tmp, ignore_errors=True)  # a refused resume state is the user's to inspect or remove
            raise
