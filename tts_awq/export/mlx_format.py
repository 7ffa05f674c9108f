"""MLX 4-bit affine, in the layout mlx-audio's ``qwen3_tts`` model loads (``mlx_audio.tts.utils.load``).

mlx-audio builds the model from ``config.json``, reads every top-level ``*.safetensors`` with the checkpoint's own
tensor names, runs the model's ``sanitize`` (which transposes 3-D conv weights it takes for PyTorch order) and
quantizes exactly the layers that have ``<path>.scales`` with ``config.json``'s ``quantization``
(``group_size``, ``bits``, ``mode``). The codec (``speech_tokenizer/``) is loaded and sanitized separately from
its own files, which are copied unchanged.

Per INT4 talker linear: ``weight`` uint32 ``[out, in/8]`` (element j of a word at bits 4j), ``scales`` and
``biases`` float32 ``[out, in/g]`` with ``scale = s`` and ``bias = -s*z``: ``scale*q + bias = s*(q - z)`` exactly
(float32 holds s*z exactly; a bfloat16 bias would be off by up to ~6 % of a step). Everything else is stored as
the package has it, conv weights in MLX order ``[out, kernel, in]``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tts_awq.checkpoint import TensorStore, read_json, write_json
from tts_awq.errors import UserError
from tts_awq.export.check import LinearChecks
from tts_awq.export.files import copy_companions, tensor_producer, write_weights
from tts_awq.export.nibbles import pack_last_dim, unpack_last_dim
from tts_awq.export.registry import ExportResult, register
from tts_awq.export.source import ExportSource, Int4Weights

MLX_GROUP_SIZES = (32, 64, 128)


def is_conv_weight(name: str, shape: tuple[int, ...]) -> bool:
    """The tensors mlx-audio's qwen3_tts ``sanitize`` treats as Conv1d weights."""
    return len(shape) == 3 and "weight" in name and ("conv" in name or "speaker_encoder.fc" in name)


def taken_for_mlx_order(shape: tuple[int, ...]) -> bool:
    """mlx-audio's shape rule (``check_array_shape_qwen3``): True when it keeps a conv weight as is (believes it is
    ``[out, kernel, in]``), False when it transposes it."""
    _, a, b = shape
    if a == 1:
        return b > 64
    if b == 1:
        return a <= 64
    return a < b


def stored_conv(name: str, torch_order: torch.Tensor) -> torch.Tensor:
    """The layout to store so that mlx-audio ends up with ``[out, kernel, in]``: MLX order when its rule keeps
    that, else PyTorch order when its rule transposes that (small tiny-model shapes); never a wrong weight."""
    mlx_order = torch_order.transpose(1, 2).contiguous()
    if taken_for_mlx_order(tuple(mlx_order.shape)):
        return mlx_order
    if not taken_for_mlx_order(tuple(torch_order.shape)):
        return torch_order
    raise UserError(f"{name}: conv weight {list(torch_order.shape)} is ambiguous to mlx-audio's layout rule (it would "
                    "transpose either order wrongly); this shape cannot be exported to mlx")


def mlx_tensors(w: Int4Weights) -> dict[str, torch.Tensor]:
    s = w.scales.float()
    return {"weight": pack_last_dim(w.q).view(torch.uint32), "scales": s, "biases": -(s * w.zeros.float())}


def read_back(store: TensorStore, name: str, group_size: int) -> torch.Tensor:
    """Independent reader: ``scales*q + biases`` from the written file, in float32."""
    q = unpack_last_dim(store.get(f"{name}.weight")).float()
    scales = store.get(f"{name}.scales").float().repeat_interleave(group_size, dim=1)
    biases = store.get(f"{name}.biases").float().repeat_interleave(group_size, dim=1)
    return scales * q + biases


@register("mlx", runtime="mlx-audio (Apple MLX)", library_name="mlx-audio")
def export_mlx(source: ExportSource, out: Path) -> ExportResult:
    """MLX 4-bit affine for mlx-audio's qwen3_tts (scale = s, bias = -s*z in float32: exact)."""
    if source.group_size not in MLX_GROUP_SIZES:
        raise UserError(f"{source.root}: group size {source.group_size} is not one MLX quantizes with "
                        f"({', '.join(map(str, MLX_GROUP_SIZES))}); quantize with --group-size 128 to export to mlx")
    plan: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    convs: dict[str, torch.Tensor] = {}
    for name in source.dense_tensor_names():
        info = source.store.info(name)
        shape = tuple(info.shape)
        if is_conv_weight(name, shape):
            convs[name] = stored_conv(name, source.store.get(name))
            shape = tuple(convs[name].shape)
        plan[name] = (info.torch_dtype, shape)
    for name in source.int4:
        in_features, packed_out = source.store.info(f"{name}.qweight").shape
        out_features, groups = packed_out * 8, in_features // source.group_size
        plan[f"{name}.weight"] = (torch.uint32, (out_features, in_features // 8))
        plan[f"{name}.scales"] = (torch.float32, (out_features, groups))
        plan[f"{name}.biases"] = (torch.float32, (out_features, groups))
    write_weights(out, plan, tensor_producer(source, mlx_tensors, convs), "writing mlx")
    copy_companions(source.root, out)
    config = read_json(source.root / "config.json", "config.json")
    config.pop("quantization_config", None)
    config["quantization"] = {"group_size": source.group_size, "bits": 4, "mode": "affine"}
    write_json(out / "config.json", config)

    written = TensorStore(out)
    checks = LinearChecks("exact: scale = s, bias = -s*z in float32")
    checks.run(source, lambda name: (read_back(written, name, source.group_size), 0.0))
    return ExportResult(check=checks.summary(),
                        details={"scales_dtype": "float32", "biases_dtype": "float32", "conv_weights": len(convs),
                                 "conv_weights_in_torch_order": sorted(n for n, t in convs.items()
                                                                       if t.shape == source.store.info(n).shape
                                                                       and t.shape[1] != t.shape[2])})
