"""Streaming safetensors writer: plan every tensor's dtype and shape first, then write tensors in any order.

The header (with every offset) is written up front, so peak memory is one tensor, not one shard, and the
output is byte-identical for the same tensors regardless of the order they arrive in.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tts_awq.checkpoint.store import SAFETENSORS_FROM_DTYPE, WEIGHTS_NAME
from tts_awq.errors import UserError, naming_path

DEFAULT_MAX_SHARD_BYTES = 4 << 30


@dataclass
class _Planned:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    shard: int = 0
    offset: int = 0
    written: bool = False


@dataclass
class _Shard:
    tensors: list[_Planned] = field(default_factory=list)
    data_start: int = 0
    size: int = 0


def _nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * torch.empty((), dtype=dtype).element_size()


class ShardedWriter:
    """Write a ``model.safetensors`` (or ``model-0000i-of-0000n.safetensors`` + index) from a tensor plan.

    Example::

        writer = ShardedWriter(out_dir, {"w": (torch.bfloat16, (4, 4))})
        writer.write("w", torch.zeros(4, 4, dtype=torch.bfloat16))
        writer.close()
    """

    def __init__(
        self,
        out_dir: Path,
        plan: dict[str, tuple[torch.dtype, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
        weights_name: str = WEIGHTS_NAME,
        finite: bool = True,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.finite = finite  # refuse a floating tensor holding NaN/Inf (no writer may produce one silently)
        self._planned = {
            name: _Planned(name, dtype, tuple(shape), _nbytes(dtype, tuple(shape)))
            for name, (dtype, shape) in sorted(plan.items())
        }
        shards: list[_Shard] = [_Shard()]
        for item in self._planned.values():
            if shards[-1].tensors and shards[-1].size + item.nbytes > max_shard_bytes:
                shards.append(_Shard())
            item.shard = len(shards) - 1
            item.offset = shards[-1].size
            shards[-1].tensors.append(item)
            shards[-1].size += item.nbytes
        self._shards = shards
        stem = weights_name.removesuffix(".safetensors")
        n = len(shards)
        self.shard_names = (
            [weights_name] if n == 1 else [f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self._index_name = weights_name.replace(".safetensors", ".safetensors.index.json") if n > 1 else None
        self._files = []
        for shard, name in zip(shards, self.shard_names, strict=True):
            header: dict[str, object] = {}
            if metadata:
                header["__metadata__"] = dict(sorted(metadata.items()))
            for item in shard.tensors:
                header[item.name] = {
                    "dtype": SAFETENSORS_FROM_DTYPE[item.dtype],
                    "shape": list(item.shape),
                    "data_offsets": [item.offset, item.offset + item.nbytes],
                }
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)
            shard.data_start = 8 + len(raw)
            handle = open(self.out_dir / name, "wb")  # noqa: SIM115 - closed in close()
            with naming_path(self.out_dir / name):
                handle.write(len(raw).to_bytes(8, "little") + raw)
                handle.truncate(shard.data_start + shard.size)
            self._files.append(handle)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        item = self._planned.get(name)
        if item is None:
            raise KeyError(f"{name} was not planned")
        if item.written:
            raise ValueError(f"{name} written twice")
        if tensor.dtype != item.dtype or tuple(tensor.shape) != item.shape:
            raise ValueError(f"{name}: planned {item.dtype}{list(item.shape)}, got {tensor.dtype}{list(tensor.shape)}")
        if self.finite and tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{self.out_dir / self.shard_names[item.shard]}: tensor {name} would hold non-finite "
                            "values (NaN/Inf) computed from the inputs; nothing was written: check the inputs "
                            "(e.g. a search state's scales, blend/merge weights)")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        handle = self._files[item.shard]
        with naming_path(self.out_dir / self.shard_names[item.shard]):
            handle.seek(self._shards[item.shard].data_start + item.offset)
            handle.write(data)
        item.written = True

    def abort(self) -> None:
        """Close the files after a failure (the caller removes them); never raises."""
        for handle in self._files:
            with contextlib.suppress(OSError):
                handle.close()

    def close(self) -> list[str]:
        """Finish the files; returns the written file names (shards, then the index if any)."""
        missing = [name for name, item in self._planned.items() if not item.written]
        for handle, shard_name in zip(self._files, self.shard_names, strict=True):
            with naming_path(self.out_dir / shard_name):
                handle.close()
        if missing:
            raise ValueError(f"{len(missing)} planned tensors never written, e.g. {missing[:3]}")
        names = list(self.shard_names)
        if self._index_name:
            index = {
                "metadata": {"total_size": sum(item.nbytes for item in self._planned.values())},
                "weight_map": {name: self.shard_names[item.shard] for name, item in self._planned.items()},
            }
            (self.out_dir / self._index_name).write_text(json.dumps(index, indent=2) + "\n")
            names.append(self._index_name)
        return names
