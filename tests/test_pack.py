"""AWQ GEMM packing and INT4 numerics against independent references."""

from __future__ import annotations

import torch

from tts_awq.quantize.int4 import dequantize, fake_quantize, quantize, rtn
from tts_awq.quantize.pack import AWQ_ORDER, dequantize_gemm, pack_gemm, unpack_gemm


def _random_codes(out_features: int, in_features: int, group: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (out_features, in_features), generator=g, dtype=torch.uint8)
    z = torch.randint(0, 16, (out_features, in_features // group), generator=g, dtype=torch.uint8)
    return q, z


def test_unpack_inverts_pack() -> None:
    q, z = _random_codes(64, 256, 128)
    qweight, qzeros = pack_gemm(q, z)
    assert qweight.dtype == torch.int32 and qweight.shape == (256, 8)
    assert qzeros.dtype == torch.int32 and qzeros.shape == (2, 8)
    q2, z2 = unpack_gemm(qweight, qzeros)
    assert torch.equal(q2, q) and torch.equal(z2, z)


def test_known_nibble_positions_follow_awq_interleave() -> None:
    # One input row, 8 output columns with values 1..8: column j must sit in nibble [0,4,1,5,2,6,3,7][j].
    q = torch.arange(1, 9, dtype=torch.uint8).reshape(8, 1).repeat(1, 128)  # [out=8, in=128]
    z = torch.zeros(8, 1, dtype=torch.uint8)
    qweight, _ = pack_gemm(q, z)
    word = int(qweight[0, 0]) & 0xFFFFFFFF
    nibbles = [(word >> (4 * i)) & 0xF for i in range(8)]
    assert nibbles == [1 + c for c in AWQ_ORDER] == [1, 3, 5, 7, 2, 4, 6, 8]
    assert word == 0x86427531


def test_sign_bit_nibble_round_trips() -> None:
    q = torch.full((8, 128), 15, dtype=torch.uint8)
    z = torch.full((8, 1), 15, dtype=torch.uint8)
    qweight, qzeros = pack_gemm(q, z)
    assert int(qweight[0, 0]) == -1 and int(qzeros[0, 0]) == -1  # 0xFFFFFFFF as int32
    q2, z2 = unpack_gemm(qweight, qzeros)
    assert torch.equal(q2, q) and torch.equal(z2, z)


def test_dequantized_equals_q_minus_z_times_s_exactly() -> None:
    torch.manual_seed(0)
    w = torch.randn(48, 256) * 0.05
    qw = quantize(w, 4, 128)
    qweight, qzeros = pack_gemm(qw.q, qw.zeros)
    dense = dequantize_gemm(qweight, qzeros, qw.scales.t().contiguous(), 128)
    # independent reference: explicit loops over groups in float64
    ref = torch.empty_like(w, dtype=torch.float64)
    for g in range(2):
        cols = slice(g * 128, (g + 1) * 128)
        ref[:, cols] = (qw.q[:, cols].double() - qw.zeros[:, g : g + 1].double()) * qw.scales[:, g : g + 1].double()
    assert torch.equal(dense.double(), ref)
    assert torch.equal(dequantize(qw.q, qw.zeros, qw.scales, 128), dense)


def test_quantize_matches_awq_formula_and_error_bound() -> None:
    torch.manual_seed(1)
    w = torch.randn(32, 128)
    qw = quantize(w, 4, 128)
    w_max, w_min = w.amax(1), w.amin(1)
    scale = ((w_max - w_min).clamp(min=1e-5) / 15).to(torch.float16)
    assert torch.equal(qw.scales[:, 0], scale)
    zero = (-torch.round(w_min / scale.float())).clamp(0, 15)
    assert torch.equal(qw.zeros[:, 0].float(), zero)
    assert int(qw.q.max()) <= 15
    err = (qw.dequantize() - w).abs()
    assert float((err / scale.float()[:, None]).max()) <= 0.5 + 1e-2  # within half a step (fp16 scale)
    assert torch.allclose(rtn(w), qw.dequantize(), atol=0, rtol=0)
    # the search-time fake quantizer differs only by the fp16 rounding of the scale (at most one step)
    assert float(((fake_quantize(w) - qw.dequantize()).abs() / scale.float()[:, None]).max()) <= 1.0
