"""Import qwen-tts 0.1.1 on a CPU-only torch.

PyPI's torchaudio is a CUDA build that fails to load its native library beside CPU torch 2.13. qwen-tts only
imports the pure-Python ``torchaudio.compliance.kaldi`` (for the unused 25 Hz codec), so we tell torchaudio its
extension is unavailable before anything imports it. Import qwen-tts only through this module (via :mod:`tts_awq.qwen_tts`).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import types
import warnings
from functools import cache
from types import ModuleType


def _stub_torchaudio_extension() -> None:
    if "torchaudio._extension" in sys.modules:
        return
    stub = types.ModuleType("torchaudio._extension")
    stub._IS_TORCHAUDIO_EXT_AVAILABLE = False  # type: ignore[attr-defined]
    stub._IS_ALIGN_AVAILABLE = False  # type: ignore[attr-defined]
    stub.fail_if_no_align = lambda f: f  # type: ignore[attr-defined]
    sys.modules["torchaudio._extension"] = stub


@cache
def qwen_tts_module() -> ModuleType:
    """Return the imported ``qwen_tts`` package (silencing its harmless flash-attn / SoX notices)."""
    _stub_torchaudio_extension()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("sox").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        devnull = open(os.devnull, "w")  # noqa: SIM115 - the import prints to stdout, results go to files
        saved = sys.stdout
        sys.stdout = devnull
        try:
            module = importlib.import_module("qwen_tts")
            importlib.import_module("qwen_tts.core.models")
        finally:
            sys.stdout = saved
            devnull.close()
    return module


def qwen_tts_classes() -> types.SimpleNamespace:
    """The qwen-tts classes the project uses, registered with the transformers Auto classes."""
    qwen_tts_module()
    from qwen_tts.core.models import (
        Qwen3TTSConfig,
        Qwen3TTSForConditionalGeneration,
        Qwen3TTSProcessor,
    )
    from qwen_tts.core.models.modeling_qwen3_tts import mel_spectrogram
    from qwen_tts.inference.qwen3_tts_model import Qwen3TTSModel
    from qwen_tts.inference.qwen3_tts_tokenizer import Qwen3TTSTokenizer
    from transformers import AutoConfig, AutoModel, AutoProcessor

    try:
        AutoConfig.register("qwen3_tts", Qwen3TTSConfig)
        AutoModel.register(Qwen3TTSConfig, Qwen3TTSForConditionalGeneration)
        AutoProcessor.register(Qwen3TTSConfig, Qwen3TTSProcessor)
    except ValueError:
        pass  # already registered
    return types.SimpleNamespace(
        Qwen3TTSConfig=Qwen3TTSConfig,
        Qwen3TTSForConditionalGeneration=Qwen3TTSForConditionalGeneration,
        Qwen3TTSProcessor=Qwen3TTSProcessor,
        Qwen3TTSModel=Qwen3TTSModel,
        Qwen3TTSTokenizer=Qwen3TTSTokenizer,
        mel_spectrogram=mel_spectrogram,
    )
