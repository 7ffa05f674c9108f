"""Error-compensating rounding of AWQ-scaled weights (GPTQ's column sweep, without act-order).

AWQ chooses per-channel scales and clip maxima; plain rounding then treats every weight on its own. Here the
group parameters stay exactly the ones round-to-nearest would store (:func:`tts_awq.quantize.int4.quantize` on the
scaled, clipped weight: fp16 scales, integer zeros), and only the integer codes change: columns are rounded in
order and each column's rounding error is pushed onto the columns not yet rounded, weighted by the inverse Hessian
``H = XᵀX`` of the Linear's calibration inputs, which minimizes ``‖X (W - Ŵ)ᵀ‖²`` far better than rounding each
weight to its nearest level. Columns go in natural order and every group keeps one scale and zero, so the result
is an ordinary AWQ GEMM triple that every loader reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tts_awq.quantize.int4 import QuantizedWeight, quantize

#: Dampening added to the Hessian's diagonal, relative to its mean (GPTQ's ``percdamp``).
DAMP = 0.01
#: Columns per lazily-applied update block (GPTQ's ``blocksize``).
BLOCK = 128


def hessian(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``XᵀX / n`` in float32 over every token of every sequence ([in, in])."""
    in_features = int(xs[0].shape[-1])
    h = torch.zeros(in_features, in_features, dtype=torch.float32, device=xs[0].device)
    n = 0
    for x in xs:
        x2 = x.reshape(-1, in_features).float()
        h.addmm_(x2.t(), x2)
        n += int(x2.shape[0])
    return h.div_(max(n, 1))


def inverse_factor(h: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λI)⁻¹``, ``λ = damp · mean(diag H)``; channels that never fire (zero
    diagonal) get a unit diagonal, so they are rounded to nearest and pass no error on. ``λ`` grows tenfold until
    the factorization succeeds. Linears that share an input share this factor."""
    h = h.float().clone()
    diag = torch.diagonal(h)
    diag[diag == 0] = 1.0
    base = float(diag.mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    lam = damp * base
    for _ in range(6):
        lower, info = torch.linalg.cholesky_ex(h + lam * eye)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0:
                return upper
        lam *= 10
    raise RuntimeError("the calibration Hessian is not positive definite even with heavy dampening")


def gptq_round(weight: torch.Tensor, factor: torch.Tensor, bits: int, group_size: int,
               block: int = BLOCK) -> QuantizedWeight:
    """Codes for ``weight`` ([out, in]) under the group parameters round-to-nearest would store, chosen column
    by column with GPTQ's error feedback through ``factor`` (:func:`inverse_factor` of the inputs' Hessian).

    Works on the transpose, so each column is one contiguous row and the rank-1 updates are in place."""
    reference = quantize(weight.detach().float(), bits, group_size)  # the stored scales and zeros: exactly RTN's
    w = weight.detach().float().t().contiguous()  # [in, out], a private copy
    scales = reference.scales.float().t().contiguous()  # [groups, out]
    zeros = reference.zeros.float().t().contiguous()
    max_int = 2**bits - 1
    u = factor.to(w.device)
    in_features, out_features = w.shape
    codes = torch.empty(in_features, out_features, dtype=torch.uint8, device=w.device)
    err = torch.empty(block, out_features, device=w.device)
    for start in range(0, in_features, block):
        end = min(start + block, in_features)
        w1, u1 = w[start:end], u[start:end, start:end]
        for i in range(end - start):
            g = (start + i) // group_size
            s, z = scales[g], zeros[g]
            q = torch.div(w1[i], s).round_().add_(z).clamp_(0, max_int)
            codes[start + i] = q.to(torch.uint8)
            e = torch.sub(w1[i], q.sub_(z).mul_(s), out=err[i]).div_(u1[i, i])
            if i + 1 < end - start:
                w1[i + 1:].addr_(u1[i, i + 1:], e, alpha=-1.0)
        if end < in_features:
            w[end:].addmm_(u[start:end, end:].t(), err[: end - start], alpha=-1.0)
    return QuantizedWeight(q=codes.t().contiguous(), zeros=reference.zeros, scales=reference.scales,
                           group_size=group_size, bits=bits)
