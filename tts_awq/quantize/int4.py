"""Asymmetric (zero-point) group-wise integer quantization as pure functions.

Conventions (AutoAWQ's): per group of ``group_size`` input columns, ``scale = (max - min).clamp(1e-5) / (2^b - 1)``,
``zero = clamp(-round(min / scale), 0, 2^b - 1)``, ``q = clamp(round(w / scale) + zero, 0, 2^b - 1)`` and
``w_hat = (q - zero) * scale``. Weights are ``[out_features, in_features]``; groups run along ``in_features``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tts_awq.errors import UserError


def check_group_size(in_features: int, group_size: int, where: str = "") -> None:
    if group_size <= 0 or in_features % group_size:
        raise UserError(
            f"{where or 'layer'}: --group-size {group_size} does not divide in_features {in_features}; "
            f"pick a divisor such as {next((g for g in (128, 64, 32, 16) if in_features % g == 0), in_features)}"
        )


@dataclass(frozen=True)
class QuantizedWeight:
    """Integer codes with their per-group parameters. ``scales`` are stored in fp16 (the AWQ GEMM format)."""

    q: torch.Tensor  # uint8 [out, in]
    zeros: torch.Tensor  # uint8 [out, in // group_size]
    scales: torch.Tensor  # float16 [out, in // group_size]
    group_size: int
    bits: int

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.q, self.zeros, self.scales, self.group_size).to(dtype)


def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    out_features, in_features = w.shape
    check_group_size(in_features, group_size)
    return w.reshape(out_features, in_features // group_size, group_size)


def group_params(w: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group (scale, zero) in float32, shape ``[out, in // group_size]``."""
    g = _grouped(w.float(), group_size)
    max_int = 2**bits - 1
    w_max = g.amax(dim=-1)
    w_min = g.amin(dim=-1)
    scales = (w_max - w_min).clamp(min=1e-5) / max_int
    zeros = (-torch.round(w_min / scales)).clamp(0, max_int)
    return scales, zeros


def fake_quantize(w: torch.Tensor, bits: int = 4, group_size: int = 128) -> torch.Tensor:
    """Quantize-dequantize in float32 (used inside the searches); returns ``w``'s dtype."""
    scales, zeros = group_params(w, bits, group_size)
    g = _grouped(w.float(), group_size)
    max_int = 2**bits - 1
    q = (torch.round(g / scales[..., None]) + zeros[..., None]).clamp(0, max_int)
    return ((q - zeros[..., None]) * scales[..., None]).reshape(w.shape).to(w.dtype)


def scaled_fake_quantize(w: torch.Tensor, scales: torch.Tensor, bits: int = 4, group_size: int = 128
                         ) -> torch.Tensor:
    """``fake_quantize(w * scales) / scales`` for a float32 ``w`` [out, in] and per-input-channel ``scales``, with
    one working buffer (the scale search calls this for every trial of every group)."""
    out_features, in_features = w.shape
    buf = torch.mul(w, scales)
    g = buf.view(out_features, in_features // group_size, group_size)
    w_min, w_max = torch.aminmax(g, dim=-1, keepdim=True)
    max_int = 2**bits - 1
    step = w_max.sub_(w_min).clamp_(min=1e-5).div_(max_int)
    zero = torch.round(w_min.div_(step)).neg_().clamp_(0, max_int)
    g.div_(step).round_().add_(zero).clamp_(0, max_int).sub_(zero).mul_(step)
    return buf.div_(scales)


def quantize(w: torch.Tensor, bits: int = 4, group_size: int = 128) -> QuantizedWeight:
    """Final quantization: scales are rounded to fp16 first and q is computed against the fp16 scales, so the
    stored package dequantizes exactly to ``(q - z) * s``."""
    if bits > 8:
        raise ValueError("bits must be <= 8")
    scales, _ = group_params(w, bits, group_size)
    scales16 = scales.to(torch.float16)
    s = scales16.float()
    g = _grouped(w.float(), group_size)
    max_int = 2**bits - 1
    zeros = (-torch.round(g.amin(dim=-1) / s)).clamp(0, max_int)  # consistent with the stored fp16 scale
    q = (torch.round(g / s[..., None]) + zeros[..., None]).clamp(0, max_int)
    return QuantizedWeight(
        q=q.reshape(w.shape).to(torch.uint8),
        zeros=zeros.to(torch.uint8),
        scales=scales16,
        group_size=group_size,
        bits=bits,
    )


def dequantize(q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(q - z) * s`` in float32, broadcasting the per-group parameters over ``group_size`` columns."""
    out_features, in_features = q.shape
    g = q.reshape(out_features, in_features // group_size, group_size).float()
    w = (g - zeros.float()[..., None]) * scales.float()[..., None]
    return w.reshape(out_features, in_features)


def rtn(w: torch.Tensor, bits: int = 4, group_size: int = 128) -> torch.Tensor:
    """Plain round-to-nearest baseline, dequantized (same arithmetic as the package)."""
    return quantize(w, bits, group_size).dequantize(w.dtype)
