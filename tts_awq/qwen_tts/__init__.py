"""The one place that knows qwen-tts: importing it, loading a model, device/dtype rules, language names, the
talker-input capture hook, seeded voice-clone generation, codec decoding and the teacher-forcing forwards.

quantize/, validate/, loading.py and the test fixtures use these functions; nothing else calls a qwen-tts method.
"""

from tts_awq.qwen_tts.capture import TalkerCapture
from tts_awq.qwen_tts.device import default_dtype, resolve_device
from tts_awq.qwen_tts.forward import (
    codec_logits,
    speaker_embedding,
    sub_talker_logits,
    talker_hidden,
    talker_hidden_batch,
)
from tts_awq.qwen_tts.generate import (
    VoiceClone,
    VoiceCloneResult,
    decode_codes,
    generate_voice_clone,
    synthesize,
)
from tts_awq.qwen_tts.imports import qwen_tts_classes, qwen_tts_module
from tts_awq.qwen_tts.model import (
    allowed_ids,
    codec_vocab_size,
    eos_id,
    language_for,
    load_tts_model,
    supported_languages,
)

__all__ = [
    "TalkerCapture", "VoiceClone", "VoiceCloneResult", "allowed_ids", "codec_logits", "codec_vocab_size",
    "decode_codes", "default_dtype", "eos_id", "generate_voice_clone", "language_for", "load_tts_model",
    "qwen_tts_classes", "qwen_tts_module", "resolve_device", "speaker_embedding", "sub_talker_logits",
    "supported_languages", "synthesize", "talker_hidden", "talker_hidden_batch",
]
