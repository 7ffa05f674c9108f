"""Shapes of the random-weight checkpoint sets that :mod:`tts_awq.testing.tiny` builds (plain data, no torch import).

A :class:`Preset` fixes everything about one set of three directories (TTS base, Qwen3 LM, Darwin blend) except
the seed and the blend alpha:

* ``tiny`` (default): toy sizes for tests and smoke runs, built by materializing the model (the historical
  recipe; byte-identical to earlier builds for the same seed).
* ``1.7b``: exactly the shapes of ``Qwen/Qwen3-TTS-12Hz-1.7B-Base`` (talker, code predictor, speaker encoder;
  docs/qwen3-tts-checkpoint.md sections 2 and 3) and of ``Qwen/Qwen3-1.7B`` for the LM, with random BF16 weights
  streamed to disk one tensor at a time (the full model never exists in memory). For benchmarks at real scale.

The codec (``speech_tokenizer/``) is the tiny codec in every preset: the real 12 Hz codec's dimensions are not
documented, so the ``1.7b`` TTS directory holds a real-size talker with a toy codec (audio is noise either way).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

#: Note logged by builds whose talker is not tiny (the lead's README quotes it).
CODEC_NOTE = (
    "speech_tokenizer/ is the tiny random codec (same as the tiny preset's): the real Qwen3-TTS 12 Hz codec's "
    "dimensions are not documented"
)


@dataclass(frozen=True)
class Preset:
    """One random checkpoint set. ``decoder`` is shared by the talker and the LM (the Darwin blend needs equal
    shapes); ``code_predictor`` and ``speaker_encoder`` are passed to the qwen-tts configs (the speaker encoder's
    ``mel_dim``, ``enc_dim`` = talker hidden and ``sample_rate`` are always set)."""

    name: str
    tts_dir: str
    lm_dir: str
    darwin_dir: str
    decoder: dict[str, Any]
    mrope_section: tuple[int, int, int]
    text_hidden_size: int
    code_predictor: dict[str, Any]
    speaker_encoder: dict[str, Any]
    tts_model_size: str
    lm_vocab_size: int
    #: "tail": byte-level vocab with <|endoftext|>, <|im_start|>, <|im_end|> as the last three ids (tiny LM);
    #: "qwen3": Qwen3's specials at their real ids (151643...) inside a 151936-row vocab.
    lm_tokenizer: str = "tail"
    lm_overrides: dict[str, Any] = field(default_factory=dict)
    #: False: materialize the model with the qwen-tts/transformers init and save_pretrained (tiny, historical);
    #: True: plan the state dict on the meta device and write each tensor as it is generated.
    streamed: bool = True
    #: None: one model.safetensors; else shards of at most this many bytes plus model.safetensors.index.json.
    tts_max_shard_bytes: int | None = None
    lm_max_shard_bytes: int | None = None
    #: overrides of the tiny codec's decoder_config (empty: the tiny codec every other preset uses)
    codec_decoder: dict[str, Any] = field(default_factory=dict)

    @property
    def dir_names(self) -> tuple[str, str, str]:
        return (self.tts_dir, self.lm_dir, self.darwin_dir)

    @property
    def marker_name(self) -> str:
        """Reuse marker in the output root (``.tiny-darwin.json`` for the tiny preset)."""
        return f".{self.darwin_dir}.json"

    def fingerprint(self) -> str:
        """sha256 of every field: a reuse marker only matches a build of exactly this preset."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


TINY = Preset(
    name="tiny",
    tts_dir="tiny-tts-base",
    lm_dir="tiny-qwen3-lm",
    darwin_dir="tiny-darwin",
    decoder={
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "hidden_act": "silu",
        "attention_bias": False,
        "initializer_range": 0.02,
    },
    mrope_section=(6, 5, 5),
    text_hidden_size=64,
    code_predictor={
        "vocab_size": 2048,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 65536,
        "num_code_groups": 16,
        "rms_norm_eps": 1e-6,
    },
    speaker_encoder={
        "enc_channels": [32, 32, 32, 32, 96],
        "enc_kernel_sizes": [5, 3, 3, 3, 1],
        "enc_dilations": [1, 2, 3, 4, 1],
        "enc_attention_channels": 16,
        "enc_res2net_scale": 4,
        "enc_se_channels": 16,
    },
    tts_model_size="tiny",
    lm_vocab_size=1024,
    lm_tokenizer="tail",
    streamed=False,
)

#: The tiny talker with a speaker encoder whose conv weights mlx-audio's shape rule reads unambiguously (every
#: kernel-1 conv has more than 64 input channels, as in the real model): the mlx export's load test uses it.
TINY_MLX = replace(
    TINY,
    name="tiny-mlx",
    tts_dir="tiny-mlx-tts-base",
    lm_dir="tiny-mlx-qwen3-lm",
    darwin_dir="tiny-mlx-darwin",
    speaker_encoder={**TINY.speaker_encoder, "enc_channels": [96, 96, 96, 96, 288], "enc_attention_channels": 80,
                     "enc_se_channels": 80},
    # two upsampling stages (16 * 30 * 2 * 2 = 1920 samples per frame) so the last one still has 128 channels,
    # and quantizer projections wider than 64: every kernel-1 conv has more than 64 input channels
    # decoder transformer head_dim 128 / 2 = 64: mlx-audio reads head_dim (default 64), qwen-tts derives it
    codec_decoder={"codebook_dim": 256, "latent_dim": 128, "decoder_dim": 512, "upsample_rates": [16, 30],
                   "hidden_size": 128, "intermediate_size": 256},
)

#: Qwen3-TTS-12Hz-1.7B-Base shapes (1928.7 M parameters, 3.86 GB BF16) and a Qwen3-1.7B-shaped LM.
QWEN3_TTS_1_7B = Preset(
    name="1.7b",
    tts_dir="random-1.7b-tts-base",
    lm_dir="random-1.7b-qwen3-lm",
    darwin_dir="random-1.7b-darwin",
    decoder={
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "hidden_act": "silu",
        "attention_bias": False,
        "initializer_range": 0.02,
    },
    mrope_section=(24, 20, 20),
    text_hidden_size=2048,
    code_predictor={
        "vocab_size": 2048,
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 5,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 65536,
        "num_code_groups": 16,
        "rms_norm_eps": 1e-6,
    },
    speaker_encoder={},  # qwen-tts defaults: channels [512]*4 + [1536], attention 128, res2net 8, SE 128
    tts_model_size="1b7",
    lm_vocab_size=151936,
    lm_tokenizer="qwen3",
    lm_overrides={"max_position_embeddings": 40960},  # Qwen3-1.7B's
    streamed=True,
    tts_max_shard_bytes=None,  # the real 1.7B-Base ships one model.safetensors
    lm_max_shard_bytes=2 << 30,  # the real Qwen3-1.7B is sharded: exercise the index path
)

#: The presets ``make_tiny_checkpoint.py --preset`` offers (TINY_MLX is for the mlx export tests only).
PRESETS: dict[str, Preset] = {preset.name: preset for preset in (TINY, QWEN3_TTS_1_7B)}


def get_preset(preset: str | Preset) -> Preset:
    """A :class:`Preset` by name (``tiny``, ``1.7b``); a Preset passes through. Unknown names raise UserError."""
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        from tts_awq.errors import UserError

        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]
