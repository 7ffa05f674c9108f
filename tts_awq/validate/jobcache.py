"""The job-record cache under ``OUT/validation/jobs/``: what makes validate-awq resumable and shardable.

One file per batch, ``<batch key>.safetensors``: a checksummed record (:mod:`tts_awq.checkpoint.record`) holding
the records' arrays as tensors and the records' JSON, sealed with the batch key and the tool version. The key
hashes package, reference, eval file, settings and the batch's jobs (:func:`tts_awq.validate.plan.batch_key`), so
a rerun with the same inputs reuses every finished batch and a changed input never reuses a stale one; a torn,
altered or foreign record is recomputed (one log line). A worker *claims* a batch with an exclusive ``flock`` on
``<key>.claim`` while it computes it (and removes the claim file when done, whatever happened); a second worker
(another process, or ``accelerate launch`` rank) skips claimed batches, and a claim left by a killed worker is
free again because the kernel drops its lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from tts_awq.checkpoint.record import RecordError, read_record, write_record
from tts_awq.validate.collect import JobRecord

log = logging.getLogger(__name__)
JOBS_DIR = "jobs"


def record_path(cache: Path, key: str) -> Path:
    return cache / f"{key}.safetensors"


def save_records(cache: Path, key: str, records: list[JobRecord]) -> None:
    """Write a batch's records atomically (temp file + rename; nothing is left behind on a full disk)."""
    cache.mkdir(parents=True, exist_ok=True)
    tensors = {f"{i}/{name}": torch.from_numpy(np.ascontiguousarray(array))
               for i, r in enumerate(records) for name, array in r.arrays.items()}
    write_record(record_path(cache, key), tensors,
                 {"batch": key, "records": [{"number": r.number, "data": r.data} for r in records]})


def load_records(cache: Path, key: str, quiet: bool = False) -> list[JobRecord] | None:
    """The cached records of a batch, or None when absent or not trustworthy (then it is recomputed; a torn,
    altered or foreign record is logged unless ``quiet``)."""
    try:
        tensors, fields = read_record(record_path(cache, key), {"batch": key})
    except RecordError as exc:
        if exc.reason != "missing" and not quiet:
            log.warning("%s; recomputing this batch", exc)
        return None
    arrays: dict[int, dict[str, np.ndarray]] = {}
    for name, tensor in tensors.items():
        index, _, field = name.partition("/")
        arrays.setdefault(int(index), {})[field] = tensor.numpy()
    return [JobRecord(number=e["number"], data=e["data"], arrays=arrays.get(i, {}))
            for i, e in enumerate(fields["records"])]


@contextmanager
def claim(cache: Path, key: str) -> Iterator[bool]:
    """Yields True when this process holds the batch (compute it), False when another live worker does."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{key}.claim"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            path.unlink(missing_ok=True)  # while still held: a waiting worker re-checks the record, then claims anew
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def clear_claims(cache: Path) -> None:
    for path in cache.glob("*.claim"):
        path.unlink(missing_ok=True)
