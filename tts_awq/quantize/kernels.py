"""Runtime layouts and matmuls for AWQ INT4 weights (the package on disk stays AWQ GEMM).

Two kernels, both built once at load time from the unpacked codes ``q`` (uint8 ``[out, in]``), zeros ``z``
(uint8 ``[out, in/g]``) and fp16 scales ``s`` (``[in/g, out]``), where ``W = (q - z) * s``:

* ``int4mm``: torch's tinygemm int4 kernels (CPU ``_weight_int4pack_mm_for_cpu``, CUDA ``_weight_int4pack_mm``).
  They compute ``(q - 8) * scale + zero`` per group, so AWQ's integer zero maps to the float zero ``(8 - z) * s``.
  Activations are bfloat16 inside the kernel (CUDA accepts nothing else; the CPU kernel's float32/float16 paths
  measured 60-110x slower than its bfloat16 path), the result is cast back to the caller's dtype.
* ``dequant``: codes kept as two nibbles per byte (the same 0.5 byte per weight), paired along ``in`` inside each
  group. On CPU the matmul runs group by group so the dequantized slice stays in cache; elsewhere the whole weight
  is dequantized in one vectorized pass. Exact ``(q - z) * s`` arithmetic in the activation dtype.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)

KERNELS = ("auto", "int4mm", "dequant")
#: Weights up to this many elements (16 MB in float32) are dequantized whole on CPU; larger ones group by group.
SMALL_WEIGHT = 1 << 22
INT4MM_GROUP_SIZES = (32, 64, 128, 256)
INT4MM_DTYPE = torch.bfloat16


def int4mm_unavailable_reason(device: torch.device, out_features: int, in_features: int,
                              group_size: int) -> str | None:
    """``None`` when torch's int4 kernel runs for this shape on ``device``, else the reason it does not."""
    if group_size not in INT4MM_GROUP_SIZES:
        return f"group size {group_size} is not one of {INT4MM_GROUP_SIZES}"
    if device.type == "cpu":
        if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
            return f"torch {torch.__version__} has no _weight_int4pack_mm_for_cpu"
        if out_features % 16:
            return f"out_features {out_features} is not a multiple of 16 (CPU int4 pack)"
    elif device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        if major < 8:
            return f"{torch.cuda.get_device_name(device)} is below sm80 (int4 tinygemm needs Ampere or newer)"
        if out_features % 8:
            return f"out_features {out_features} is not a multiple of 8 (CUDA int4 pack)"
        if _inner_k_tiles(in_features) is None:
            return f"in_features {in_features} is not a multiple of 32 (CUDA int4 pack)"
    else:
        return f"no int4 kernel for device type {device.type!r}"
    return _probe(str(device), group_size)


def _inner_k_tiles(in_features: int) -> int | None:
    return next((t for t in (8, 4, 2) if in_features % (16 * t) == 0), None)


