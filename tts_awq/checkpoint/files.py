"""File walking, hashing and JSON helpers shared by every stage."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tts_awq.checkpoint.confine import is_pickle, walk_files
from tts_awq.errors import UserError

log = logging.getLogger(__name__)
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(root: Path) -> list[str]:
    """Every regular file under ``root`` as a sorted list of POSIX relative paths (hidden cache dirs skipped).

    A link that resolves outside ``root`` (the HF cache's ``blobs/`` counts as inside) is refused with one line:
    see :mod:`tts_awq.checkpoint.confine`."""
    return walk_files(Path(root))


def hash_tree(root: Path, files: Iterable[str] | None = None) -> dict[str, str]:
    """sha256 of each file (relative path -> hex digest)."""
    root = Path(root)
    return {rel: sha256_file(root / rel) for rel in (sorted(files) if files is not None else list_files(root))}


def copy_tree(src: Path, dst: Path, skip: Callable[[str], bool] = lambda rel: False) -> list[str]:
    """Copy every file of ``src`` into ``dst`` byte for byte (a link inside ``src`` becomes a regular file), except
    those ``skip(rel)`` rejects and pickle files (logged: an output carries no code that loading could run)."""
    copied = []
    for rel in list_files(src):
        if skip(rel):
            continue
        if is_pickle(Path(src) / rel):
            log.warning("not copied: %s (a pickle file; outputs carry safetensors and plain files only)", rel)
            continue
        target = Path(dst) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(src) / rel, target)
        copied.append(rel)
    return copied


def read_json(path: Path, what: str = "file") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found; point the command at a checkpoint directory that has it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc.__class__.__name__}: {exc}); restore the original file") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object at the top level; restore the original file")
    return data


def write_json(path: Path, data: Any) -> None:
    """Deterministic JSON (sorted keys are NOT forced, so edited configs keep their key order)."""
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
