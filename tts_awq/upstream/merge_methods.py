"""Merge methods as pure tensor functions, found through a registry (mergekit style).

Every method has the signature ``(base, tensors, weights, **params) -> Tensor``: ``base`` is the base model's
tensor (``None`` is allowed only for methods that do not need it), ``tensors`` holds one tensor per merged model and
``weights`` one float per model. Math runs in float32 (float64 stays float64) and the result is cast back to the
base's dtype (or the first model's when there is no base). Entries whose merged change is exactly zero keep the
base's bits, so a zero weight or a dropped entry never perturbs the base.

Example::

    from tts_awq.upstream.merge_methods import get_method
    method = get_method("ties")
    merged = method.fn(base, [ft_a, ft_b], [1.0, 0.5], density=0.5, normalize=True)

Adding a method: write one function and decorate it with :func:`register`; loading, planning and writing live in
:mod:`tts_awq.upstream.merge`, so neither it nor the CLI changes.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tts_awq.constants import DEFAULT_SEED
from tts_awq.errors import UserError


@dataclass(frozen=True)
class MergeMethod:
    """A registered method: its function, declared parameters (name -> default) and whether it needs a base."""

    name: str
    fn: Callable[..., Tensor]
    params: dict[str, Any] = field(default_factory=dict)
    needs_base: bool = True
    summary: str = ""


METHODS: dict[str, MergeMethod] = {}


def register(
    name: str, params: dict[str, Any] | None = None, needs_base: bool = True
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: add ``fn`` to :data:`METHODS` under ``name`` with its declared parameters and defaults."""

    def wrap(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        METHODS[name] = MergeMethod(name, fn, dict(params or {}), needs_base, summary)
        return fn

    return wrap


def get_method(name: str) -> MergeMethod:
    """The registered method ``name``; an unknown name is a one-line UserError listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(
            f"unknown merge method {name!r}; choose one of {', '.join(sorted(METHODS))}"
        ) from None


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers (pure)
# ---------------------------------------------------------------------------------------------------------------


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for every float dtype narrower than float32; float64 stays float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor generator seed: the global ``seed`` plus the crc32 of the tensor name (stable across runs)."""
    return (int(seed) + zlib.crc32(name.encode("utf-8"))) % (1 << 63)


def _check(tensors: list[Tensor], weights: list[float], base: Tensor | None) -> None:
    if not tensors:
        raise ValueError("no tensors to merge")
    if len(tensors) != len(weights):
        raise ValueError(f"{len(tensors)} tensors but {len(weights)} weights")
    shape = tensors[0].shape if base is None else base.shape
    for t in tensors:
        if t.shape != shape:
            raise ValueError(f"shape mismatch: {tuple(t.shape)} vs {tuple(shape)}")


def _task_vectors(base: Tensor, tensors: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    dtype = compute_dtype(base.dtype)
    base32 = base.to(dtype)
    return base32, [t.to(dtype) - base32 for t in tensors]


def _add_to_base(base: Tensor, base32: Tensor, delta: Tensor) -> Tensor:
    """``base + delta`` cast to the base dtype; entries with a zero delta keep the base's exact bits."""
    return torch.where(delta == 0, base, (base32 + delta).to(base.dtype))


def magnitude_trim(delta: Tensor, density: float) -> Tensor:
    """Keep the ``int(density * numel)`` largest-magnitude entries (and any tied with the smallest kept), zero the rest."""
    n = delta.numel()
    k = int(density * n)
    if k >= n:
        return delta
    if k <= 0:
        return torch.zeros_like(delta)
    magnitude = delta.abs().reshape(-1)
    threshold = torch.kthvalue(magnitude, n - k + 1).values
    return torch.where(delta.abs() >= threshold, delta, torch.zeros_like(delta))


def random_keep_masks(shape: tuple[int, ...], count: int, density: float, seed: int) -> list[Tensor]:
    """``count`` boolean masks, each entry kept with probability ``density``, from one CPU generator seeded ``seed``."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return [torch.rand(shape, generator=generator) < density for _ in range(count)]


# ---------------------------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------------------------


@register("linear", params={"normalize": True}, needs_base=False)
def linear(
    base: Tensor | None, tensors: list[Tensor], weights: list[float], *, normalize: bool = True
) -> Tensor:
    """Weighted average of the models (weights divided by their sum unless ``normalize=False``); base unused."""
    _check(tensors, weights, None)
    out_dtype = base.dtype if base is not None else tensors[0].dtype
    dtype = compute_dtype(out_dtype)
    if normalize:
        total = float(sum(weights))
        if total == 0:
            raise ValueError("linear: weights sum to zero; cannot normalize")
        # ref + sum w_i (t_i - ref): identical models give the model back exactly.
        ref = tensors[0].to(dtype)
        acc = torch.zeros_like(ref)
        for t, w in zip(tensors[1:], weights[1:], strict=True):
            acc += (w / total) * (t.to(dtype) - ref)
        return (ref + acc).to(out_dtype)
    acc = torch.zeros(tensors[0].shape, dtype=dtype)
    for t, w in zip(tensors, weights, strict=True):
        acc += w * t.to(dtype)
    return acc.to(out_dtype)


@register("task_arithmetic")
def task_arithmetic(base: Tensor | None, tensors: list[Tensor], weights: list[float]) -> Tensor:
    """``base + sum_i w_i (m_i - base)``."""
    if base is None:
        raise ValueError("task_arithmetic needs a base tensor")
    _check(tensors, weights, base)
    base32, deltas = _task_vectors(base, tensors)
    mixed = torch.zeros_like(base32)
    for d, w in zip(deltas, weights, strict=True):
        mixed += w * d
    return _add_to_base(base, base32, mixed)


@register("ties", params={"density": 0.5, "normalize": True})
def ties(
    base: Tensor | None,
    tensors: list[Tensor],
    weights: list[float],
    *,
    density: float = 0.5,
    normalize: bool = True,
) -> Tensor:
    """TIES: trim each task vector to its top-``density`` magnitudes, elect a sign, average the agreeing entries.

    The sign of each entry is the sign of the weighted sum of the trimmed task vectors (ties go to +); only
    entries that agree with it contribute. With ``normalize`` (the default) the result is the weighted mean of
    the agreeing entries (``sum w_i d_i / sum w_i`` over agreeing i, the disjoint mean); without, their weighted sum.
    """
    if base is None:
        raise ValueError("ties needs a base tensor")
    _check(tensors, weights, base)
    base32, deltas = _task_vectors(base, tensors)
    weighted = [w * magnitude_trim(d, density) for d, w in zip(deltas, weights, strict=True)]
    elected = torch.where(sum(weighted) >= 0, 1.0, -1.0).to(base32.dtype)
    mixed = torch.zeros_like(base32)
    divisor = torch.zeros_like(base32)
    for wd, w in zip(weighted, weights, strict=True):
        agree = torch.sign(wd) == elected
        mixed += torch.where(agree, wd, 0.0)
        divisor += torch.where(agree, w, 0.0)
    if normalize:
        mixed = mixed / torch.where(divisor == 0, 1.0, divisor)
    return _add_to_base(base, base32, mixed)


@register("dare_linear", params={"density": 0.5, "seed": DEFAULT_SEED})
def dare_linear(
    base: Tensor | None,
    tensors: list[Tensor],
    weights: list[float],
    *,
    density: float = 0.5,
    seed: int = DEFAULT_SEED,
) -> Tensor:
    """DARE: drop each task-vector entry with probability ``1 - density``, rescale by ``1/density``, weighted sum.

    ``seed`` seeds one CPU generator for this tensor (the merge driver passes ``tensor_seed(global_seed, name)``);
    the models' masks are drawn from it in order, so the result is reproducible.
    """
    if base is None:
        raise ValueError("dare_linear needs a base tensor")
    if not 0 < density <= 1:
        raise ValueError(f"dare_linear: density must be in (0, 1], got {density}")
    _check(tensors, weights, base)
    base32, deltas = _task_vectors(base, tensors)
    masks = random_keep_masks(tuple(base.shape), len(tensors), density, seed)
    mixed = torch.zeros_like(base32)
    for d, m, w in zip(deltas, masks, weights, strict=True):
        mixed += (w / density) * torch.where(m, d, 0.0)
    return _add_to_base(base, base32, mixed)
