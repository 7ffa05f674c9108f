"""Loading a Qwen3-TTS checkpoint and the config facts callers need (EOS id, emittable ids, languages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tts_awq.qwen_tts.imports import qwen_tts_classes


def load_tts_model(model_dir: Path, device: str, dtype: torch.dtype) -> Any:
    """A ``qwen_tts.Qwen3TTSModel`` (model + processor + codec) from a local checkpoint directory."""
    classes = qwen_tts_classes()
    return classes.Qwen3TTSModel.from_pretrained(
        str(model_dir), dtype=dtype, device_map=device, attn_implementation="sdpa"
    )


def supported_languages(tts: Any) -> set[str]:
    return {s.lower() for s in (tts.model.get_supported_languages() or [])}


def language_for(tts: Any, lang: str, supported: set[str] | None = None) -> str:
    """The model's name for ``lang`` (prompts are checked against the known names when loaded), else ``auto``."""
    names = supported if supported is not None else supported_languages(tts)
    lang = lang.lower()
    return lang if lang in names else "auto"


def eos_id(tts: Any) -> int:
    return int(tts.model.config.talker_config.codec_eos_token_id)


def codec_vocab_size(tts: Any) -> int:
    return int(tts.model.config.talker_config.vocab_size)


def allowed_ids(tts: Any) -> list[int]:
    """The ids generation can emit: codes 0..vocab-1025 plus EOS (qwen-tts suppresses the other 1023)."""
    vocab = codec_vocab_size(tts)
    eos = eos_id(tts)
    return [i for i in range(vocab) if i < vocab - 1024 or i == eos]
