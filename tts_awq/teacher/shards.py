"""Parquet shards of the teacher dataset, each written atomically with a checksummed sidecar.

``OUT/data/train-NNNNN-of-MMMMM.parquet`` (the names ``datasets`` maps to the train split) holds rows
``[N * rows_per_shard, ...)`` in input order. Its sidecar ``OUT/.teacher/<name>.json`` records the file's sha256 and
size and the shard's identity (package sha256, data sha256, options key, tool version, row range). A shard counts
as finished only when the parquet file matches its sidecar and the sidecar matches this run's identity; anything
else (a torn file, another run's options) is recomputed with one log line. Everything written is deterministic
(no timestamps), so a resumed or multi-process run produces the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

DATA_DIR = "data"
STATE_DIR = ".teacher"
COMPRESSION = "zstd"
_META_KEY = b"tts_awq_teacher"
TMP_MARK = ".tmp-"


@dataclass(frozen=True)
class Shard:
    index: int
    count: int
    start: int  # first row index (into the input rows)
    stop: int
    identity: str  # sha256 of the run identity and this shard's row range

    @property
    def name(self) -> str:
        return f"train-{self.index:05d}-of-{self.count:05d}.parquet"

    @property
    def rel(self) -> str:
        return f"{DATA_DIR}/{self.name}"

    @property
    def key(self) -> str:
        return self.identity[:32]


def plan_shards(n_rows: int, rows_per_shard: int, run_identity: dict[str, Any]) -> list[Shard]:
    count = max(1, -(-n_rows // rows_per_shard))
    base = json.dumps(run_identity, sort_keys=True, ensure_ascii=False)
    shards = []
    for index in range(count):
        start, stop = index * rows_per_shard, min(n_rows, (index + 1) * rows_per_shard)
        identity = hashlib.sha256(f"{base}\0{index}\0{count}\0{start}\0{stop}".encode()).hexdigest()
        shards.append(Shard(index, count, start, stop, identity))
    return shards


def sidecar_path(out: Path, shard: Shard) -> Path:
    return out / STATE_DIR / f"{shard.name}.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_shard(out: Path, shard: Shard) -> str | None:
    """None when the shard is finished and intact, else why it must be (re)computed ("missing" when absent)."""
    data, side = out / shard.rel, sidecar_path(out, shard)
    if not data.is_file() and not side.is_file():
        return "missing"
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no readable sidecar (killed while writing?)"
    if not isinstance(record, dict) or record.get("identity") != shard.identity:
        return "written by a run with other inputs or options"
    if not data.is_file() or data.stat().st_size != record.get("bytes") or _sha256(data) != record.get("sha256"):
        return "its parquet file does not match the sidecar's sha256 (torn or edited)"
    return None


def write_shard(out: Path, shard: Shard, table: pa.Table, summary: dict[str, Any]) -> dict[str, Any]:
    """Write the parquet file and then its sidecar, each to a temp name renamed into place."""
    data, side = out / shard.rel, sidecar_path(out, shard)
    data.parent.mkdir(parents=True, exist_ok=True)
    side.parent.mkdir(parents=True, exist_ok=True)
    side.unlink(missing_ok=True)  # a stale sidecar must never vouch for the new file
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: shard.identity.encode()})
    record = {"file": shard.rel, "identity": shard.identity, "rows": [shard.start, shard.stop], **summary}
    tmp = data.with_name(f".{data.name}{TMP_MARK}{os.getpid()}")
    try:
        pq.write_table(table, tmp, compression=COMPRESSION)
        os.replace(tmp, data)
        record.update(sha256=_sha256(data), bytes=data.stat().st_size)
        tmp = side.with_name(f".{side.name}{TMP_MARK}{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, side)
    finally:
        tmp.unlink(missing_ok=True)
    return record


def remove_temp_files(out: Path) -> None:
    """Temp files of writers that were killed mid-write (SIGKILL: no ``finally`` ran)."""
    for folder in (out / DATA_DIR, out / STATE_DIR):
        for path in folder.glob(f".*{TMP_MARK}*"):
            path.unlink(missing_ok=True)


def read_sidecar(out: Path, shard: Shard) -> dict[str, Any]:
    return json.loads(sidecar_path(out, shard).read_text(encoding="utf-8"))


def nested(arrays: list[np.ndarray], value_type: pa.DataType) -> pa.Array:
    """One parquet column of nested lists from per-row arrays of equal rank (any shapes): list<...<value>>."""
    ndim = arrays[0].ndim
    flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)
    values: pa.Array = pa.array(flat, type=value_type)
    for level in reversed(range(ndim)):
        lengths = np.concatenate([np.full(int(np.prod(a.shape[:level], dtype=np.int64)), a.shape[level],
                                          dtype=np.int64) for a in arrays])
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        values = pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values)
    return values


def stale_shards(out: Path, keep: set[str]) -> list[Path]:
    """Shard files (and sidecars) of this layout that the current plan does not name (an earlier, larger run)."""
    found = [p for p in (out / DATA_DIR).glob("train-*-of-*.parquet") if f"{DATA_DIR}/{p.name}" not in keep]
    found += [p for p in (out / STATE_DIR).glob("train-*-of-*.parquet.json")
              if f"{DATA_DIR}/{p.name.removesuffix('.json')}" not in keep]
    return found
