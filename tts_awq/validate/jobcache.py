"""The job-record cache under ``OUT/validation/jobs/``: what makes validate-awq resumable and shardable.

One file per batch, ``<batch key>.safetensors``: the records' arrays as tensors, the records' JSON in the
safetensors metadata. The key hashes package, reference, eval file, settings and the batch's jobs
(:func:`tts_awq.validate.plan.batch_key`), so a rerun with the same inputs reuses every finished batch and a
changed input never reuses a stale one. A worker *claims* a batch with an exclusive ``flock`` on
``<key>.claim`` while it computes it; a second worker (another process, or ``accelerate launch`` rank) skips
claimed batches, and a claim left by a killed worker is free again because the kernel drops its lock.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tts_awq.validate.collect import JobRecord

JOBS_DIR = "jobs"
_META_KEY = "tts_awq_records"


def record_path(cache: Path, key: str) -> Path:
    return cache / f"{key}.safetensors"


def save_records(cache: Path, key: str, records: list[JobRecord]) -> None:
    """Write a batch's records atomically (temp file + rename)."""
    cache.mkdir(parents=True, exist_ok=True)
    tensors = {f"{i}/{name}": torch.from_numpy(np.ascontiguousarray(array))
               for i, r in enumerate(records) for name, array in r.arrays.items()}
    meta = json.dumps([{"number": r.number, "data": r.data} for r in records], ensure_ascii=False)
    tmp = cache / f".{key}.tmp"
    save_file(tensors, str(tmp), metadata={_META_KEY: meta})
    os.replace(tmp, record_path(cache, key))


def load_records(cache: Path, key: str) -> list[JobRecord] | None:
    """The cached records of a batch, or None when absent or unreadable (then it is recomputed)."""
    path = record_path(cache, key)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            entries = json.loads((handle.metadata() or {})[_META_KEY])
            arrays: dict[int, dict[str, np.ndarray]] = {}
            for name in handle.keys():
                index, _, field = name.partition("/")
                arrays.setdefault(int(index), {})[field] = handle.get_tensor(name).numpy()
    except (OSError, ValueError, KeyError, json.JSONDecodeError, RuntimeError):
        return None
    return [JobRecord(number=e["number"], data=e["data"], arrays=arrays.get(i, {})) for i, e in enumerate(entries)]


@contextmanager
def claim(cache: Path, key: str) -> Iterator[bool]:
    """Yields True when this process holds the batch (compute it), False when another live worker does."""
    cache.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache / f"{key}.claim", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def clear_claims(cache: Path) -> None:
    for path in cache.glob("*.claim"):
        path.unlink(missing_ok=True)
