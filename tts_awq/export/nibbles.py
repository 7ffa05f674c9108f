"""Sequential 4-bit packing (element j of a word at bits 4j), as compressed-tensors and MLX store INT4 — unlike
AWQ GEMM's interleaved order (tts_awq.quantize.pack)."""

from __future__ import annotations

import torch

NIBBLES_PER_WORD = 8


def pack_last_dim(values: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., n]`` in 0..15 -> int32 ``[..., n / 8]`` (element j of each 8 at bits 4j)."""
    if values.shape[-1] % NIBBLES_PER_WORD:
        raise ValueError(f"last dimension {values.shape[-1]} is not a multiple of {NIBBLES_PER_WORD}")
    v = values.to(torch.int64).reshape(*values.shape[:-1], -1, NIBBLES_PER_WORD)
    shifts = torch.arange(0, 4 * NIBBLES_PER_WORD, 4, dtype=torch.int64)
    words = (v << shifts).sum(dim=-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # bit 31 wraps into two's complement


def unpack_last_dim(words: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_last_dim` (int32 or uint32 words)."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(0, 4 * NIBBLES_PER_WORD, 4, dtype=torch.int64)
    return ((w[..., None] >> shifts) & 0xF).reshape(*words.shape[:-1], -1).to(torch.uint8)
