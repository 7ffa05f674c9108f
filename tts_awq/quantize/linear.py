"""The INT4 Linear module of tts-awq packages: AWQ GEMM storage, torch dequantization in forward."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from tts_awq.quantize.int4 import QuantizedWeight
from tts_awq.quantize.pack import PACK_FACTOR, dequantize_gemm, pack_gemm


class AwqInt4Linear(nn.Module):
    """A Linear whose weight is stored as AutoAWQ GEMM ``qweight``/``qzeros``/``scales`` buffers.

    ``forward`` dequantizes to the input's dtype and runs a dense matmul (portable: CPU and CUDA, no kernels).
    With ``cached_dequant=True`` the dense weight is kept after the first call (faster on CPU, more memory).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        group_size: int = 128,
        bits: int = 4,
        bias: bool = False,
        device: torch.device | str | None = None,
        cached_dequant: bool = False,
    ) -> None:
        super().__init__()
        if bits != 4:
            raise ValueError("AWQ GEMM packing stores 4-bit codes only")
        if in_features % group_size or out_features % PACK_FACTOR:
            raise ValueError(f"bad shape for AWQ GEMM: in {in_features} % {group_size}, out {out_features} % 8")
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        self.bits = bits
        groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(in_features, out_features // 8, dtype=torch.int32, device=device))
        self.register_buffer("qzeros", torch.zeros(groups, out_features // 8, dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.zeros(groups, out_features, dtype=torch.float16, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float16, device=device))
        else:
            self.bias = None
        self.cached_dequant = cached_dequant
        self._dense: torch.Tensor | None = None

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: torch.Tensor | None = None) -> AwqInt4Linear:
        out_features, in_features = qw.q.shape
        module = cls(in_features, out_features, qw.group_size, qw.bits, bias=bias is not None)
        qweight, qzeros = pack_gemm(qw.q, qw.zeros)
        module.qweight.copy_(qweight)
        module.qzeros.copy_(qzeros)
        module.scales.copy_(qw.scales.t())
        if bias is not None:
            module.bias = bias.detach().clone()
        return module

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_gemm(self.qweight, self.qzeros, self.scales, self.group_size, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cached_dequant:
            if self._dense is None or self._dense.dtype != x.dtype or self._dense.device != x.device:
                self._dense = self.dequantized_weight(x.dtype)
            weight = self._dense
        else:
            weight = self.dequantized_weight(x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, cached_dequant={self.cached_dequant}"
        )
