"""Pure helpers of scripts/bench_vs_autoawq.py: block cutting, its own AWQ GEMM (un)packer, RTN, metrics."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_vs_autoawq.py"


@pytest.fixture(scope="module")
def bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_vs_autoawq", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_vs_autoawq"] = module
    spec.loader.exec_module(module)
    return module


def test_blocks_consecutive_when_stream_is_long_enough(bench) -> None:  # type: ignore[no-untyped-def]
    blocks, how = bench.make_blocks(list(range(100)), 3, 10)
    assert blocks == [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))]
    assert "consecutive" in how


def test_blocks_overlap_evenly_when_stream_is_short(bench) -> None:  # type: ignore[no-untyped-def]
    ids = list(range(25))
    blocks, how = bench.make_blocks(ids, 4, 10)
    assert [len(b) for b in blocks] == [10] * 4
    assert blocks[0][0] == 0 and blocks[-1][-1] == 24  # the whole stream is covered
    assert all(b == ids[b[0]:b[0] + 10] for b in blocks)
    assert "overlapping" in how


def test_blocks_too_short_is_an_error(bench) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="fewer than one block"):
        bench.make_blocks(list(range(5)), 2, 10)


def test_gemm_nibble_order(bench) -> None:  # type: ignore[no-untyped-def]
    # column 8c + j sits in nibble [0, 4, 1, 5, 2, 6, 3, 7][j]
    for j, nibble in enumerate([0, 4, 1, 5, 2, 6, 3, 7]):
        values = torch.zeros(1, 8, dtype=torch.int64)
        values[0, j] = 0xF
        packed = bench.pack_gemm_int32(values)
        assert int(packed[0, 0]) & 0xFFFFFFFF == 0xF << (4 * nibble)


def test_pack_unpack_roundtrip_including_sign_bit(bench) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    values = torch.randint(0, 16, (5, 24))
    values[:, 7] = 15  # nibble 7 of the first pack: sets the int32 sign bit
    packed = bench.pack_gemm_int32(values)
    assert packed.dtype == torch.int32 and packed.shape == (5, 3)
    assert (packed < 0).any()
    assert torch.equal(bench.unpack_gemm_int32(packed), values)


def test_unpacker_reads_tts_awq_packing(bench) -> None:  # type: ignore[no-untyped-def]
    """Independent check of the format against the library's writer (which is bit-identical to AutoAWQ's)."""
    from tts_awq.quantize.pack import pack_gemm

    torch.manual_seed(1)
    q = torch.randint(0, 16, (16, 64), dtype=torch.int32)  # [out, in]
    zeros = torch.randint(0, 16, (16, 2), dtype=torch.int32)  # [out, groups]
    qweight, qzeros = pack_gemm(q, zeros)
    assert torch.equal(bench.unpack_gemm_int32(qweight), q.t().to(torch.int64))
    assert torch.equal(bench.unpack_gemm_int32(qzeros), zeros.t().to(torch.int64))


def test_rtn_dequantize_matches_fake_quant(bench) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(2)
    w = torch.randn(16, 128)
    qweight, qzeros, scales = bench.rtn_gemm(w, 64)
    assert qweight.shape == (128, 2) and qzeros.shape == (2, 2) and scales.shape == (2, 16)
    deq = bench.dequantize_gemm_weight(qweight, qzeros, scales)
    assert deq.shape == w.shape
    # every group has at most 16 distinct levels and stays close to the original
    g = deq.reshape(16, 2, 64)
    assert all(len(torch.unique(g[o, k])) <= 16 for o in range(16) for k in range(2))
    step = (w.reshape(16, 2, 64).amax(-1) - w.reshape(16, 2, 64).amin(-1)) / 15
    assert ((deq - w).abs().reshape(16, 2, 64) <= step[..., None] * 0.51 + 1e-3).all()


def test_logit_metrics(bench) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(3)
    ref = [torch.randn(5, 11), torch.randn(3, 11)]
    same = bench.logit_metrics(ref, [r.clone() for r in ref])
    assert same["rel_err"] == 0 and abs(same["kl"]) < 1e-12 and same["top1"] == 1 and same["positions"] == 8
    noisy = bench.logit_metrics(ref, [r + 0.1 * torch.randn_like(r) for r in ref])
    assert 0 < noisy["rel_err"] < 0.2 and noisy["kl"] > 0


def test_markdown_table_marks_missing_cells(bench) -> None:  # type: ignore[no-untyped-def]
    table = bench.markdown_table([{"engine": "RTN", "rel_err": 0.5, "kl": 0.1, "top1": 0.9}])
    assert table.splitlines()[-1] == "| RTN | - | - | - | - | 0.5000 | 0.1000 | 90.00% |"
