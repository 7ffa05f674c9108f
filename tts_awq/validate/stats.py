"""Statistics for validate-awq: INT4 package vs its BF16 reference.

The failure that matters is *runaway* (no codec EOS before the token limit). BF16 itself runs away on a few
generations per thousand, so "zero runaways seen" proves little: every count here comes with an interval, and the
gate is on an upper confidence bound of the excess rate, not on the point estimate. Pure functions, no torch.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as st

__all__ = [
    "Rate", "bootstrap_ci", "clopper_pearson", "excess_test", "excess_upper_bound", "generations_needed",
    "paired_ratio_ci", "rate_summary", "resolvable_excess",
]


def _counts(k: int, n: int, what: str = "") -> tuple[int, int]:
    k, n = operator.index(k), operator.index(n)
    if n < 0:
        raise ValueError(f"{what}n must be >= 0, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"{what}k must satisfy 0 <= k <= n, got k={k}, n={n}")
    return k, n


def _level(x: float, name: str) -> float:
    if not 0.0 < x < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {x!r}")
    return float(x)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval for a binomial proportion (beta quantiles). Conservative at rates near 0, which
    is what we want for rare failures. n == 0 gives the uninformative (0, 1)."""
    k, n = _counts(k, n)
    alpha = 1.0 - _level(confidence, "confidence")
    if n == 0:
        return 0.0, 1.0
    lo = 0.0 if k == 0 else float(st.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(st.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


@dataclass(frozen=True)
class Rate:
    """k events in n trials; rate is nan when n == 0; [lo, hi] is the Clopper-Pearson interval."""

    k: int
    n: int
    rate: float
    lo: float
    hi: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rate_summary(k: int, n: int, confidence: float = 0.95) -> Rate:
    lo, hi = clopper_pearson(k, n, confidence)
    k, n = int(k), int(n)
    return Rate(k=k, n=n, rate=k / n if n else math.nan, lo=lo, hi=hi)


def excess_test(k_pkg: int, n_pkg: int, k_ref: int, n_ref: int) -> float:
    """One-sided p-value for H0: p_pkg <= p_ref vs H1: p_pkg > p_ref, by Fisher's exact test (conditional on the
    total number of events, X ~ Hypergeom; p = P(X >= k_pkg)). Small p: the package is significantly worse.
    Exact, hence valid (slightly conservative) at the tiny counts we see. An empty arm gives 1.0 (no evidence)."""
    k_pkg, n_pkg = _counts(k_pkg, n_pkg, "package: ")
    k_ref, n_ref = _counts(k_ref, n_ref, "reference: ")
    if n_pkg == 0 or n_ref == 0:
        return 1.0
    p = st.hypergeom.sf(k_pkg - 1, n_pkg + n_ref, k_pkg + k_ref, n_pkg)
    return float(min(1.0, max(0.0, p)))


def _wilson(k: int, n: int, z: float) -> tuple[float, float]:
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def excess_upper_bound(k_pkg: int, n_pkg: int, k_ref: int, n_ref: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound on p_pkg - p_ref: Newcombe's hybrid score interval (1998, method 10) built
    from Wilson bounds at the one-sided level, U = d + sqrt((u_pkg - p_pkg)^2 + (p_ref - l_ref)^2).

    Unlike Wald it has near-nominal coverage at rates near 0 and stays informative at k = 0 for both arms
    (U = z^2 / (n + z^2) ~ 2.7/n at 95 %). Monotone: up in k_pkg, down in k_ref. An empty arm gives 1.0."""
    k_pkg, n_pkg = _counts(k_pkg, n_pkg, "package: ")
    k_ref, n_ref = _counts(k_ref, n_ref, "reference: ")
    z = float(st.norm.ppf(_level(confidence, "confidence")))
    if n_pkg == 0 or n_ref == 0:
        return 1.0
    p1, p2 = k_pkg / n_pkg, k_ref / n_ref
    u1 = _wilson(k_pkg, n_pkg, z)[1]
    l2 = _wilson(k_ref, n_ref, z)[0]
    u = p1 - p2 + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return float(min(1.0, max(-1.0, u)))


Statistic = str | Callable[..., Any]


def _reducer(statistic: Statistic) -> Callable[..., Any]:
    if callable(statistic):
        return statistic
    table = {"median": np.median, "mean": np.mean}
    if statistic not in table:
        raise ValueError(f"statistic must be 'median', 'mean' or a callable, got {statistic!r}")
    return table[statistic]


def bootstrap_ci(values: Sequence[float] | np.ndarray, statistic: Statistic = "median", confidence: float = 0.95,
                 n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(point estimate, lo, hi) by percentile bootstrap, deterministic for a seed. A callable statistic is called
    like a numpy reduction, ``f(x, axis=-1)``, on a (resamples, n) array. Resamples are drawn in chunks of about
    4M values to bound memory. Empty input gives (nan, nan, nan); nan values propagate (filter them first)."""
    alpha = 1.0 - _level(confidence, "confidence")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    f = _reducer(statistic)
    x = np.asarray(values, dtype=np.float64).ravel()
    n = x.size
    if n == 0:
        return math.nan, math.nan, math.nan
    point = float(np.asarray(f(x[None, :], axis=-1)).ravel()[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 4_000_000 // n))
    boot = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        boot[start:start + m] = f(x[rng.integers(0, n, size=(m, n))], axis=-1)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return point, float(lo), float(hi)


def paired_ratio_ci(numerators: Sequence[float] | np.ndarray, denominators: Sequence[float] | np.ndarray,
                    statistic: Statistic = "median", confidence: float = 0.95, n_boot: int = 2000,
                    seed: int = 0) -> tuple[float, float, float]:
    """Bootstrap CI of a statistic of the per-pair ratios numerators[i] / denominators[i] (e.g. per-prompt
    duration package / reference). Resampling pairs together keeps the per-prompt pairing, which removes the
    prompt-to-prompt spread that would swamp an unpaired comparison."""
    num = np.asarray(numerators, dtype=np.float64).ravel()
    den = np.asarray(denominators, dtype=np.float64).ravel()
    if num.shape != den.shape:
        raise ValueError(f"numerators and denominators differ in length: {num.size} vs {den.size}")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = num / den
    return bootstrap_ci(ratios, statistic, confidence, n_boot, seed)


def _n_continuous(p_ref: float, excess: float, z_a: float, z_b: float) -> float:
    p1, p2 = p_ref + excess, p_ref
    pbar = (p1 + p2) / 2
    root = z_a * math.sqrt(2 * pbar * (1 - pbar)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return (root / excess) ** 2


def _z(alpha: float, power: float) -> tuple[float, float]:
    return float(st.norm.ppf(1 - _level(alpha, "alpha"))), float(st.norm.ppf(_level(power, "power")))


def generations_needed(reference_rate: float, excess: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Generations per arm for a one-sided two-proportion test at level alpha to detect p_pkg = p_ref + excess with
    the given power. Normal approximation, pooled variance under H0 and unpooled under H1, no continuity
    correction:  n = [z_{1-a} sqrt(2 pbar qbar) + z_{power} sqrt(p1 q1 + p2 q2)]^2 / excess^2, pbar = (p1+p2)/2.
    reference_rate = 0 is fine (pbar = excess / 2 > 0). A planning figure: the exact test used is a bit
    conservative, so budget some margin."""
    if not 0.0 <= reference_rate < 1.0:
        raise ValueError(f"reference_rate must be in [0, 1), got {reference_rate!r}")
    if not 0.0 < excess <= 1.0 - reference_rate:
        raise ValueError(f"excess must be in (0, 1 - reference_rate], got {excess!r}")
    z_a, z_b = _z(alpha, power)
    return math.ceil(_n_continuous(reference_rate, excess, z_a, z_b) - 1e-9)


def resolvable_excess(reference_rate: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest excess that n generations per arm detect (inverse of generations_needed, by bisection on the
    continuous formula; generations_needed(reference_rate, result) <= n). inf if even excess = 1 - rate is not
    resolvable with n."""
    if not 0.0 <= reference_rate < 1.0:
        raise ValueError(f"reference_rate must be in [0, 1), got {reference_rate!r}")
    if operator.index(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    z_a, z_b = _z(alpha, power)
    hi = 1.0 - reference_rate
    if _n_continuous(reference_rate, hi, z_a, z_b) > n:
        return math.inf
    lo = 0.0  # invariant: n_needed(lo) > n >= n_needed(hi); n_needed is decreasing in excess
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if _n_continuous(reference_rate, mid, z_a, z_b) > n:
            lo = mid
        else:
            hi = mid
    return hi
