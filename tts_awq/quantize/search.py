"""AWQ searches as small functions over tensors: activation-aware scales and weight clipping.

Both are evaluated on cloned weights only; no live tensor is ever modified during a search, so the AutoAWQ CPU
aliasing bug (a ``.cpu()`` "backup" that shares storage) cannot happen here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tts_awq.quantize.int4 import fake_quantize

N_GRID = 20


@dataclass(frozen=True)
class ScaleResult:
    scales: torch.Tensor  # [in_features], float32
    ratio: float  # -1.0 means "no scaling" won (identity scales)
    loss: float
    loss_identity: float  # loss with scales == 1 (plain RTN of the group)


def channel_mean_abs(xs: list[torch.Tensor]) -> torch.Tensor:
    """Mean |x| per input channel over every token of every sequence."""
    total = sum(x.abs().sum(0, dtype=torch.float64) for x in xs)
    count = sum(x.shape[0] for x in xs)
    return (total / count).float()


def weight_mean_normalized(weights: list[torch.Tensor], group_size: int) -> torch.Tensor:
    """Mean over rows of |w| normalized by its group's max: AWQ's ``w_mean`` for duo scaling."""
    w = torch.cat([w.float() for w in weights], dim=0)
    g = w.abs().reshape(-1, group_size)
    g = g / g.amax(dim=1, keepdim=True).clamp(min=1e-12)
    return g.reshape(w.shape).mean(0)


def candidate_scales(x_mean: torch.Tensor, w_mean: torch.Tensor | None, ratio: float) -> torch.Tensor:
    if w_mean is not None:
        s = x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)
    else:
        s = x_mean.pow(ratio)
    s = s.clamp(min=1e-4)
    s = s / (s.max() * s.min()).sqrt()
    return torch.where(torch.isfinite(s), s, torch.ones_like(s))


def search_scales(
    weights: list[torch.Tensor],
    xs: list[torch.Tensor],
    forward_with: Callable[[list[torch.Tensor]], list[torch.Tensor]],
    bits: int,
    group_size: int,
    duo_scaling: bool = True,
    n_grid: int = N_GRID,
    reference: list[torch.Tensor] | None = None,
    dense: Sequence[bool] | None = None,
) -> ScaleResult:
    """Grid-search the scale exponent for one group.

    ``forward_with(ws)`` runs the inspected module with the group's Linear weights replaced by ``ws`` and returns
    its outputs per sequence; the loss is the MSE against the unmodified module's outputs (``reference``, when the
    caller already has them, else computed here). ``dense[i]`` marks a Linear that stays unquantized (kept in
    BF16): the loss sees it exact, since it is stored as ``W·s`` and fed ``x / s``.
    """
    if reference is None:
        reference = forward_with([w.float() for w in weights])
    x_mean = channel_mean_abs(xs)
    w_mean = weight_mean_normalized(weights, group_size) if duo_scaling else None
    n_elements = sum(r.numel() for r in reference)

    def loss_for(scales: torch.Tensor) -> float:
        trial = [w.float() if keep else fake_quantize(w.float() * scales, bits, group_size) / scales
                 for w, keep in zip(weights, dense or [False] * len(weights), strict=True)]
        outs = forward_with(trial)
        err = sum(((o - r).double().pow(2).sum()) for o, r in zip(outs, reference, strict=True))
        return float(err / n_elements)

    best: ScaleResult | None = None
    for step in range(n_grid):
        ratio = step / n_grid
        scales = candidate_scales(x_mean, w_mean, ratio)
        loss = loss_for(scales)
        if best is None or loss < best.loss:
            best = ScaleResult(scales=scales, ratio=ratio, loss=loss, loss_identity=0.0)
    assert best is not None
    identity = loss_for(torch.ones_like(x_mean))
    if identity <= best.loss:
        # Unlike AutoAWQ's grid (whose ratio 0 is not s = 1 under duo scaling), never pick scales that do worse
        # than no scaling on the calibration loss: weights already on a 4-bit grid would otherwise lose to RTN.
        return ScaleResult(torch.ones_like(x_mean), -1.0, identity, identity)
    return ScaleResult(best.scales, best.ratio, best.loss, identity)


def sample_tokens(xs: list[torch.Tensor], n_sample_tokens: int) -> torch.Tensor:
    """Every ``step``-th token of the concatenation of ``xs`` (about ``n_sample_tokens``), without building it."""
    total = sum(int(x.shape[0]) for x in xs)
    step = max(1, total // n_sample_tokens)
    picked, offset = [], 0
    for seq in xs:
        first = (-offset) % step
        picked.append(seq[first::step].float())
        offset += int(seq.shape[0])
    return torch.cat(picked, dim=0)


def search_clip(
    weight: torch.Tensor,
    xs: list[torch.Tensor],
    bits: int,
    group_size: int,
    n_grid: int = N_GRID,
    max_shrink: float = 0.5,
    n_sample_tokens: int = 512,
    budget_bytes: int = 256 << 20,
) -> torch.Tensor:
    """Per output channel and group, the max |w| (shrunk by up to ``max_shrink``) minimizing the MSE of the
    group's partial dot products on sampled tokens. Returns ``[out, in // group_size, 1]``.

    The partial dot products of all groups are one batched matmul ``[groups, tokens, group] @ [groups, group,
    out]`` (AutoAWQ forms the elementwise product ``[out, tokens, groups, group]`` and sums it: the same numbers,
    several times the time and memory)."""
    x = sample_tokens(xs, n_sample_tokens)
    n_tokens, in_features = x.shape
    groups = in_features // group_size
    xg = x.reshape(n_tokens, groups, group_size).transpose(0, 1).contiguous()  # [G, T, g]
    out_features = weight.shape[0]
    w_all = weight.float()
    batch = max(1, min(out_features, budget_bytes // max(1, 3 * n_tokens * groups * 4)))
    best_max = []
    for start in range(0, out_features, batch):
        w = w_all[start : start + batch]  # [O, in]
        wg = w.reshape(-1, groups, group_size)  # [O, G, g]
        org_max = wg.abs().amax(dim=-1, keepdim=True)  # [O, G, 1]
        best = org_max.clone()
        min_err = torch.full_like(org_max, float("inf"))
        org_out = torch.bmm(xg, wg.permute(1, 2, 0))  # [G, T, O]
        for i in range(int(max_shrink * n_grid)):
            max_val = org_max * (1 - i / n_grid)
            clipped = torch.clamp(wg, -max_val, max_val).reshape(w.shape)
            q = fake_quantize(clipped, bits, group_size).reshape(wg.shape)
            diff = torch.bmm(xg, q.permute(1, 2, 0)).sub_(org_out)
            err = diff.pow_(2).mean(dim=1).t().unsqueeze(-1)  # [O, G, 1]
            better = err < min_err
            min_err[better] = err[better]
            best[better] = max_val[better]
        best_max.append(best)
    return torch.cat(best_max, dim=0)