@functools.cache
def _probe(device: str, group_size: int) -> str | None:
    """Run the kernel once on a small random problem and compare with the dense result."""
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    out_features, in_features = 32, max(256, group_size)
    q = torch.randint(0, 16, (out_features, in_features), generator=gen, dtype=torch.uint8)
    z = torch.randint(0, 16, (out_features, in_features // group_size), generator=gen, dtype=torch.uint8)
    s = (torch.rand(in_features // group_size, out_features, generator=gen) / 10 + 0.01).half()
    x = torch.randn(3, in_features, generator=gen)
    try:
        packed, scale_zeros = to_int4mm(q.to(dev), z.to(dev), s.to(dev), dev)
        y = int4mm(x.to(dev), packed, scale_zeros, group_size).float().cpu()
    except (RuntimeError, NotImplementedError) as exc:
        return f"int4 kernel failed on {device}: {str(exc).splitlines()[0][:160]}"
    w = ((q.float() - z.float().repeat_interleave(group_size, 1)) * s.float().t().repeat_interleave(group_size, 1))
    ref = x.bfloat16().float() @ w.t()
    err = float((y - ref).norm() / ref.norm())
    if not err < 2e-2:
        return f"int4 kernel on {device} gave relative error {err:.3g} on a probe problem"
    return None


def to_int4mm(q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel layout on ``device``: (packed weight, bfloat16 scale-and-zero ``[in/g, out, 2]``)."""
    s = scales.float()  # [G, out]
    float_zero = (8.0 - zeros.t().float()) * s
    scale_zeros = torch.stack([s, float_zero], dim=-1).to(INT4MM_DTYPE).contiguous()
    if device.type == "cpu":
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)
    else:
        pairs = ((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8).contiguous()  # [out, in/2]
        packed = torch.ops.aten._convert_weight_to_int4pack(pairs, _inner_k_tiles(q.shape[1]))
    return packed, scale_zeros


def int4mm(x: torch.Tensor, packed: torch.Tensor, scale_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """``x @ W.T`` for 2-D ``x``, computed in bfloat16, returned in ``x``'s dtype."""
    xb = x.to(INT4MM_DTYPE).contiguous()
    if x.device.type == "cpu":
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed, group_size, scale_zeros)
    else:
        y = torch.ops.aten._weight_int4pack_mm(xb, packed, group_size, scale_zeros)
    return y.to(x.dtype)


def to_nibbles(q: torch.Tensor, group_size: int) -> torch.Tensor:
    """uint8 ``[in/g, g/2, out]``: input rows ``2i`` (low nibble) and ``2i+1`` (high nibble) of each group."""
    out_features, in_features = q.shape
    qt = q.t().reshape(in_features // group_size, group_size, out_features)
    return (qt[:, 0::2] | (qt[:, 1::2] << 4)).to(torch.uint8).contiguous()


def nibbles_to_codes(nibbles: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_nibbles` up to layout: uint8 ``[in/g, g, out]``."""
    groups, half, out_features = nibbles.shape
    return torch.stack([nibbles & 15, nibbles >> 4], dim=2).reshape(groups, 2 * half, out_features)


def dequant_matmul(x: torch.Tensor, nibbles: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                   dense: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T`` for 2-D ``x`` with ``W = (q - z) * s``; ``scales`` and ``zeros`` are float32 ``[in/g, out]``.
    ``dense`` (``[in, out]``, ``x``'s dtype), if given, is a cached dequantized weight."""
    if dense is not None:
        return x @ dense
    if x.device.type != "cpu":
        return x @ dequantize_nibbles(nibbles, scales, zeros).to(x.dtype)
    if x.dtype != torch.float32:
        # Low-precision activations use the float32 loop: exact, and faster on CPU than bfloat16 elementwise ops.
        return dequant_matmul(x.float(), nibbles, scales, zeros).to(x.dtype)
    groups, half, out_features = nibbles.shape
    xg = x.reshape(x.shape[0], groups, 2 * half)
    out = xg.sum(-1) @ (zeros * scales)  # sum_g (sum_k x_k) z s: the zero-point term, subtracted
    out.neg_()
    if groups * 2 * half * out_features <= SMALL_WEIGHT:  # fits in cache whole: fewer, larger ops win
        codes = nibbles_to_codes(nibbles).to(x.dtype).mul_(scales[:, None])
        return out.addmm_(x, codes.reshape(-1, out_features))
    x_even, x_odd = xg[..., 0::2], xg[..., 1::2]
    for g in range(groups):  # q * s for one group at a time: the slice stays in cache
        low = (nibbles[g] & 15).to(x.dtype).mul_(scales[g])
        high = (nibbles[g] >> 4).to(x.dtype).mul_(scales[g])
        out.addmm_(x_even[:, g], low).addmm_(x_odd[:, g], high)
    return out


def dequantize_nibbles(nibbles: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """Dense ``[in, out]`` float32 weight ``(q - z) * s``."""
    codes = nibbles_to_codes(nibbles).float()
    return ((codes - zeros[:, None]) * scales[:, None]).reshape(-1, scales.shape[1])


def linear_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return y if bias is None else y + bias.to(y.dtype)


__all__ = ["KERNELS", "INT4MM_GROUP_SIZES", "int4mm_unavailable_reason", "to_int4mm", "int4mm", "to_nibbles",
           "dequant_matmul", "dequantize_nibbles", "nibbles_to_codes", "linear_bias"]
