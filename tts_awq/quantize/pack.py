"""AutoAWQ ``WQLinear_GEMM`` packing: 8 nibbles per int32 along the OUTPUT dimension, interleaved.

For each block of 8 output columns, nibble ``i`` (bits 4i..4i+3) of the int32 holds column ``8c + ORDER[i]``
with ``ORDER = [0, 2, 4, 6, 1, 3, 5, 7]``. ``qweight`` is ``[in, out/8]``, ``qzeros`` ``[in/group, out/8]``,
``scales`` fp16 ``[in/group, out]`` (see shared/docs/awq-engines-and-format.md section 4).
"""

from __future__ import annotations

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # column j of a block sits in nibble AWQ_REVERSE_ORDER[j]
PACK_FACTOR = 8


def _pack_rows(values: torch.Tensor) -> torch.Tensor:
    """values: int [rows, cols] with entries in [0, 15] -> int32 [rows, cols / 8]."""
    rows, cols = values.shape
    if cols % PACK_FACTOR:
        raise ValueError(f"output features {cols} must be a multiple of {PACK_FACTOR} for GEMM packing")
    v = values.to(torch.int64).reshape(rows, cols // PACK_FACTOR, PACK_FACTOR)
    packed = torch.zeros(rows, cols // PACK_FACTOR, dtype=torch.int64)
    for nibble, column in enumerate(AWQ_ORDER):
        packed |= v[..., column] << (4 * nibble)
    # Nibble 7 may set bit 31: wrap into int32 two's complement exactly.
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)
    return packed.to(torch.int32)


def _unpack_rows(packed: torch.Tensor) -> torch.Tensor:
    """int32 [rows, cols / 8] -> uint8 [rows, cols] (inverse of :func:`_pack_rows`)."""
    rows, blocks = packed.shape
    p = packed.to(torch.int64) & 0xFFFFFFFF
    out = torch.empty(rows, blocks, PACK_FACTOR, dtype=torch.uint8, device=packed.device)
    for nibble, column in enumerate(AWQ_ORDER):
        out[..., column] = ((p >> (4 * nibble)) & 0xF).to(torch.uint8)
    return out.reshape(rows, blocks * PACK_FACTOR)


def pack_gemm(q: torch.Tensor, zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q: uint8 [out, in]; zeros: uint8 [out, in/group] -> (qweight [in, out/8], qzeros [in/group, out/8])."""
    return _pack_rows(q.t().contiguous()), _pack_rows(zeros.t().contiguous())


def unpack_gemm(qweight: torch.Tensor, qzeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_gemm`: returns (q uint8 [out, in], zeros uint8 [out, in/group])."""
    return _unpack_rows(qweight).t().contiguous(), _unpack_rows(qzeros).t().contiguous()


def dequantize_gemm(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Dense ``[out, in]`` weight ``(q - z) * s`` (computed in float32, returned as ``dtype``) on their device."""
    p = qweight.to(torch.int32)
    shifts = torch.tensor([4 * AWQ_REVERSE_ORDER[j] for j in range(PACK_FACTOR)], device=p.device, dtype=torch.int32)
    q = ((p[..., None] >> shifts) & 0xF).reshape(p.shape[0], -1)  # [in, out]
    z = ((qzeros.to(torch.int32)[..., None] >> shifts) & 0xF).reshape(qzeros.shape[0], -1)  # [in/g, out]
    z = z.repeat_interleave(group_size, dim=0)
    s = scales.float().repeat_interleave(group_size, dim=0)
    return ((q - z).float() * s).t().to(dtype)
