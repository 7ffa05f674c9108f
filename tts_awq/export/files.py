"""What every safetensors export shares: the package's other files copied unchanged, and weights written through
the checkpoint layer's streaming writer, one tensor at a time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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
