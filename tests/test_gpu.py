"""GPU checks: CUDA quantization and loading of the INT4 package, and the plain from_pretrained + autoawq route.

Skipped cleanly on machines without CUDA (CI); run them on a GPU machine with `pytest tests/test_gpu.py`.
"""

from __future__ import annotations

import importlib.util
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
@pytest.mark.skipif(importlib.util.find_spec("awq") is None, reason="needs autoawq installed")
def test_plain_from_pretrained_with_autoawq(cuda_package: Path) -> None:
    """transformers 4.57 + autoawq reads the same files through WQLinear_GEMM."""
    from tts_awq.qwen_tts import qwen_tts_classes

    tts = qwen_tts_classes().Qwen3TTSModel.from_pretrained(str(cuda_package), device_map="cuda",
                                                           dtype=torch.float16)
    ours = tts_awq.load_quantized(cuda_package, device="cuda", dtype="float16")
    x = torch.randn(1, 12, tts.model.config.talker_config.hidden_size, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        a = tts.model.talker.model(inputs_embeds=x).last_hidden_state
        b = ours.model.talker.model(inputs_embeds=x).last_hidden_state
    assert torch.allclose(a.float(), b.float(), atol=5e-2, rtol=5e-2)
