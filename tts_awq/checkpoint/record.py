"""Checksummed state records: the one format for state a later run trusts (crash-resume layers, inputs and
calibration; validate-awq's job cache). ``search_state.safetensors`` seals its tensors with the same
:func:`digest`.

A record is one safetensors file: the payload tensors, and in its metadata the payload's JSON fields (which
include the identity of what produced it: tool version, run or batch key, and so the source hashes and options
the key covers) with the sha256 of tensors + fields. It is written atomically (temp file + rename, Python file
I/O so a full disk is an ``OSError`` naming the file). :func:`read_record` tells apart a missing, a torn
(truncated, unparsable), an altered (checksum differs) and a foreign record (identity differs); the caller
decides: a cache recomputes, a resume state is refused with the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tts_awq import __version__
from tts_awq.checkpoint.store import TensorStore, read_safetensors_header
from tts_awq.checkpoint.writer import ShardedWriter
from tts_awq.errors import UserError, naming_path

RECORD_KEY = "tts_awq_record"
PRODUCER = f"tts-awq {__version__}"


class RecordError(UserError):
    """A record that must not be trusted; ``reason`` is ``missing``, ``torn``, ``altered`` or ``foreign``."""

    def __init__(self, path: Path, reason: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path, self.reason = Path(path), reason


def _normalized(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields as they read back from JSON (string keys, lists), so the digest is the same on both sides."""
    return json.loads(json.dumps(dict(fields), ensure_ascii=False))


def digest(tensors: Mapping[str, torch.Tensor], fields: Mapping[str, Any]) -> str:
    """sha256 over the fields (canonical JSON) and every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256(json.dumps(_normalized(fields), sort_keys=True, ensure_ascii=False).encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        h.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        if tensor.numel():
            h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_record(path: Path, tensors: Mapping[str, torch.Tensor], fields: Mapping[str, Any]) -> None:
    """Write ``path`` atomically: ``tensors`` (any dtype, NaN allowed) and ``fields`` sealed with their sha256."""
    path = Path(path)
    fields = {"producer": PRODUCER, **_normalized(fields)}
    seal = json.dumps({"fields": fields, "sha256": digest(tensors, fields)}, ensure_ascii=False, sort_keys=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    plan = {name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()}
    try:
        with naming_path(path):
            writer = ShardedWriter(path.parent, plan, metadata={RECORD_KEY: seal}, max_shard_bytes=1 << 62,
                                   weights_name=tmp.name, finite=False)
            try:
                for name, tensor in tensors.items():
                    writer.write(name, tensor)
            except BaseException:
                writer.abort()
                raise
            writer.close()
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_record(path: Path, expect: Mapping[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, fields)`` of a record whose checksum holds and whose fields match ``expect`` (plus this tool's
    version); otherwise :class:`RecordError` saying why."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(path, "missing", "record missing")
    try:
        _, metadata = read_safetensors_header(path)
        seal = json.loads(metadata[RECORD_KEY])
        fields, recorded = seal["fields"], seal["sha256"]
        if not isinstance(fields, dict):
            raise TypeError("fields")
        store = TensorStore(path.parent, weights_name=path.name)
        tensors = {name: store.get(name) for name in store.keys()}
    except (UserError, KeyError, TypeError, ValueError) as exc:
        raise RecordError(path, "torn", f"torn or unreadable state record ({exc.__class__.__name__})") from None
    if digest(tensors, fields) != recorded:
        raise RecordError(path, "altered", "state record altered (its sha256 does not match its content)")
    for key, want in {"producer": PRODUCER, **_normalized(expect or {})}.items():
        if fields.get(key) != want:
            raise RecordError(path, "foreign", f"state record of another run ({key} {fields.get(key)!r}, this run "
                                               f"{want!r})")
    return tensors, fields
