"""Upstream model surgery that precedes quantization (e.g. the Darwin-style FFN blend of a TTS talker and an LLM)."""

from tts_awq.upstream.blend import blend_ffn, blend_sweep

__all__ = ["blend_ffn", "blend_sweep"]
