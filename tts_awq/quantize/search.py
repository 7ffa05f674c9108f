"""AWQ searches as small functions over tensors: activation-aware scales and weight clipping.

Both are evaluated on cloned weights only; no live tensor is ever modified during a search, so the AutoAWQ CPU
aliasing bug (a ``.cpu()`` "backup" that shares storage) cannot happen here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tts_awq.quantize.int4 import fake_quantize, scaled_fake_quantize

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
    loss_of: Callable[[list[torch.Tensor]], float],
    bits: int,
    group_size: int,
    duo_scaling: bool = True,
    n_grid: int = N_GRID,
    dense: Sequence[bool] | None = None,
    coarse_stride: int = 1,
) -> ScaleResult:
    """Grid-search the scale exponent for one group over ratios ``k / n_grid``: all of them, or with
    ``coarse_stride`` s > 1 every s-th one, then the ratios within s - 1 steps of the best of those (about half
    the trials at the same resolution when the loss is unimodal in the ratio, which it is in practice).

    ``loss_of(ws)`` is the inspected module's output error with the group's Linear weights replaced by ``ws``
    (:class:`tts_awq.quantize.objective.ModuleObjective`). ``dense[i]`` marks a Linear that stays unquantized
    (kept in BF16): the loss sees it exact, since it is stored as ``W·s`` and fed ``x / s``.
    """
    x_mean = channel_mean_abs(xs)
    w_mean = weight_mean_normalized(weights, group_size) if duo_scaling else None
    originals = [w.float() for w in weights]

    def loss_for(scales: torch.Tensor) -> float:
        trial = [w if keep else scaled_fake_quantize(w, scales, bits, group_size)
                 for w, keep in zip(originals, dense or [False] * len(weights), strict=True)]
        return loss_of(trial)

    losses: dict[int, float] = {}
    candidates: dict[int, torch.Tensor] = {}

    def evaluate(step: int) -> None:
        if step not in losses and 0 <= step < n_grid:
            candidates[step] = candidate_scales(x_mean, w_mean, step / n_grid)
            losses[step] = loss_for(candidates[step])

    if coarse_stride <= 1:
        for step in range(n_grid):
            evaluate(step)
    else:  # every coarse_stride-th ratio, then every ratio within one coarse step of the best of those
        for step in range(0, n_grid, coarse_stride):
            evaluate(step)
        centre = min(sorted(losses), key=lambda k: losses[k])
        for step in range(centre - coarse_stride + 1, centre + coarse_stride):
            evaluate(step)
    best: ScaleResult | None = None
    for step in sorted(losses):  # ascending ratio, strict improvement: ties go to the smaller ratio
        if best is None or losses[step] < best.loss:
            best = ScaleResult(scales=candidates[step], ratio=step / n_grid, loss=losses[step], loss_identity=0.0)
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
    budget_bytes: int = 64 << 20,
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
    batch = max(1, min(out_features, budget_bytes // max(1, 2 * n_tokens * groups * 4)))
    # Two [G, T, batch] buffers (reference and trial outputs), reused by every batch and shrink step: no
    # allocation in the loop beyond the small clipped weights.
    reference_buf = torch.empty(groups, n_tokens, batch, device=x.device)
    trial_buf = torch.empty_like(reference_buf)
    best_max = []
    for start in range(0, out_features, batch):
        w = w_all[start : start + batch]  # [O, in]
        n = w.shape[0]
        wg = w.reshape(-1, groups, group_size)  # [O, G, g]
        org_max = wg.abs().amax(dim=-1, keepdim=True)  # [O, G, 1]
        best = org_max.clone()
        min_err = torch.full_like(org_max, float("inf"))
        org_out = reference_buf if n == batch else reference_buf[..., :n].contiguous()
        trial = trial_buf if n == batch else torch.empty_like(org_out)
        torch.bmm(xg, wg.permute(1, 2, 0), out=org_out)  # [G, T, O]
        for i in range(int(max_shrink * n_grid)):
            max_val = org_max * (1 - i / n_grid)
            clipped = torch.clamp(wg, -max_val, max_val).reshape(w.shape)
            q = fake_quantize(clipped, bits, group_size).reshape(wg.shape)
            torch.bmm(xg, q.permute(1, 2, 0), out=trial)
            err = trial.sub_(org_out).square_().mean(dim=1).t().unsqueeze(-1)  # [O, G, 1]
            better = err < min_err
            min_err[better] = err[better]
            best[better] = max_val[better]
        best_max.append(best)
    return torch.cat(best_max, dim=0)
