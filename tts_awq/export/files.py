"""What every safetensors export shares: the package's other files copied unchanged, and weights written through
the checkpoint layer's streaming writer, one tensor at a time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from tts_awq.checkpoint import ShardedWriter, copy_tree
from tts_awq.checkpoint.store import WEIGHTS_NAME
from tts_awq.provenance import PROVENANCE_NAME
from tts_awq.publish.package import VALIDATION_DIR
from tts_awq.quantize.search_state import SEARCH_STATE_NAME

#: Package files an export never carries: its own provenance and validation are written by the stage, the AWQ
#: search state only means something to tts-awq, and the weights are rewritten.
NOT_COPIED = (PROVENANCE_NAME, SEARCH_STATE_NAME, "README.md")

if TYPE_CHECKING:
    from tts_awq.export.source import ExportSource, Int4Weights

Plan = dict[str, tuple[torch.dtype, tuple[int, ...]]]


def _is_weights_file(rel: str) -> bool:
    top = "/" not in rel
    return top and (rel.endswith(".safetensors") or rel == WEIGHTS_NAME.replace(".safetensors", ".safetensors.index.json"))


def copy_companions(root: Path, out: Path, also_skip: tuple[str, ...] = ()) -> list[str]:
    """Copy every file of the package except its weights, provenance, validation, search state and ``also_skip``."""
    def skip(rel: str) -> bool:
        return (rel in NOT_COPIED or rel in also_skip or rel.startswith(f"{VALIDATION_DIR}/")
                or _is_weights_file(rel))

    return copy_tree(root, out, skip=skip)


def write_weights(out: Path, plan: Plan, produce: Callable[[str], torch.Tensor], what: str,
                  max_shard_bytes: int | None = None) -> list[str]:
    """Write ``plan`` with tensors from ``produce(name)``, one at a time (peak memory: one tensor)."""
    kwargs = {} if max_shard_bytes is None else {"max_shard_bytes": max_shard_bytes}
    writer = ShardedWriter(out, plan, metadata={"format": "pt"}, **kwargs)
    for name in tqdm(sorted(plan), desc=what, unit="tensor", leave=False):
        writer.write(name, produce(name))
    return writer.close()


def is_linear_weight(name: str, shape: tuple[int, ...]) -> bool:
    """A dense nn.Linear weight of a Qwen3-TTS checkpoint: 2-D ``.weight`` that is not an embedding table."""
    return len(shape) == 2 and name.endswith(".weight") and "embedding" not in name


def module_of(tensor_name: str) -> str:
    return tensor_name.rsplit(".", 1)[0]


def tensor_producer(source: ExportSource, convert: Callable[[Int4Weights], dict[str, torch.Tensor]],
                    overrides: dict[str, torch.Tensor] | None = None) -> Callable[[str], torch.Tensor]:
    """``name -> tensor`` for :func:`write_weights`: ``MODULE.SUFFIX`` of an INT4 linear comes from
    ``convert(weights)[SUFFIX]`` (one linear converted at a time: the writer asks for a module's tensors in a row),
    any other name from ``overrides`` or the package unchanged."""
    cache: dict[str, dict[str, torch.Tensor]] = {}
    int4 = set(source.int4)

    def produce(name: str) -> torch.Tensor:
        if overrides and name in overrides:
            return overrides[name]
        module, _, suffix = name.rpartition(".")
        if module not in int4:
            return source.store.get(name)
        if module not in cache:
            cache.clear()
            cache[module] = convert(source.weights(module))
        return cache[module][suffix]

    return produce
