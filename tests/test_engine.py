"""The AWQ layer step against its own invariants: no aliasing, scales applied exactly once, sources untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tts_awq.checkpoint import TensorStore, detect_layout
from tts_awq.quantize import engine
from tts_awq.quantize.decoder import DecoderRunner, run_layer_capturing
from tts_awq.quantize.engine import AwqOptions, quantize_layer
from tts_awq.quantize.scale_groups import CAPTURED_INPUTS
from tts_awq.quantize.search import candidate_scales


@pytest.fixture(scope="module")
def layer_setup(tiny_root: dict[str, Path]):  # type: ignore[no-untyped-def]
    store = TensorStore(tiny_root["tiny-tts-base"])
    spec = detect_layout(tiny_root["tiny-tts-base"]).decoder
    runner = DecoderRunner(spec)
    tensors = {k: v.float() for k, v in store.get_prefix(f"{spec.layer_prefix}0.").items()}
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(n, spec.hidden_size, generator=g) for n in (24, 17, 31)]
    return runner, tensors, xs


def test_scales_divide_clip_inputs_once_and_sources_stay_intact(layer_setup, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    runner, tensors, xs = layer_setup
    originals = {k: v.clone() for k, v in tensors.items()}
    raw, _ = run_layer_capturing(runner, runner.build_layer(dict(tensors), 0), xs, CAPTURED_INPUTS)
    seen: dict[int, list[torch.Tensor]] = {}
    real_search_clip = engine.search_clip

    def spy(weight: torch.Tensor, inputs: list[torch.Tensor], *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.setdefault(len(seen), [x.clone() for x in inputs])
        return real_search_clip(weight, inputs, *args, **kwargs)

    monkeypatch.setattr(engine, "search_clip", spy)
    layer = runner.build_layer(dict(tensors), 0)
    weights, stats, next_xs = quantize_layer(runner, layer, xs, AwqOptions(group_size=128))
    for name, tensor in tensors.items():  # the source tensors were never written to (no aliasing)
        assert torch.equal(tensor, originals[name]), name
    # clip order: v, o, gate, up, down. v sees the normed input divided by s1 exactly once (not s1^3).
    s1 = originals["input_layernorm.weight"] / weights["input_layernorm.weight"]
    s3 = originals["post_attention_layernorm.weight"] / weights["post_attention_layernorm.weight"]
    for got, x in zip(seen[0], raw["self_attn.q_proj"], strict=True):
        assert torch.allclose(got, x / s1, rtol=1e-5, atol=1e-6)
    for got, x in zip(seen[2], raw["mlp.gate_proj"], strict=True):
        assert torch.allclose(got, x / s3, rtol=1e-5, atol=1e-6)
    # the next layer gets the full-precision output of the unquantized layer
    reference = runner.run_layer(runner.build_layer(dict(originals), 0), xs)
    for a, b in zip(next_xs, reference, strict=True):
        assert torch.equal(a, b)
    assert stats["scale.input_layernorm"]["loss"] <= stats["scale.input_layernorm"]["loss_rtn"]


def test_candidate_scales_are_normalized_and_finite() -> None:
    x_mean = torch.tensor([0.1, 1.0, 10.0, 0.0])
    w_mean = torch.tensor([0.5, 0.5, 0.5, 0.5])
    s = candidate_scales(x_mean, w_mean, 0.5)
    assert torch.isfinite(s).all()
    assert torch.allclose(s.max() * s.min(), torch.tensor(1.0), rtol=1e-5)
    assert torch.equal(candidate_scales(x_mean, None, 0.0), torch.ones(4))


def test_clip_search_samples_the_same_tokens_as_the_concatenation() -> None:
    from tts_awq.quantize.search import search_clip

    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, 128, generator=g) for n in (300, 17, 450, 211)]
    w = torch.randn(64, 128, generator=g)
    every_other = torch.cat(xs)[:: (978 // 512)]
    assert torch.equal(search_clip(w, xs, 4, 128), search_clip(w, [every_other], 4, 128, n_sample_tokens=10**9))


def test_batched_layer_equals_one_sequence_at_a_time(layer_setup) -> None:  # type: ignore[no-untyped-def]
    """Right-padded batches give each real row exactly its unpadded sequence's output (causal attention)."""
    runner, tensors, xs = layer_setup
    layer = runner.build_layer(dict(tensors), 0)
    small = DecoderRunner(runner.spec, max_batch_tokens=1)  # every sequence alone: the independent reference
    assert small.plan([24, 17, 31]) == [[2], [0], [1]]
    assert runner.plan([24, 17, 31]) == [[2, 0, 1]]
    alone, batched = small.run_layer(layer, xs), runner.run_layer(layer, xs)
    for a, b, x in zip(alone, batched, xs, strict=True):
        assert a.shape == b.shape == x.shape
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    attn = layer.get_submodule("self_attn")
    for a, b in zip(small.run_module(attn, xs, True), runner.run_module(attn, xs, True), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_batch_plan_respects_the_token_budget() -> None:
    from types import SimpleNamespace

    plan = DecoderRunner.plan(SimpleNamespace(max_batch_tokens=100), [10, 50, 40, 30, 5, 50])  # type: ignore[arg-type]
    assert sorted(i for b in plan for i in b) == list(range(6))
    lengths = [10, 50, 40, 30, 5, 50]
    for batch in plan:
        assert max(lengths[i] for i in batch) * len(batch) <= 100 or len(batch) == 1
    assert plan[0] == [1, 5]  # longest first, ties by index: deterministic


def test_clip_search_matches_the_elementwise_formula() -> None:
    """The batched-matmul clip search picks what AutoAWQ's elementwise [out, tokens, groups, group] form picks."""
    from tts_awq.quantize.int4 import fake_quantize
    from tts_awq.quantize.search import search_clip

    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 256, generator=g)
    x[:, :4] *= 10
    w = torch.randn(48, 256, generator=g) * 0.05
    w[:, 7] *= 20  # outliers that clipping should cut
    group = 64
    xr = x.reshape(1, 96, 4, group)
    wr = w.reshape(48, 1, 4, group)
    org_max = wr.abs().amax(dim=-1, keepdim=True)
    best, min_err = org_max.clone(), torch.full_like(org_max, float("inf"))
    org_out = (xr * wr).sum(-1)
    for i in range(10):
        max_val = org_max * (1 - i / 20)
        q = fake_quantize(torch.clamp(wr, -max_val, max_val).reshape(48, 256), 4, group).reshape(wr.shape)
        err = ((xr * q).sum(-1) - org_out).pow(2).mean(dim=1).view(min_err.shape)
        better = err < min_err
        min_err[better], best[better] = err[better], max_val[better]
    ours = search_clip(w, [x], 4, group)
    assert ours.shape == (48, 4, 1)
    agree = (ours == best.squeeze(1)).float().mean()
    assert agree >= 0.97, float(agree)  # ties between shrink steps may break differently in float32 sums
    assert (ours < org_max.squeeze(1)).any()  # something was clipped
