"""Applying searched AWQ results to a decoder layer: scale folding and weight clipping.

Every function rebinds ``.data`` (never writes into an existing tensor), so a search's source tensors and any
tensor a caller still holds stay intact. The same functions serve the quantize pass (with the captured Linear
inputs) and :mod:`tts_awq.quantize.requantize` (without them), which is what keeps the two byte-identical.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from tts_awq.quantize.decoder import Activations
from tts_awq.quantize.scale_groups import LINEAR_INPUT, ScaleGroup


def fold_scales(layer: nn.Module, group: ScaleGroup, scales: torch.Tensor) -> None:
    """Divide the output of ``group.prev`` (a norm or a Linear, with its bias) by ``scales`` and multiply the
    input columns of the group's Linears by them: the layer computes the same function."""
    s = scales.to(next(layer.parameters()).device)
    prev = layer.get_submodule(group.prev)
    if isinstance(prev, nn.Linear):
        prev.weight.data = prev.weight.data / s[:, None]
        if prev.bias is not None:
            prev.bias.data = prev.bias.data / s
    else:
        prev.weight.data = prev.weight.data / s
    for name in group.linears:
        module = layer.get_submodule(name)
        module.weight.data = module.weight.data * s[None, :]


def apply_scales(layer: nn.Module, searched: Iterable[tuple[ScaleGroup, torch.Tensor]],
                 inputs: dict[str, Activations] | None = None) -> None:
    """Fold every group's scales into ``layer``; with ``inputs`` (captured Linear inputs keyed as
    :data:`LINEAR_INPUT` says), also divide each group's captured input by its scales, so later searches see
    what the scaled Linears will receive."""
    for group, scales in searched:
        fold_scales(layer, group, scales)
        if inputs is not None:
            key = LINEAR_INPUT[group.input_of]
            s = scales.to(inputs[key][0].device) if inputs[key] else scales
            inputs[key] = [x / s for x in inputs[key]]


def clip_weight(weight: torch.Tensor, max_val: torch.Tensor) -> torch.Tensor:
    """``weight`` clamped per output channel and group to ``±max_val`` (``[out, groups]`` or ``[out, groups, 1]``)."""
    out_features, in_features = weight.shape
    groups = max_val.shape[1]
    bound = max_val.reshape(out_features, groups, 1).to(weight.device)
    w = weight.reshape(out_features, groups, -1)
    return torch.clamp(w, -bound, bound).reshape(out_features, in_features)


def apply_clips(layer: nn.Module, clips: dict[str, torch.Tensor]) -> dict[str, float]:
    """Clamp each named Linear of ``layer`` to its clip maxima; returns the fraction of weights changed per
    Linear."""
    changed: dict[str, float] = {}
    for name, max_val in clips.items():
        module = layer.get_submodule(name)
        clipped = clip_weight(module.weight.data, max_val)
        changed[name] = float((clipped != module.weight.data).float().mean())
        module.weight.data = clipped
    return changed
