"""INT4 runtime kernels: int4mm and dequant against an independent dense reference, fallbacks, bad input."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.nn import functional as F

from tts_awq.errors import UserError
from tts_awq.quantize import kernels
from tts_awq.quantize.int4 import quantize
from tts_awq.quantize.linear import AwqInt4Linear
from tts_awq.quantize.pack import dequantize_gemm

CPU = torch.device("cpu")
SHAPES = [(64, 128, 128), (384, 128, 128), (128, 384, 128), (96, 256, 64), (48, 512, 32), (32, 512, 256),
          (2048, 6144, 128)]


def _module(out_features: int, in_features: int, group_size: int, seed: int = 0) -> tuple[AwqInt4Linear,
                                                                                          torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=gen) * 0.05
    w[:, :3] *= 8  # a few outlier input channels, as AWQ sees them
    module = AwqInt4Linear.from_quantized(quantize(w, 4, group_size))
    # The independent reference: the documented GEMM unpacking of the stored buffers, (q - z) * s in float64.
    dense = dequantize_gemm(module.qweight, module.qzeros, module.scales, group_size, torch.float64)
    return module, dense


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_int4mm_matches_dequantized_weight_within_bf16_tolerance(shape: tuple[int, int, int]) -> None:
    out_features, in_features, group_size = shape
    module, dense = _module(out_features, in_features, group_size)
    assert module.prepare("int4mm") == "int4mm"
    for rows, dtype in ((1, torch.bfloat16), (5, torch.bfloat16), (3, torch.float32)):
        x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(rows)).to(dtype)
        y = module(x)
        assert y.dtype == dtype and y.shape == (rows, out_features)
        ref = x.double() @ dense.t()
        # bfloat16 activations, scales and zeros inside the kernel (bfloat16 tolerance: 2^-7 per element)
        assert _rel(y, ref) < 2e-2, (shape, rows, dtype)


@pytest.mark.parametrize("shape", SHAPES[:5], ids=lambda s: "x".join(map(str, s)))
def test_dequant_kernel_is_exact_in_float32(shape: tuple[int, int, int]) -> None:
    out_features, in_features, group_size = shape
    module, dense = _module(out_features, in_features, group_size, seed=1)
    assert module.prepare("dequant") == "dequant"
    x = torch.randn(2, 3, in_features, generator=torch.Generator().manual_seed(7))
    y = module(x)
    assert y.shape == (2, 3, out_features)
    assert _rel(y, x.double() @ dense.t()) < 1e-5
    assert torch.equal(module.dequantized_weight().double(), dense)  # the nibble layout round-trips exactly
    yb = module(x.bfloat16())
    assert yb.dtype == torch.bfloat16 and _rel(yb, x.bfloat16().double() @ dense.t()) < 5e-3


def test_cached_dequant_gives_the_same_numbers() -> None:
    module, dense = _module(64, 256, 128, seed=2)
    cached, _ = _module(64, 256, 128, seed=2)
    cached.cached_dequant = True
    module.prepare("dequant")
    cached.prepare("dequant")
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(cached(x), module(x), rtol=1e-5, atol=1e-5)
    assert cached._dense is not None and torch.allclose(cached(x), cached(x))


def test_prepare_drops_the_awq_buffers_and_keeps_half_a_byte_per_weight() -> None:
    for kernel in ("int4mm", "dequant"):
        module, _ = _module(256, 512, 128)
        module.prepare(kernel)
        names = {n for n, _ in module.named_buffers()}
        assert not names & {"qweight", "qzeros", "scales"}
        codes = module.int4_packed if kernel == "int4mm" else module.nibbles
        assert codes.numel() * codes.element_size() == 256 * 512 // 2
        assert module.state_dict() == {}  # runtime layouts are not persistent: the file format stays AWQ GEMM


def test_auto_picks_int4mm_wherever_it_runs_and_falls_back_with_a_reason(caplog: pytest.LogCaptureFixture) -> None:
    for out_features, in_features, group_size in SHAPES:
        module, _ = _module(out_features, in_features, group_size)
        assert module.prepare("auto") == "int4mm"
        assert module.kernel_reason is None
    # CPU int4 packing needs out_features % 16 == 0; group size 16 is not a tinygemm group size
    for out_features, in_features, group_size, words in ((24, 128, 128, "multiple of 16"), (32, 64, 16, "group")):
        module, dense = _module(out_features, in_features, group_size)
        reason = kernels.int4mm_unavailable_reason(CPU, out_features, in_features, group_size)
        assert reason and words in reason
        assert module.prepare("auto") == "dequant" and module.kernel_reason == reason
        x = torch.randn(2, in_features)
        assert _rel(module(x), x.double() @ dense.t()) < 1e-5  # the fallback gives right numbers, not wrong ones
        explicit, _ = _module(out_features, in_features, group_size)
        with pytest.raises(UserError, match="kernel='int4mm' cannot run here"):
            explicit.prepare("int4mm")


def test_unprepared_module_prepares_itself_and_rejects_bad_kernels() -> None:
    module, dense = _module(64, 128, 128)
    x = torch.randn(1, 128, dtype=torch.bfloat16)
    assert _rel(module(x), x.double() @ dense.t()) < 2e-2 and module.kernel == "int4mm"
    with pytest.raises(RuntimeError, match="already"):
        module.prepare("dequant")
    fresh, _ = _module(64, 128, 128)
    with pytest.raises(UserError, match="expected one of auto, int4mm, dequant"):
        fresh.prepare("fast")


def test_int4mm_zero_mapping_matches_awq_zero_points() -> None:
    """The kernel's float zero (8 - z) * s reproduces AWQ's integer zero for every z in 0..15."""
    q = torch.arange(16, dtype=torch.uint8).repeat(32, 8)  # [32, 128]: every code in every row
    zeros = torch.arange(32, dtype=torch.uint8).remainder(16)[:, None]  # every zero point
    scales = torch.full((1, 32), 0.125, dtype=torch.float16)
    packed, scale_zeros = kernels.to_int4mm(q, zeros, scales, CPU)
    eye = torch.eye(128, dtype=torch.bfloat16)
    w = kernels.int4mm(eye, packed, scale_zeros, 128).t().float()  # recovers W = (q - z) * s exactly
    assert torch.equal(w, (q.float() - zeros.float()) * 0.125)


def test_dense_reference_agrees_with_f_linear() -> None:
    module, dense = _module(64, 128, 128)
    x = torch.randn(3, 128, dtype=torch.float64)
    assert torch.allclose(F.linear(x, dense), x @ dense.t())


def test_fallback_is_logged_once_per_reason_by_the_loader(caplog: pytest.LogCaptureFixture) -> None:
    from torch import nn

    from tts_awq.loading import prepare_int4_linears

    model = nn.Sequential(*[_module(24, 128, 128, seed=i)[0] for i in range(3)], _module(64, 128, 128)[0])
    with caplog.at_level(logging.WARNING):
        counts = prepare_int4_linears(model, "auto")
    assert counts == {"dequant": 3, "int4mm": 1}
    lines = [r.getMessage() for r in caplog.records if "dequant kernel" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("kernel=auto: 3 INT4 linear(s)")
