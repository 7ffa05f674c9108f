"""tts_awq.validate.stats against independent references: scipy's exact binomial interval and Fisher test, a
hand-summed hypergeometric tail, Newcombe's (1998) published table, textbook values, Monte-Carlo and exact
coverage, and a hand-computed sample size."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats as st

from tts_awq.validate.stats import (
    Rate,
    bootstrap_ci,
    clopper_pearson,
    excess_test,
    excess_upper_bound,
    generations_needed,
    paired_ratio_ci,
    rate_summary,
    resolvable_excess,
)

# ---------------------------------------------------------------- Clopper-Pearson


@pytest.mark.parametrize("n", [1, 2, 7, 30, 100, 1000, 5000])
@pytest.mark.parametrize("conf", [0.9, 0.95, 0.99])
def test_clopper_pearson_matches_scipy_binomtest(n: int, conf: float) -> None:
    for k in sorted({0, 1, 2, n // 3, n // 2, n - 1, n} & set(range(n + 1))):
        ref = st.binomtest(k, n).proportion_ci(confidence_level=conf, method="exact")
        lo, hi = clopper_pearson(k, n, conf)
        assert lo == pytest.approx(ref.low, abs=1e-12)
        assert hi == pytest.approx(ref.high, abs=1e-12)


def test_clopper_pearson_textbook_values() -> None:
    lo, hi = clopper_pearson(0, 100)
    assert lo == 0.0
    assert hi == pytest.approx(0.0362, abs=5e-5)  # two-sided 95 %: 1 - 0.025**(1/100)
    assert hi == pytest.approx(1 - 0.025 ** (1 / 100), rel=1e-10)
    # Rule of three is the *one-sided* 95 % bound (= two-sided 90 %): 1 - 0.05**(1/n) ~ 3/n.
    for n in (300, 1000, 3000):
        assert clopper_pearson(0, n, 0.90)[1] == pytest.approx(3 / n, rel=0.01)
    assert clopper_pearson(100, 100) == (pytest.approx(0.025 ** (1 / 100)), 1.0)
    assert clopper_pearson(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("args", "match"),
    [((-1, 10), "0 <= k <= n"), ((11, 10), "0 <= k <= n"), ((0, -1), "n must be >= 0"),
     ((1, 10, 0.0), "confidence"), ((1, 10, 1.0), "confidence"), ((1, 10, 95), "confidence")],
)
def test_clopper_pearson_rejects_bad_arguments(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        clopper_pearson(*args)


def test_clopper_pearson_rejects_float_counts() -> None:
    with pytest.raises(TypeError):
        clopper_pearson(1.5, 10)  # type: ignore[arg-type]


def test_rate_summary() -> None:
    r = rate_summary(3, 1000)
    assert isinstance(r, Rate)
    assert (r.k, r.n, r.rate) == (3, 1000, 0.003)
    assert (r.lo, r.hi) == clopper_pearson(3, 1000)
    assert r.lo < r.rate < r.hi
    d = r.to_dict()
    assert set(d) == {"k", "n", "rate", "lo", "hi"}
    json.dumps(d)
    with pytest.raises(AttributeError):
        r.k = 4  # type: ignore[misc]
    assert math.isnan(rate_summary(0, 0).rate)


# ---------------------------------------------------------------- Fisher one-sided


def _hypergeom_tail(k1: int, n1: int, k2: int, n2: int) -> float:
    """P(X >= k1), X = events in the package arm given k1 + k2 events in n1 + n2 trials, in exact arithmetic."""
    total, m = n1 + n2, k1 + k2
    denom = math.comb(total, n1)
    num = sum(math.comb(m, x) * math.comb(total - m, n1 - x) for x in range(k1, min(m, n1) + 1))
    return float(Fraction(num, denom))


@pytest.mark.parametrize(
    "table",
    [(0, 10, 0, 10), (3, 10, 0, 10), (0, 10, 3, 10), (5, 20, 2, 25), (12, 2000, 4, 2000), (4, 2000, 12, 2000),
     (10, 2000, 10, 2000), (1, 500, 0, 3000), (7, 7, 0, 5), (25, 1000, 8, 1200)],
)
def test_excess_test_matches_fisher_and_hypergeometric_sum(table: tuple[int, int, int, int]) -> None:
    k1, n1, k2, n2 = table
    p = excess_test(k1, n1, k2, n2)
    ref = st.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="greater").pvalue
    assert p == pytest.approx(ref, rel=1e-9, abs=1e-15)
    assert p == pytest.approx(_hypergeom_tail(k1, n1, k2, n2), rel=1e-9, abs=1e-15)
    assert 0.0 <= p <= 1.0


def test_excess_test_direction_and_edges() -> None:
    assert excess_test(20, 2000, 5, 2000) < 0.01  # package clearly worse
    assert excess_test(5, 2000, 20, 2000) > 0.99  # package better: no evidence against it
    assert excess_test(0, 2000, 0, 2000) == 1.0
    assert excess_test(0, 0, 1, 10) == 1.0 and excess_test(1, 10, 0, 0) == 1.0
    ps = [excess_test(k, 2000, 8, 2000) for k in range(0, 30)]
    assert all(a >= b for a, b in zip(ps, ps[1:], strict=False))
    with pytest.raises(ValueError, match="package"):
        excess_test(3, 2, 0, 10)
    with pytest.raises(ValueError, match="reference"):
        excess_test(0, 10, -1, 10)


# ---------------------------------------------------------------- upper bound on the excess


def _two_sided(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    # Lower bound by symmetry: L(arm1, arm2) = -U(arm2, arm1). Two-sided 95 % = one-sided 97.5 % each side.
    return -excess_upper_bound(k2, n2, k1, n1, 0.975), excess_upper_bound(k1, n1, k2, n2, 0.975)


@pytest.mark.parametrize(
    ("table", "expected"),
    [((56, 70, 48, 80), (0.0524, 0.3339)), ((9, 10, 3, 10), (0.1705, 0.8090)), ((5, 56, 0, 29), (-0.0381, 0.1926)),
     ((0, 10, 0, 20), (-0.1611, 0.2775)), ((0, 10, 0, 10), (-0.2775, 0.2775)), ((10, 10, 0, 20), (0.6791, 1.0)),
     ((10, 10, 0, 10), (0.6075, 1.0))],
)
def test_excess_bound_matches_newcombe_table_ii_method_10(table: tuple, expected: tuple[float, float]) -> None:
    lo, hi = _two_sided(*table)
    assert lo == pytest.approx(expected[0], abs=6e-5)
    assert hi == pytest.approx(expected[1], abs=6e-5)


def test_excess_bound_zero_events_shrinks_like_3_over_n() -> None:
    z2 = st.norm.ppf(0.95) ** 2
    for n in (100, 1000, 10000):
        u = excess_upper_bound(0, n, 0, n)
        assert u == pytest.approx(z2 / (n + z2), rel=1e-12)  # Wilson upper bound of the package arm
        assert 0 < u < 3 / n
        assert u > 2.5 / n
    assert excess_upper_bound(0, 0, 0, 10) == 1.0


def test_excess_bound_is_monotone_and_in_range() -> None:
    n1, n2 = 2000, 1500
    for k2 in (0, 3, 10, 50):
        us = [excess_upper_bound(k1, n1, k2, n2) for k1 in range(0, 80)]
        assert all(b > a for a, b in zip(us, us[1:], strict=False)), k2
    for k1 in (0, 3, 10, 50):
        us = [excess_upper_bound(k1, n1, k2, n2) for k2 in range(0, 80)]
        assert all(b < a for a, b in zip(us, us[1:], strict=False)), k1
    for t in [(0, 5, 5, 5), (5, 5, 0, 5), (0, 1, 1, 1), (1, 1, 0, 1), (3, 7, 2, 9)]:
        u = excess_upper_bound(*t)
        assert isinstance(u, float) and -1.0 <= u <= 1.0
    assert excess_upper_bound(5, 5, 0, 5) == 1.0
    assert excess_upper_bound(10, 1000, 10, 1000, 0.99) > excess_upper_bound(10, 1000, 10, 1000, 0.9)


def test_excess_bound_monte_carlo_coverage() -> None:
    rng = np.random.default_rng(12345)
    n, p = 2000, 0.005
    k_pkg, k_ref = rng.binomial(n, p, 400), rng.binomial(n, p, 400)
    covered = np.mean([excess_upper_bound(int(a), n, int(b), n) >= 0.0 for a, b in zip(k_pkg, k_ref, strict=True)])
    assert covered >= 0.93


@pytest.mark.parametrize(("p", "n"), [(0.005, 2000), (0.003, 1000), (0.005, 500), (0.001, 3000), (0.02, 1000)])
def test_excess_bound_exact_coverage_near_zero(p: float, n: int) -> None:
    # Exact coverage of the true excess 0 with equal rates: sum of P(k1) P(k2) over covered tables.
    ks = np.arange(int(st.binom.isf(1e-12, n, p)) + 1)
    w = st.binom.pmf(ks, n, p)
    cover = np.array([[excess_upper_bound(int(a), n, int(b), n) >= 0.0 for b in ks] for a in ks])
    assert 0.935 <= float(w @ cover @ w) <= 0.995


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_deterministic_and_covers_true_median() -> None:
    x = np.random.default_rng(7).lognormal(mean=1.0, sigma=0.5, size=5000)
    a = bootstrap_ci(x, "median", seed=3)
    assert a == bootstrap_ci(list(x), "median", seed=3)
    assert a != bootstrap_ci(x, "median", seed=4)
    point, lo, hi = a
    assert point == pytest.approx(np.median(x))
    assert lo < math.e < hi  # true median of lognormal(1, .5) is e**1
    assert hi - lo < 0.2
    pm, lom, him = bootstrap_ci(x, "mean", n_boot=1000)
    assert lom < math.exp(1 + 0.125) < him and pm == pytest.approx(x.mean())
    # Width vs the normal-theory SE of the mean: percentile interval ~ +-1.96 SE.
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert (him - lom) == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_bootstrap_callable_chunking_and_edges() -> None:
    x = np.random.default_rng(1).normal(size=3000)  # 4M // 3000 = 1333 per chunk -> two chunks for 2000
    q90 = bootstrap_ci(x, lambda v, axis: np.quantile(v, 0.9, axis=axis))
    assert q90[0] == pytest.approx(np.quantile(x, 0.9))
    assert q90[1] < st.norm.ppf(0.9) < q90[2]
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert bootstrap_ci([2.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="statistic"):
        bootstrap_ci(x, "mode")
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(x, confidence=1.5)


def test_paired_ratio_ci_uses_pairs() -> None:
    rng = np.random.default_rng(5)
    ref = rng.uniform(2.0, 20.0, size=400)  # prompt-to-prompt spread much larger than the effect
    pkg = ref * 1.05 * rng.lognormal(0.0, 0.02, size=400)
    point, lo, hi = paired_ratio_ci(pkg, ref)
    assert point == pytest.approx(np.median(pkg / ref))
    assert lo < 1.05 < hi and lo > 1.0 and hi - lo < 0.01
    assert (point, lo, hi) == bootstrap_ci(pkg / ref)
    assert all(math.isnan(v) for v in paired_ratio_ci([], []))
    with pytest.raises(ValueError, match="length"):
        paired_ratio_ci([1.0, 2.0], [1.0])


# ---------------------------------------------------------------- sample size


def test_generations_needed_hand_computed() -> None:
    # p2 = 0.005, p1 = 0.015, pbar = 0.01; z_.95 = 1.644854, z_.80 = 0.841621
    #   z_a sqrt(2 * .01 * .99) = 1.644854 * 0.140712 = 0.231452
    #   z_b sqrt(.015 * .985 + .005 * .995) = 0.841621 * sqrt(0.01975) = 0.841621 * 0.140534 = 0.118277
    #   n = (0.349729 / 0.01)^2 = 1223.1 -> 1224 per arm
    assert generations_needed(0.005, 0.01) == 1224
    # p_ref = 0: pbar = 0.005, 1.644854 sqrt(.00995) + 0.841621 sqrt(.0099) = 0.164074 + 0.083741 = 0.247815,
    #   n = 0.247815^2 / 1e-4 = 614.1 -> 615
    assert generations_needed(0.0, 0.01) == 615
    assert generations_needed(0.005, 0.01, alpha=0.01, power=0.9) > generations_needed(0.005, 0.01)
    assert generations_needed(0.005, 0.005) > generations_needed(0.005, 0.01) > generations_needed(0.005, 0.02)


def test_generations_needed_power_by_simulation() -> None:
    # The figure is only a planning number: the one-sided z test it assumes reaches ~80 % power there.
    n, p2, p1 = generations_needed(0.005, 0.01), 0.005, 0.015
    rng = np.random.default_rng(0)
    k1, k2 = rng.binomial(n, p1, 4000), rng.binomial(n, p2, 4000)
    pbar = (k1 + k2) / (2 * n)
    z = (k1 - k2) / n / np.sqrt(2 * pbar * (1 - pbar) / n)
    assert np.mean(z > st.norm.ppf(0.95)) == pytest.approx(0.8, abs=0.03)


@pytest.mark.parametrize("p_ref", [0.0, 0.003, 0.005, 0.05])
@pytest.mark.parametrize("n", [200, 1224, 2000, 10000])
def test_resolvable_excess_inverts_generations_needed(p_ref: float, n: int) -> None:
    d = resolvable_excess(p_ref, n)
    assert generations_needed(p_ref, d) <= n
    assert generations_needed(p_ref, d * 0.999) > n * 0.995
    assert resolvable_excess(p_ref, 2 * n) < d


def test_resolvable_excess_edges_and_validation() -> None:
    assert resolvable_excess(0.005, 1224) == pytest.approx(0.01, rel=1e-3)
    assert resolvable_excess(0.0, 1) == math.inf
    for bad in [(-0.1, 0.01), (1.0, 0.01), (0.005, 0.0), (0.5, 0.6)]:
        with pytest.raises(ValueError):
            generations_needed(*bad)
    with pytest.raises(ValueError, match="alpha"):
        generations_needed(0.005, 0.01, alpha=0.0)
    with pytest.raises(ValueError, match="power"):
        resolvable_excess(0.005, 100, power=1.0)
    with pytest.raises(ValueError, match="n must be"):
        resolvable_excess(0.005, 0)
