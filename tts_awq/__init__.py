"""tts-awq: AWQ INT4 packages of LLM-based TTS talkers (Qwen3-TTS) that still speak, with proof."""

from __future__ import annotations

from typing import Any

from tts_awq.process import prefer_passive_openmp

prefer_passive_openmp()

__version__ = "0.1.0"

__all__ = ["__version__", "load_quantized"]


def load_quantized(path: Any, device: str = "cpu", dtype: Any = None, kernel: str = "auto",
                   text_embedding_device: str | None = None, cached_dequant: bool = False,
                   verify: bool = False) -> Any:
    """Load a tts-awq INT4 package as a working ``qwen_tts.Qwen3TTSModel``.

    ``kernel``: ``"auto"`` (torch's int4 kernel wherever it runs, else dequant, with one logged reason),
    ``"int4mm"`` (error if it cannot run) or ``"dequant"``. ``text_embedding_device="cpu"`` keeps the 0.6 GB
    text embedding in host memory on a GPU run. ``verify=True`` checks every file's sha256 against the
    package's provenance first.

    Example::

        import tts_awq
        tts = tts_awq.load_quantized("out_dir", device="cuda", dtype="bfloat16")
        wavs, sr = tts.generate_voice_clone(text="Hello.", language="English",
                                            ref_audio="voice.wav", x_vector_only_mode=True)
    """
    from tts_awq.loading import load_quantized as _load

    return _load(path, device=device, dtype=dtype, kernel=kernel, text_embedding_device=text_embedding_device,
                 cached_dequant=cached_dequant, verify=verify)
