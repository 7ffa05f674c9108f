"""The INT4 Linear module of tts-awq packages: loads AWQ GEMM buffers, runs a fast runtime kernel.

The state dict is the on-disk format (``qweight``/``qzeros``/``scales``). :meth:`AwqInt4Linear.prepare` converts
it, on the module's current device, into the layout of the chosen kernel (:mod:`tts_awq.quantize.kernels`) and
drops the AWQ buffers, so only one 4-bit copy is ever resident. A module used before ``prepare`` prepares itself
with ``kernel="auto"`` on its first call.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from tts_awq.errors import UserError
from tts_awq.quantize import kernels
from tts_awq.quantize.int4 import QuantizedWeight
from tts_awq.quantize.pack import PACK_FACTOR, dequantize_gemm, pack_gemm, unpack_gemm

log = logging.getLogger(__name__)

_AWQ_BUFFERS = ("qweight", "qzeros", "scales")
_RUNTIME_BUFFERS = ("int4_packed", "int4_scale_zeros", "nibbles", "dq_scales", "dq_zeros")


class AwqInt4Linear(nn.Module):
    """A Linear whose weight is stored as AutoAWQ GEMM ``qweight``/``qzeros``/``scales`` buffers.

    ``kernel``: ``"int4mm"`` (torch's int4 kernels; bfloat16 activations inside), ``"dequant"`` (exact
    ``(q - z) * s`` in the activation dtype, no kernel requirements) or ``"auto"`` (int4mm where it runs for
    this shape and device, else dequant). With ``cached_dequant=True`` the dequant kernel keeps the dense weight
    after the first call (more memory; same numbers).
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
        if in_features % group_size or out_features % PACK_FACTOR or group_size % 2:
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
        self.kernel: str | None = None  # set by prepare()
        self.kernel_reason: str | None = None  # why auto fell back to dequant
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
        """Dense ``[out, in]`` weight; reads the AWQ buffers, or the dequant layout after ``prepare``."""
        if self.kernel is None:
            return dequantize_gemm(self.qweight, self.qzeros, self.scales, self.group_size, dtype)
        if self.kernel == "dequant":
            w = kernels.dequantize_nibbles(self.nibbles, self.dq_scales, self.dq_zeros)
            return w.t().to(dtype)
        raise RuntimeError("the int4mm layout is opaque; call dequantized_weight() before prepare()")

    @torch.no_grad()
    def prepare(self, kernel: str = "auto") -> str:
        """Convert the AWQ buffers (on their current device) to ``kernel``'s layout; returns the kernel used."""
        if kernel not in kernels.KERNELS:
            raise UserError(f"kernel={kernel!r}: expected one of {', '.join(kernels.KERNELS)}")
        if self.kernel is not None:
            raise RuntimeError("AwqInt4Linear.prepare() was already called")
        device = self.qweight.device
        reason = None
        if kernel in ("auto", "int4mm"):
            reason = kernels.int4mm_unavailable_reason(device, self.out_features, self.in_features, self.group_size)
            if reason and kernel == "int4mm":
                raise UserError(f"kernel='int4mm' cannot run here: {reason}; use kernel='auto' or 'dequant'")
        chosen = "int4mm" if kernel in ("auto", "int4mm") and reason is None else "dequant"
        q, zeros = unpack_gemm(self.qweight, self.qzeros)
        if chosen == "int4mm":
            packed, scale_zeros = kernels.to_int4mm(q, zeros, self.scales, device)
            self.register_buffer("int4_packed", packed, persistent=False)
            self.register_buffer("int4_scale_zeros", scale_zeros, persistent=False)
        else:
            self.register_buffer("nibbles", kernels.to_nibbles(q, self.group_size), persistent=False)
            self.register_buffer("dq_scales", self.scales.float(), persistent=False)
            self.register_buffer("dq_zeros", zeros.t().float(), persistent=False)
        for name in _AWQ_BUFFERS:
            delattr(self, name)
        self.kernel, self.kernel_reason = chosen, reason
        return chosen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is None:
            self.prepare("auto")
        flat = x.reshape(-1, self.in_features)
        if self.kernel == "int4mm":
            y = kernels.int4mm(flat, self.int4_packed, self.int4_scale_zeros, self.group_size)
        else:
            if self.cached_dequant and (self._dense is None or self._dense.dtype != flat.dtype):
                self._dense = self.dequantized_weight(flat.dtype).t().contiguous()
            dense = self._dense if self.cached_dequant else None
            y = kernels.dequant_matmul(flat, self.nibbles, self.dq_scales, self.dq_zeros, dense)
        return kernels.linear_bias(y, self.bias).reshape(*x.shape[:-1], self.out_features)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.kernel is not None:
            raise RuntimeError("load the AWQ state dict before prepare()")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, kernel={self.kernel or 'unprepared'}"
        )
