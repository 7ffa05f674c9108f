"""GPU checks: CUDA quantization, loading and kernels of the INT4 package, and validate-awq on CUDA.

Skipped cleanly on machines without CUDA (CI); run them on a GPU machine with `pytest tests/test_gpu.py`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import tts_awq
from tts_awq.prompts import load_voice_clips, read_voice
from tts_awq.quantize.pipeline import QuantizeOptions, quantize_talker

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def cuda_package(tiny_root: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu") / "pkg"
    return quantize_talker(QuantizeOptions(src=str(tiny_root["tiny-darwin"]), out=out, n_samples=8, seq_len=48,
                                           device="cuda", progress=False))


@cuda
@pytest.mark.parametrize("kernel", ["auto", "int4mm", "dequant"])
def test_cuda_package_loads_and_synthesizes(cuda_package: Path, kernel: str) -> None:
    from tts_awq.offload import HostEmbedding

    major, _ = torch.cuda.get_device_capability()
    if kernel == "int4mm" and major < 8:
        pytest.skip("int4 tinygemm needs sm80+")
    tts = tts_awq.load_quantized(cuda_package, device="cuda", dtype="bfloat16", kernel=kernel,
                                 text_embedding_device="cpu")
    up = tts.model.talker.model.layers[0].mlp.up_proj
    assert up.kernel == ("dequant" if kernel == "dequant" or major < 8 else "int4mm")
    assert all(t.is_cuda for t in up.buffers())
    assert isinstance(tts.model.talker.model.text_embedding, HostEmbedding)
    assert not tts.model.talker.model.text_embedding.weight.is_cuda
    assert "text_embedding" not in tts.tts_awq_bytes.get("cuda:0", {})
    wav, sr = read_voice(load_voice_clips()[0])
    torch.manual_seed(0)
    wavs, out_sr = tts.generate_voice_clone(text="Hello.", language="english", ref_audio=(wav, sr),
                                            x_vector_only_mode=True, max_new_tokens=16)
    assert out_sr == 24000 and np.isfinite(wavs[0]).all() and wavs[0].size % 1920 == 0


@cuda
@pytest.mark.parametrize("shape", [(2048, 2048, 128), (6144, 2048, 128), (2048, 6144, 64), (1024, 2048, 32),
                                   (512, 1024, 256)])
def test_cuda_int4mm_matches_the_dequantized_weight(shape: tuple[int, int, int]) -> None:
    from tts_awq.quantize.int4 import quantize
    from tts_awq.quantize.linear import AwqInt4Linear
    from tts_awq.quantize.pack import dequantize_gemm

    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("int4 tinygemm needs sm80+")
    out_features, in_features, group = shape
    w = torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(0)) * 0.05
    for kernel in ("int4mm", "dequant"):
        module = AwqInt4Linear.from_quantized(quantize(w, 4, group))
        dense = dequantize_gemm(module.qweight, module.qzeros, module.scales, group, torch.float64)
        module.to("cuda")
        assert module.prepare(kernel) == kernel
        x = torch.randn(3, in_features, device="cuda", dtype=torch.bfloat16)
        ref = x.double().cpu() @ dense.t()
        err = float((module(x).double().cpu() - ref).norm() / ref.norm())
        assert err < 2e-2, (kernel, shape, err)


@cuda
def test_cuda_kernels_agree_under_teacher_forcing(cuda_package: Path) -> None:
    """The whole INT4 talker on CUDA: int4mm (bf16 tinygemm) vs the exact dequant kernel on the same captured rows.
    Both read the same integers; the only difference is int4mm's bf16 scale/zero arithmetic, so first-codebook
    logits must agree to bf16 rounding, far below what a packing or layout error gives (relative error ~1)."""
    from tts_awq.qwen_tts.forward import codec_logits, talker_hidden
    from tts_awq.qwen_tts.generate import VoiceClone, generate_voice_clone

    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("int4 tinygemm needs sm80+")
    wav, sr = read_voice(load_voice_clips()[0])
    request = VoiceClone(text="Hello there.", lang="english", ref_audio=(wav, sr), ref_text="", icl=False, seed=3)
    fast = tts_awq.load_quantized(cuda_package, device="cuda", dtype="bfloat16", kernel="int4mm")
    rows = generate_voice_clone(fast, [request], max_new_tokens=24, capture=True)[0].rows
    exact = tts_awq.load_quantized(cuda_package, device="cuda", dtype="bfloat16", kernel="dequant")
    a, b = codec_logits(fast, talker_hidden(fast, rows)), codec_logits(exact, talker_hidden(exact, rows))
    assert rows.shape[0] > 10
    assert float((a - b).norm() / b.norm()) < 5e-2
    assert float((a.argmax(-1) == b.argmax(-1)).double().mean()) >= 0.9


@cuda
def test_validate_awq_runs_on_cuda(cuda_package: Path, tiny_root: dict[str, Path], tmp_path: Path) -> None:
    """validate-awq --device cuda end to end on the tiny package (quick profile, gates off): report written,
    exit 0 or 1 (a gate verdict), never a crash."""
    import json
    import shutil

    from tts_awq.cli import validate_awq_main

    pkg = tmp_path / "pkg"
    shutil.copytree(cuda_package, pkg)
    gates = tmp_path / "gates.json"
    gates.write_text(json.dumps({"median_duration_ratio": None, "teacher_top1": None, "kl_mean": None,
                                 "speaker_similarity_drop": None, "stop_signal_ratio": None,
                                 "runaway_excess_upper95": None}))
    code = validate_awq_main([str(pkg), "--reference", str(tiny_root["tiny-darwin"]), "--device", "cuda",
                              "--profile", "quick", "--n-prompts", "4", "--max-new-tokens", "24", "--gates",
                              str(gates), "--batch-size", "4"])
    assert code in (0, 1)
    report = json.loads((pkg / "validation" / "report.json").read_text())
    assert report["settings"]["device"].startswith("cuda")
