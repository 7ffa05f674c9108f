"""compressed-tensors ``pack-quantized`` W4A16 (asymmetric, group): the format vLLM loads natively.

Per INT4 linear (names as in the package, ``talker.model.layers.N.*``; vLLM-Omni maps ``talker.model.layers.`` to
``model.layers.`` on load, and its ``ignore`` list with the same mapper):

* ``weight_packed`` int32 ``[out, in/8]``: q (0..15, i.e. compressed-tensors' signed value + 8), element j of a word
  at bits 4j;
* ``weight_zero_point`` int32 ``[out/8, in/g]``: z (0..15) packed the same way along the OUTPUT dimension;
* ``weight_scale`` float16 ``[out, in/g]`` (AWQ's scales, bit for bit);
* ``weight_shape`` int64 ``[2]`` = ``[out, in]``.

``w = s * (q_signed - z_signed) = s * (q - z)``: the integers and scales are AWQ's, so the export is lossless
(vLLM casts ``weight_scale`` to its serving dtype: fp16 keeps it exact, bf16 rounds it).
vLLM fuses q/k/v and gate/up into one module each, which is either INT4 or dense: a package that keeps only part
of such a group dense cannot be represented and is refused (``quantize-talker --keep-bf16-fused`` avoids it).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from tts_awq.checkpoint import TensorStore, read_json, write_json
from tts_awq.errors import UserError
from tts_awq.export.check import LinearChecks
from tts_awq.export.files import copy_companions, is_linear_weight, module_of, tensor_producer, write_weights
from tts_awq.export.nibbles import pack_last_dim, unpack_last_dim
from tts_awq.export.registry import ExportResult, register
from tts_awq.export.source import ExportSource, Int4Weights
from tts_awq.quantize.keep import split_fused_groups


def quantization_config(source: ExportSource, ignore: list[str]) -> dict[str, Any]:
    try:
        version = metadata.version("compressed-tensors")
    except metadata.PackageNotFoundError:
        version = None
    weights = {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group",
               "group_size": source.group_size, "dynamic": False, "actorder": None, "observer": None,
               "observer_kwargs": {}, "block_structure": None}
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                      "output_activations": None, "format": "pack-quantized"}},
        "ignore": ignore,
        "kv_cache_scheme": None,
        "sparsity_config": {},
        "global_compression_ratio": None,
        **({"version": version} if version else {}),
    }


def _require_fused_groups_whole(source: ExportSource) -> None:
    every = source.int4 + source.kept_dense
    split = split_fused_groups(source.kept_dense, every)
    if split:
        raise UserError(f"{source.root}: keeps part of a vLLM fused group dense ({', '.join(split[:3])}"
                        f"{' ...' if len(split) > 3 else ''}); vLLM runs q/k/v and gate/up as one module, all INT4 or "
                        "all dense, so compressed-tensors cannot represent this mix; re-run quantize-talker with "
                        "--keep-bf16-fused, or export --to mlx / gguf")


def packed_tensors(w: Int4Weights) -> dict[str, torch.Tensor]:
    """The four compressed-tensors tensors of one :class:`~tts_awq.export.source.Int4Weights`."""
    return {
        "weight_packed": pack_last_dim(w.q),
        "weight_scale": w.scales.to(torch.float16),
        "weight_zero_point": pack_last_dim(w.zeros.t().contiguous()).t().contiguous(),
        "weight_shape": torch.tensor([w.out_features, w.in_features], dtype=torch.int64),
    }


def read_back(store: TensorStore, name: str, group_size: int) -> torch.Tensor:
    """Independent reader: dense float32 weight of ``name`` from the written file."""
    out, inp = (int(v) for v in store.get(f"{name}.weight_shape").tolist())
    q = unpack_last_dim(store.get(f"{name}.weight_packed"))[:, :inp].float()
    z = unpack_last_dim(store.get(f"{name}.weight_zero_point").t().contiguous()).t()[:out].float()
    s = store.get(f"{name}.weight_scale").float()
    return (q - z.repeat_interleave(group_size, dim=1)) * s.repeat_interleave(group_size, dim=1)


@register("compressed-tensors", runtime="vLLM / vLLM-Omni", library_name="vllm")
def export_compressed_tensors(source: ExportSource, out: Path) -> ExportResult:
    """compressed-tensors pack-quantized W4A16 (asymmetric, group): vLLM's native INT4 format, lossless."""
    _require_fused_groups_whole(source)
    for name in source.int4:
        if source.store.info(f"{name}.scales").shape[1] % 8:
            raise UserError(f"{source.root}: {name} has {source.store.info(f'{name}.scales').shape[1]} output "
                            "features, not a multiple of 8, which compressed-tensors' zero-point packing needs")
    plan: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for name in source.dense_tensor_names():
        info = source.store.info(name)
        plan[name] = (info.torch_dtype, tuple(info.shape))
    for name in source.int4:
        out_features, in_features = (int(v) for v in reversed(source.store.info(f"{name}.qweight").shape))
        out_features *= 8
        groups = in_features // source.group_size
        plan[f"{name}.weight_packed"] = (torch.int32, (out_features, in_features // 8))
        plan[f"{name}.weight_scale"] = (torch.float16, (out_features, groups))
        plan[f"{name}.weight_zero_point"] = (torch.int32, (out_features // 8, groups))
        plan[f"{name}.weight_shape"] = (torch.int64, (2,))
    write_weights(out, plan, tensor_producer(source, packed_tensors), "writing compressed-tensors")
    copy_companions(source.root, out)
    ignore = sorted({module_of(n) for n in source.dense_tensor_names()
                     if is_linear_weight(n, tuple(source.store.info(n).shape))})
    config = read_json(source.root / "config.json", "config.json")
    config["quantization_config"] = quantization_config(source, ignore)
    write_json(out / "config.json", config)

    written = TensorStore(out)
    checks = LinearChecks("exact: the same integers and float16 scales")
    checks.run(source, lambda name: (read_back(written, name, source.group_size), 0.0))
    return ExportResult(check=checks.summary(), details={"ignore": len(ignore), "weight_scale_dtype": "float16"},
                        notes=["vLLM casts weight_scale to the serving dtype: --dtype float16 keeps AWQ's scales "
                               "exact, bfloat16 rounds them to 8 mantissa bits"])
