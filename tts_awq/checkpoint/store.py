"""Lazy, validated access to the tensors of a checkpoint directory (single file or sharded with an index)."""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from tts_awq.checkpoint.confine import confined
from tts_awq.errors import UserError

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

DTYPE_FROM_SAFETENSORS = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "U32": torch.uint32,  # MLX packs its 4-bit weights in uint32
    "BOOL": torch.bool,
}
SAFETENSORS_FROM_DTYPE = {v: k for k, v in DTYPE_FROM_SAFETENSORS.items()}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    offset: int = 0  # absolute byte offset of the data in the file
    nbytes: int = 0

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPE_FROM_SAFETENSORS[self.dtype]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header; a truncated or corrupt file raises a one-line UserError."""
    fix = "re-download or re-create it"
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise UserError(f"{path}: truncated safetensors file (no header); {fix}")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, 100 << 20):
            raise UserError(f"{path}: corrupt or truncated safetensors header; {fix}")
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: corrupt safetensors header; {fix}") from exc
    metadata = header.pop("__metadata__", None) or {}
    infos: dict[str, TensorInfo] = {}
    data_end = 0
    for name, entry in header.items():
        try:
            begin, end = (int(v) for v in entry["data_offsets"])
            dtype, shape = entry["dtype"], [int(d) for d in entry["shape"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path}: corrupt safetensors header entry {name!r}; {fix}") from exc
        if dtype not in DTYPE_FROM_SAFETENSORS:
            raise UserError(f"{path}: tensor {name} has dtype {dtype}, which tts-awq does not read; convert it")
        numel = 1
        for d in shape:
            numel *= d
        if not 0 <= begin <= end or end - begin != numel * DTYPE_FROM_SAFETENSORS[dtype].itemsize:
            raise UserError(f"{path}: tensor {name} has inconsistent offsets in the header; {fix}")
        data_end = max(data_end, end)
        infos[name] = TensorInfo(name=name, file=path.name, dtype=entry["dtype"], shape=tuple(entry["shape"]),
                                 offset=8 + header_len + begin, nbytes=end - begin)
    if 8 + header_len + data_end != size:
        raise UserError(
            f"{path}: truncated or padded safetensors file ({size} bytes, header expects {8 + header_len + data_end}); {fix}"
        )
    return infos, metadata


if sys.byteorder != "little":  # safetensors data is little-endian; frombuffer reads native order
    raise ImportError("tts-awq reads safetensors with native byte order and needs a little-endian machine")


class TensorStore:
    """The weights of one checkpoint directory, read a tensor at a time straight from the safetensors files."""

    def __init__(self, root: Path, weights_name: str = WEIGHTS_NAME) -> None:
        self.root = Path(root)
        self._infos: dict[str, TensorInfo] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        index = self.root / weights_name.replace(".safetensors", ".safetensors.index.json")
        single = self.root / weights_name
        if single.is_file():
            files = [confined(self.root, single.name, "weights file").name]
        elif index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise UserError(f"{index}: not a valid safetensors index (needs 'weight_map'); restore it") from exc
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise UserError(f"{index}: 'weight_map' must map tensor names to shard file names; restore it")
            files = sorted(set(weight_map.values()))
            for rel in files:  # an entry may not leave the checkpoint (absolute, .., or through a link)
                confined(self.root, rel, f"shard {rel!r} listed in {index.name}")
            self._weight_map = dict(weight_map)
        else:
            raise UserError(f"{single}: no {weights_name} (or sharded index) in the checkpoint; point at a full checkpoint")
        for rel in files:
            path = self.root / rel
            if not path.is_file():
                raise UserError(f"{path}: shard listed in the index is missing; re-download the checkpoint")
            infos, meta = read_safetensors_header(path)
            self.metadata[rel] = meta
            for name, info in infos.items():
                self._infos[name] = TensorInfo(name=name, file=rel, dtype=info.dtype, shape=info.shape,
                                               offset=info.offset, nbytes=info.nbytes)
        self.files = files
        for name, rel in getattr(self, "_weight_map", {}).items():
            if name not in self._infos or self._infos[name].file != rel:
                raise UserError(f"{index}: lists {name} in {rel}, but that shard does not hold it; re-download")

    def keys(self) -> list[str]:
        return sorted(self._infos)

    def __contains__(self, name: str) -> bool:
        return name in self._infos

    def info(self, name: str) -> TensorInfo:
        return self._infos[name]

    def infos(self) -> dict[str, TensorInfo]:
        return dict(self._infos)

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor with plain file I/O (no mmap), so resident memory is only what the caller keeps."""
        if name not in self._infos:
            raise KeyError(f"{name} not in {self.root}")
        info = self._infos[name]
        buffer = bytearray(info.nbytes)
        with open(self.root / info.file, "rb") as handle:
            handle.seek(info.offset)
            if handle.readinto(buffer) != info.nbytes:
                raise UserError(f"{self.root / info.file}: truncated while reading {name}; re-download it")
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=info.torch_dtype)
        return torch.frombuffer(buffer, dtype=info.torch_dtype).reshape(info.shape)

    def get_mapped(self, name: str) -> torch.Tensor:
        """The tensor as a private copy-on-write memory map of its bytes in the file: nothing is read until a
        page is touched (a lookup table such as the text embedding stays mostly on disk / in the page cache)."""
        import numpy as np

        info = self._infos[name]
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=info.torch_dtype)
        path = self.root / info.file
        if path.stat().st_size < info.offset + info.nbytes:
            raise UserError(f"{path}: truncated while reading {name}; re-download it")
        raw = np.memmap(path, dtype=np.uint8, mode="c", offset=info.offset, shape=(info.nbytes,))
        return torch.from_numpy(raw).view(info.torch_dtype).reshape(info.shape)

    def get_finite(self, name: str) -> torch.Tensor:
        """:meth:`get`, refusing a floating tensor that holds NaN or Inf (it would poison every later stage)."""
        tensor = self.get(name)
        require_finite(tensor, name, self.root / self._infos[name].file)
        return tensor

    def get_prefix(self, prefix: str) -> dict[str, torch.Tensor]:
        """Every tensor whose name starts with ``prefix``, keyed by the rest of the name."""
        return {name[len(prefix) :]: self.get(name) for name in self.keys() if name.startswith(prefix)}

    def require_finite(self, prefixes: tuple[str, ...]) -> None:
        """Refuse (one line naming tensor and file) the first floating tensor under ``prefixes`` holding NaN/Inf:
        the decoder layers of a package (norms, scales, dense-kept Linears) are a few MB, so this is cheap."""
        for name in self.keys():
            if name.startswith(prefixes) and self._infos[name].torch_dtype.is_floating_point:
                self.get_finite(name)

    def close(self) -> None:
        """Nothing stays open between reads; kept for API symmetry."""


def require_finite(tensor: torch.Tensor, name: str, where: Path | str) -> None:
    """One-line :class:`UserError` naming the tensor and file if a floating ``tensor`` holds NaN or Inf."""
    if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise UserError(f"{where}: tensor {name} holds {bad} non-finite value(s) (NaN/Inf); fix or re-download "
                        "the checkpoint (nothing was written)")
