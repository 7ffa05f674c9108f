"""Write the INT4 package: original files verbatim, talker linears as AWQ GEMM, config.json edited as JSON."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import torch

from tts_awq.checkpoint.files import copy_tree
from tts_awq.checkpoint.layout import DECODER_LINEARS, Layout
from tts_awq.checkpoint.store import INDEX_NAME, WEIGHTS_NAME, TensorStore
from tts_awq.checkpoint.writer import ShardedWriter
from tts_awq.provenance import PROVENANCE_NAME
from tts_awq.quantize.engine import AwqOptions, LayerResult, packed_names
from tts_awq.quantize.search_state import SEARCH_STATE_NAME, source_sha256, state_metadata, write_search_state

WEIGHT_FILES = (WEIGHTS_NAME, INDEX_NAME, SEARCH_STATE_NAME)


def is_weight_file(rel: str, store: TensorStore) -> bool:
    return rel in store.files or rel in WEIGHT_FILES or rel == PROVENANCE_NAME


def decoder_linear_names(layout: Layout) -> list[str]:
    """Every decoder Linear of the stack, in layer order."""
    spec = layout.decoder
    return [name for index in range(spec.num_layers) for name in spec.linear_names(index)]


def quantized_linear_names(layout: Layout, keep: Collection[str] = ()) -> list[str]:
    return [name for name in decoder_linear_names(layout) if name not in keep]


def output_plan(store: TensorStore, layout: Layout, group_size: int,
                keep: Collection[str] = ()) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Every output tensor's dtype and shape, known before any layer is quantized (``keep``: Linears whose
    ``.weight`` is stored dense in its source dtype)."""
    quantized = set(quantized_linear_names(layout, keep))
    plan: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for name, info in store.infos().items():
        linear = name.removesuffix(".weight")
        if linear in quantized and name.endswith(".weight"):
            out_features, in_features = info.shape
            n_qweight, n_qzeros, n_scales = packed_names(linear)
            groups = in_features // group_size
            plan[n_qweight] = (torch.int32, (in_features, out_features // 8))
            plan[n_qzeros] = (torch.int32, (groups, out_features // 8))
            plan[n_scales] = (torch.float16, (groups, out_features))
        else:
            plan[name] = (info.torch_dtype, info.shape)
    return plan


def modules_to_not_convert(layout: Layout, keep: Collection[str] = ()) -> list[str]:
    """The layout's BF16 parts (matched as substrings), then the full name of every kept decoder Linear."""
    return layout.modules_to_not_convert + [n for n in decoder_linear_names(layout) if n in keep]


def quantization_config(layout: Layout, options: AwqOptions, keep: Collection[str] = ()) -> dict[str, Any]:
    return {
        "quant_method": "awq",
        "bits": options.bits,
        "group_size": options.group_size,
        "zero_point": True,
        "version": "gemm",
        "modules_to_not_convert": modules_to_not_convert(layout, keep),
    }


def edit_config(path: Path, layout: Layout, options: AwqOptions, keep: Collection[str] = ()) -> None:
    """Add ``quantization_config`` by editing the JSON (never regenerated: keeps transformers_version etc.)."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config["quantization_config"] = quantization_config(layout, options, keep)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class PackageWriter:
    """Streams a package: verbatim files first (on creation), then, from :meth:`start_weights`, the tensors
    outside the decoder layers and each quantized layer as it arrives;
    ``search_state.safetensors`` (every layer's searched scales and clip maxima) at the end."""

    def __init__(self, out: Path, store: TensorStore, layout: Layout, options: AwqOptions,
                 max_shard_bytes: int, source_files_sha256: dict[str, str]) -> None:
        self.out = out
        self.sources = source_sha256(source_files_sha256, store.files)  # sealed into the search state
        self.store = store
        self.layout = layout
        self.options = options
        self.max_shard_bytes = max_shard_bytes
        self.copied = copy_tree(layout.root, out, skip=lambda rel: is_weight_file(rel, store))
        self.keep_bf16: list[str] = []
        self.kept: list[str] = []
        self.search_state: dict[int, dict[str, torch.Tensor]] = {}
        self.search_state_info: dict[str, Any] = {}

    def start_weights(self, keep_bf16: Collection[str] = ()) -> None:
        """Plan and open the weight files once the dense-kept Linears are known (after calibration, for a
        ``--keep-bf16-budget`` scan)."""
        self.keep_bf16 = [n for n in decoder_linear_names(self.layout) if n in set(keep_bf16)]
        self.plan = output_plan(self.store, self.layout, self.options.group_size, self.keep_bf16)
        self.writer = ShardedWriter(self.out, self.plan, metadata={"format": "pt"},
                                    max_shard_bytes=self.max_shard_bytes)

    def write_kept_tensors(self) -> None:
        prefix = self.layout.decoder.layer_prefix
        for name in self.store.keys():
            if not name.startswith(prefix):
                self.writer.write(name, self.store.get(name))
                self.kept.append(name)

    def write_layer(self, result: LayerResult) -> None:
        prefix = f"{self.layout.decoder.layer_prefix}{result.index}."
        for rel, tensor in result.tensors.items():
            self.writer.write(prefix + rel, tensor)
        self.search_state[result.index] = result.state

    def finish(self) -> list[str]:
        files = self.writer.close()
        edit_config(self.out / "config.json", self.layout, self.options, self.keep_bf16)
        spec = self.layout.decoder
        metadata = state_metadata(self.options, spec.layer_prefix, spec.num_layers, self.keep_bf16, self.sources)
        self.search_state_info = write_search_state(self.out, spec.layer_prefix, self.search_state, metadata)
        return files


def module_census(layout: Layout, kept_tensors: Iterable[str], keep_bf16: Collection[str] = ()) -> dict[str, Any]:
    quantized = quantized_linear_names(layout, keep_bf16)
    kept_modules = sorted({name.rsplit(".", 1)[0] for name in kept_tensors} | set(keep_bf16))
    return {
        "quantized_modules": quantized,
        "quantized_count": len(quantized),
        "quantized_per_layer": list(DECODER_LINEARS),
        "kept_modules": kept_modules,
        "kept_count": len(kept_modules),
        "kept_bf16_linears": [n for n in decoder_linear_names(layout) if n in keep_bf16],
        "modules_to_not_convert": modules_to_not_convert(layout, keep_bf16),
    }
