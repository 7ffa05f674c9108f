"""Error-compensating rounding (awq-gptq): AWQ GEMM layout, exact unpacking, lower held-out error than AWQ's
round-to-nearest, and the faster pieces of the search that must equal their references."""

from __future__ import annotations

import pytest
import torch

from tts_awq.quantize.gptq import gptq_round, hessian, inverse_factor
from tts_awq.quantize.int4 import dequantize, fake_quantize, quantize, scaled_fake_quantize
from tts_awq.quantize.pack import pack_gemm, unpack_gemm
from tts_awq.quantize.search import candidate_scales, channel_mean_abs, search_scales
from tts_awq.quantize.search_state import pack_codes, unpack_codes


def correlated_inputs(n: int, in_features: int, seed: int) -> torch.Tensor:
    """Tokens with correlated channels and a few loud ones, like a decoder's normed hidden states."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(in_features, in_features, generator=gen) / in_features**0.5
    loud = torch.ones(in_features)
    loud[torch.randperm(in_features, generator=gen)[: in_features // 16]] = 8.0
    return (torch.randn(n, in_features, generator=gen) @ mix) * loud


def awq_scaled(weight: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What AWQ hands the rounding step: W·s and the inputs x / s (ratio 0.5, no duo scaling)."""
    s = candidate_scales(channel_mean_abs([x]), None, 0.5)
    return weight * s, s


def output_error(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return float((x @ (w_hat - w).t()).norm() / (x @ w.t()).norm())


@pytest.mark.parametrize(("out_features", "in_features", "group_size"), [(96, 256, 64), (64, 384, 128)])
def test_codes_fit_the_gemm_layout_and_unpack_exactly(out_features: int, in_features: int, group_size: int) -> None:
    gen = torch.Generator().manual_seed(out_features)
    w = torch.randn(out_features, in_features, generator=gen) * 0.05
    x = correlated_inputs(512, in_features, seed=1)
    qw = gptq_round(w, inverse_factor(hessian([x])), 4, group_size)
    rtn = quantize(w, 4, group_size)
    assert qw.q.dtype == torch.uint8 and qw.q.shape == w.shape and int(qw.q.max()) <= 15
    # the stored group parameters are exactly round-to-nearest's: only codes move
    assert torch.equal(qw.scales, rtn.scales) and torch.equal(qw.zeros, rtn.zeros)
    assert 0.05 < float((qw.q != rtn.q).float().mean()) < 0.9  # it does choose differently
    qweight, qzeros = pack_gemm(qw.q, qw.zeros)
    assert qweight.dtype == torch.int32 and qweight.shape == (in_features, out_features // 8)
    q_back, z_back = unpack_gemm(qweight, qzeros)
    assert torch.equal(q_back, qw.q) and torch.equal(z_back, qw.zeros)
    # independent dequantization of the packed triple, by hand: W = (q - z) * s per group
    manual = ((q_back.float() - z_back.float().repeat_interleave(group_size, 1))
              * qw.scales.float().repeat_interleave(group_size, 1))
    assert torch.equal(manual, dequantize(qw.q, qw.zeros, qw.scales, group_size))
    assert torch.equal(unpack_codes(pack_codes(qw.q)), qw.q)  # how the search state stores them


def test_lowers_held_out_output_error_of_each_linear_versus_awq_alone() -> None:
    """Calibrate the rounding on one split of the tokens, measure on the other: every Linear shape of a decoder
    layer (square, wide and tall) gets a clearly lower output error than AWQ's round-to-nearest."""
    for index, (out_features, in_features) in enumerate([(256, 256), (512, 256), (256, 512)]):
        x = correlated_inputs(2048, in_features, seed=10 + index)
        calib, held_out = x[:1024], x[1024:]
        gen = torch.Generator().manual_seed(index)
        w = torch.randn(out_features, in_features, generator=gen) * 0.05
        scaled, s = awq_scaled(w, calib)
        awq_alone = quantize(scaled, 4, 64).dequantize() / s
        compensated = gptq_round(scaled, inverse_factor(hessian([calib / s])), 4, 64).dequantize() / s
        err_awq = output_error(held_out, w, awq_alone)
        err_ec = output_error(held_out, w, compensated)
        assert err_ec < 0.9 * err_awq, (out_features, in_features, err_ec, err_awq)


def test_rounding_is_deterministic_and_handles_dead_channels() -> None:
    x = correlated_inputs(300, 128, seed=3)
    x[:, 5] = 0.0  # a channel that never fires: zero Hessian diagonal
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(3))
    factor = inverse_factor(hessian([x[:100], x[100:]]))
    assert torch.isfinite(factor).all()
    a = gptq_round(w, factor, 4, 64)
    b = gptq_round(w, inverse_factor(hessian([x])), 4, 64)
    assert torch.equal(a.q, b.q)  # the same Hessian whether the tokens come in one sequence or two


def test_scaled_fake_quantize_equals_the_reference_arithmetic() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(48, 256, generator=gen)
    w[2, :64] = 0.25  # a constant group (range clamped to 1e-5)
    s = torch.rand(256, generator=gen) * 4 + 0.05
    assert torch.equal(scaled_fake_quantize(w, s, 4, 64), fake_quantize(w * s, 4, 64) / s)


def test_coarse_to_fine_grid_finds_the_full_grid_minimum_with_fewer_trials() -> None:
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(16, 128, generator=gen)]
    xs = [torch.rand(40, 128, generator=gen) + 0.1]
    calls: list[float] = []
    for best_ratio in (0.1, 0.35, 0.6, 0.95):  # (ratio 0 is the identity without duo scaling)
        calls.clear()

        def loss_of(trial: list[torch.Tensor], best_ratio: float = best_ratio) -> float:
            # a unimodal function of the ratio the trial was made with (recovered from its scales)
            ratio = ratio_of(trial[0])
            calls.append(ratio)
            return (ratio - best_ratio) ** 2 + 0.01

        def ratio_of(trial: torch.Tensor) -> float:
            for step in range(20):
                scales = candidate_scales(channel_mean_abs(xs), None, step / 20)
                if torch.equal(trial, scaled_fake_quantize(weights[0], scales, 4, 64)):
                    return step / 20
            return 10.0  # identity scales: worst

        full = search_scales(weights, xs, loss_of, 4, 64, duo_scaling=False, coarse_stride=1)
        n_full = len(calls)
        calls.clear()
        coarse = search_scales(weights, xs, loss_of, 4, 64, duo_scaling=False, coarse_stride=4)
        assert full.ratio == coarse.ratio == pytest.approx(round(best_ratio * 20) / 20)
        assert torch.equal(full.scales, coarse.scales)
        assert n_full == 21 and len(calls) <= 12
