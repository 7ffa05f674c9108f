"""Random-weight checkpoints built with the real qwen-tts / transformers classes (tests, smoke runs, benchmarks).

Three directories mirror the real pipeline (docs/qwen3-tts-checkpoint.md, section 10), at the sizes of a
:class:`~tts_awq.testing.presets.Preset` (``tiny`` by default, ``1.7b`` for the real Qwen3-TTS-12Hz-1.7B-Base shapes):

* ``tiny-tts-base``: a Qwen3-TTS-12Hz "base" checkpoint (talker, code predictor, speaker encoder, 12 Hz codec,
  byte-level text tokenizer with every special token at its real id). Hidden sizes are multiples of 128 so the
  default AWQ group size works, and salient input channels are planted so AWQ has something to find.
* ``tiny-qwen3-lm``: a ``Qwen3ForCausalLM`` with exactly the talker's decoder shape (stands in for Qwen3-1.7B).
* ``tiny-darwin``: the Darwin-style FFN blend of the two (:func:`tts_awq.upstream.blend.blend_ffn`).

The tiny preset materializes each model with the library init and ``save_pretrained`` (the historical recipe).
Streamed presets (``1.7b``) build the module tree on the meta device for the exact state-dict plan, then generate
every tensor from its own seeded generator directly in BF16 and write it through :class:`ShardedWriter`, so peak
memory is about one tensor. The codec is the tiny one in every preset (:data:`tts_awq.testing.presets.CODEC_NOTE`).

Everything is deterministic in the seed: two builds give byte-identical weight files.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tts_awq.checkpoint import ShardedWriter, atomic_output_dir, read_json, sha256_file, write_json
from tts_awq.checkpoint.store import INDEX_NAME, WEIGHTS_NAME
from tts_awq.provenance import Provenance
from tts_awq.testing.presets import CODEC_NOTE, TINY, Preset, get_preset

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

#: Bump when the recipe changes, so cached tiny builds are rebuilt.
TINY_FORMAT_VERSION = 1
#: The same for the streamed recipe (every preset but tiny).
STREAMED_FORMAT_VERSION = 1

#: ``transformers_version`` written into every config.json: <= 4.57.2 (and a non-Mistral model_type) makes
#: ``_patch_mistral_regex`` keep the Qwen pre-tokenizer when qwen-tts loads with ``fix_mistral_regex=True``
#: (docs section 9.3); a fixed value also keeps the files independent of the installed transformers.
TINY_TRANSFORMERS_VERSION = "4.57.2"

TTS_DIR, LM_DIR, DARWIN_DIR = TINY.dir_names

SAMPLE_RATE = 24000
SAMPLES_PER_FRAME = 1920

#: The decoder shape shared by the tiny talker and the tiny Qwen3 LM.
DECODER = TINY.decoder

CODEC_IDS = {
    "codec_pad_id": 2148,
    "codec_bos_id": 2149,
    "codec_eos_token_id": 2150,
    "codec_think_id": 2154,
    "codec_nothink_id": 2155,
    "codec_think_bos_id": 2156,
    "codec_think_eos_id": 2157,
}
CODEC_LANGUAGE_ID = {
    "chinese": 2055,
    "english": 2050,
    "german": 2053,
    "italian": 2070,
    "portuguese": 2071,
    "spanish": 2054,
    "japanese": 2058,
    "korean": 2064,
    "french": 2061,
    "russian": 2069,
}

#: Text-tokenizer specials of Qwen3-TTS from 151643 on, in id order: (content, special). The ids qwen-tts uses
#: (im_start 151644, im_end 151645, tts_pad/bos/eos 151671-151673) come from config.json, not from the names.
TEXT_SPECIALS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
    ("<|audio_start|>", True),
    ("<|audio_end|>", True),
    ("<tts_pad>", True),
    ("<tts_text_bos>", True),
    ("<tts_text_eod>", True),
    ("<tts_text_bos_single>", True),
    ("<|audio_pad|>", True),
)
TEXT_FIRST_SPECIAL_ID = 151643
TEXT_VOCAB_SIZE = 151936

#: Words that get their own BPE token; "assistant" must be one token so that "<|im_start|>assistant\n" is
#: exactly 3 tokens (qwen-tts slices ``input_id[:, :3]`` and ``[:, 3:-5]``).
_WORDS = (
    "assistant", "user", "system", "Hello", "hello", "world", "the", "The", "and", "this", "This", "is", "a",
    "test", "of", "to", "in", "it", "that", "voice", "speech", "quick", "brown", "fox", "jumps", "over", "lazy",
    "dog", "sample", "reference", "audio", "text", "good", "morning", "today", "weather", "nice", "one", "two",
    "three", "yes", "no",
)  # fmt: skip

GENERATION_DEFAULTS: dict[str, Any] = {
    "do_sample": True,
    "repetition_penalty": 1.05,
    "temperature": 0.9,
    "top_p": 1.0,
    "top_k": 50,
    "subtalker_dosample": True,
    "subtalker_temperature": 0.9,
    "subtalker_top_p": 1.0,
    "subtalker_top_k": 50,
    "max_new_tokens": 64,
}

#: ModelScope metadata file that the real ``speech_tokenizer/`` carries (76 bytes); qwen-tts never reads it.
CODEC_CONFIGURATION = {"framework": "pytorch", "task": "feature-extraction", "allow_remote": True}

#: Salient-channel recipe (AWQ needs activation outliers to protect): per talker layer, multiply
#: ``SALIENT_CHANNELS`` fixed channels of both RMSNorm weights by a gain in ``SALIENT_GAIN``, and overwrite a
#: ``HEAVY_TAIL_FRACTION`` of every decoder Linear weight with entries of ``HEAVY_TAIL_SIGMA`` x init std.
SALIENT_CHANNELS = 3
SALIENT_GAIN = (8.0, 12.0)
HEAVY_TAIL_FRACTION = 0.003
HEAVY_TAIL_SIGMA = (6.0, 10.0)
#: Gain on the codec_head EOS row so the random talker stops on its own now and then.
EOS_ROW_GAIN = 3.0

_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")  # fmt: skip


# --------------------------------------------------------------------------------------------- configs


def tts_config_kwargs(preset: Preset | str = TINY) -> dict[str, Any]:
    """Keyword arguments of ``Qwen3TTSConfig`` for ``preset``'s base model (plain dicts, as qwen-tts requires)."""
    preset = get_preset(preset)
    talker = {
        "vocab_size": 3072,
        **preset.decoder,
        "rope_scaling": {
            "rope_type": "default",
            "mrope_section": list(preset.mrope_section),
            "interleaved": True,
        },
        "num_code_groups": 16,
        "text_hidden_size": preset.text_hidden_size,
        "text_vocab_size": TEXT_VOCAB_SIZE,
        "position_id_per_seconds": 13,
        **CODEC_IDS,
        "spk_id": {},
        "spk_is_dialect": {},
        "codec_language_id": dict(CODEC_LANGUAGE_ID),
        "code_predictor_config": dict(preset.code_predictor),
    }
    speaker = {
        "mel_dim": 128,  # hard-coded in extract_speaker_embedding
        "enc_dim": preset.decoder["hidden_size"],  # the x-vector is used as a talker input row
        **copy.deepcopy(preset.speaker_encoder),
        "sample_rate": SAMPLE_RATE,
    }
    return {
        "talker_config": talker,
        "speaker_encoder_config": speaker,
        "tokenizer_type": "qwen3_tts_tokenizer_12hz",
        "tts_model_size": preset.tts_model_size,
        "tts_model_type": "base",
        "im_start_token_id": 151644,
        "im_end_token_id": 151645,
        "tts_pad_token_id": 151671,
        "tts_bos_token_id": 151672,
        "tts_eos_token_id": 151673,
    }


def tiny_tts_config_kwargs() -> dict[str, Any]:
    """Keyword arguments of ``Qwen3TTSConfig`` for the tiny base model."""
    return tts_config_kwargs(TINY)


def tiny_codec_config_kwargs() -> dict[str, Any]:
    """``Qwen3TTSTokenizerV2Config`` kwargs: Mimi encoder + 12 Hz decoder, 16 x 2048 codebooks, 1920 samples/frame."""
    encoder = {
        "sampling_rate": SAMPLE_RATE,
        "hidden_size": 32,
        "num_filters": 4,  # 4 -> 8 -> 16 -> 32 -> 64 channels through the 4 downsampling blocks
        "upsampling_ratios": [8, 6, 5, 4],  # hop 960, then the stride-2 downsample -> 1920
        "codebook_size": 2048,
        "codebook_dim": 32,
        "vector_quantization_hidden_dimension": 32,
        "num_quantizers": 16,
        "num_semantic_quantizers": 1,
        "upsample_groups": 32,  # must divide hidden_size
        "num_hidden_layers": 1,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "sliding_window": 250,
        "frame_rate": 12.5,
    }
    decoder = {
        "codebook_size": 2048,
        "codebook_dim": 32,  # read by the decoder but not an __init__ argument: must be explicit
        "hidden_size": 32,
        "latent_dim": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "num_quantizers": 16,
        "upsample_rates": [8, 5, 4, 3],
        "upsampling_ratios": [2, 2],  # 8*5*4*3*2*2 = 1920
        "decoder_dim": 32,
        "sliding_window": 72,
    }
    return {
        "encoder_config": encoder,
        "decoder_config": decoder,
        "encoder_valid_num_quantizers": 16,
        "input_sample_rate": SAMPLE_RATE,
        "output_sample_rate": SAMPLE_RATE,
        "decode_upsample_rate": SAMPLES_PER_FRAME,
        "encode_downsample_rate": SAMPLES_PER_FRAME,
    }


@dataclass(frozen=True)
class _LMTokenizerSpec:
    n_regular: int  # id of the first added token
    specials: tuple[tuple[str, bool], ...]
    eos: str
    pad: str
    max_len: int
    bos_id: int
    eos_id: int


def _lm_tokenizer_spec(preset: Preset) -> _LMTokenizerSpec:
    if preset.lm_tokenizer == "tail":
        specials = _lm_specials(preset.lm_vocab_size)
        end = specials["<|endoftext|>"]
        return _LMTokenizerSpec(
            min(specials.values()), tuple((name, True) for name in specials), "<|endoftext|>", "<|endoftext|>",
            32768, end, end,
        )  # fmt: skip
    if preset.lm_tokenizer == "qwen3":  # Qwen3-1.7B: specials 151643 (<|endoftext|>) .. 151668 (</think>)
        specials = TEXT_SPECIALS[: [name for name, _ in TEXT_SPECIALS].index("</think>") + 1]
        if TEXT_FIRST_SPECIAL_ID + len(specials) > preset.lm_vocab_size:
            raise ValueError(f"preset {preset.name}: lm_vocab_size {preset.lm_vocab_size} < Qwen3's specials")
        return _LMTokenizerSpec(
            TEXT_FIRST_SPECIAL_ID, specials, "<|im_end|>", "<|endoftext|>", 131072,
            TEXT_FIRST_SPECIAL_ID, TEXT_FIRST_SPECIAL_ID + 2,
        )  # fmt: skip
    raise ValueError(f"preset {preset.name}: unknown lm_tokenizer {preset.lm_tokenizer!r}")


def lm_config_kwargs(preset: Preset | str = TINY) -> dict[str, Any]:
    """``Qwen3Config`` kwargs for the stand-in of Qwen3-1.7B (tied embeddings, like the real one)."""
    preset = get_preset(preset)
    spec = _lm_tokenizer_spec(preset)
    return {
        **preset.decoder,
        "vocab_size": preset.lm_vocab_size,
        "rope_scaling": None,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "max_window_layers": preset.decoder["num_hidden_layers"],
        "bos_token_id": spec.bos_id,
        "eos_token_id": spec.eos_id,
        **preset.lm_overrides,
    }


def tiny_lm_config_kwargs(vocab_size: int = 1024) -> dict[str, Any]:
    """``Qwen3Config`` kwargs for the tiny stand-in of Qwen3-1.7B."""
    from dataclasses import replace

    return lm_config_kwargs(
        TINY if vocab_size == TINY.lm_vocab_size else replace(TINY, lm_vocab_size=vocab_size)
    )


# --------------------------------------------------------------------------------------------- tokenizers


def _byte_level_vocab(n_regular: int, words: tuple[str, ...] = _WORDS) -> tuple[dict[str, int], list[str]]:
    """A byte-level BPE vocab (256 byte symbols, one merge chain per " word" and word, fillers up to
    ``n_regular``) and its merges. Earlier chains rank first, so "assistant" (listed first) is always one token;
    later words may split where an earlier chain wins."""
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    byte_to_char = bytes_to_unicode()
    tokens = [byte_to_char[b] for b in sorted(byte_to_char)]
    seen = set(tokens)
    merges: list[str] = []
    for word in words:
        for form in (" " + word, word):
            chars = "".join(byte_to_char[b] for b in form.encode("utf-8"))
            current = chars[0]
            for ch in chars[1:]:
                merged = current + ch
                if merged not in seen:
                    merges.append(f"{current} {ch}")
                    tokens.append(merged)
                    seen.add(merged)
                current = merged
    if len(tokens) > n_regular:
        raise ValueError(f"vocab of {n_regular} is too small for {len(tokens)} byte/merge tokens")
    tokens += [f"<unused{i}>" for i in range(n_regular - len(tokens))]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def _build_tokenizer(
    workdir: Path, n_regular: int, specials: tuple[tuple[str, bool], ...], eos: str, pad: str, max_len: int
) -> Any:
    """A ``Qwen2TokenizerFast`` whose added tokens sit at ``n_regular``, ``n_regular + 1``, ... in order."""
    from tokenizers import AddedToken
    from transformers import Qwen2TokenizerFast

    vocab, merges = _byte_level_vocab(n_regular)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (workdir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = Qwen2TokenizerFast(
        vocab_file=str(workdir / "vocab.json"),
        merges_file=str(workdir / "merges.txt"),
        unk_token=None,
        bos_token=None,
        eos_token=None,
        pad_token=None,
        model_max_length=max_len,
        clean_up_tokenization_spaces=False,
        errors="replace",
        split_special_tokens=False,
    )
    for content, special in specials:  # one at a time: ids follow the call order
        tokenizer.add_tokens(
            [
                AddedToken(
                    content, lstrip=False, rstrip=False, normalized=False, single_word=False, special=special
                )
            ],
            special_tokens=special,
        )
    tokenizer.eos_token = eos
    tokenizer.pad_token = pad
    for offset, (content, _) in enumerate(specials):
        got = tokenizer.convert_tokens_to_ids(content)
        if got != n_regular + offset:
            raise RuntimeError(f"tokenizer put {content} at {got}, expected {n_regular + offset}")
    (workdir / "vocab.json").unlink()
    (workdir / "merges.txt").unlink()
    return tokenizer


#: Tokenizer files the real Qwen3-TTS repos do not ship (docs section 4); qwen-tts rebuilds the fast tokenizer
#: from vocab.json + merges.txt + tokenizer_config.json (added_tokens_decoder holds every special at its id).
_NOT_IN_REAL_LAYOUT = (
    "tokenizer.json",
    "added_tokens.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def _mirror_real_tokenizer_files(root: Path) -> None:
    for name in _NOT_IN_REAL_LAYOUT:
        (root / name).unlink(missing_ok=True)
    # The real repos carry a processor config naming the processor class; AutoProcessor reads it first.
    write_json(root / "preprocessor_config.json", {"processor_class": "Qwen3TTSProcessor"})


def _lm_specials(vocab_size: int) -> dict[str, int]:
    names = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    return {name: vocab_size - len(names) + i for i, name in enumerate(names)}


# --------------------------------------------------------------------------------------------- weights


def salient_channels(seed: int, hidden_size: int = DECODER["hidden_size"]) -> list[int]:
    """The input channels whose RMSNorm gains are inflated in a tiny build with ``seed``."""
    generator = torch.Generator().manual_seed(1_000_003 + seed)
    return sorted(torch.randperm(hidden_size, generator=generator)[:SALIENT_CHANNELS].tolist())


@torch.no_grad()
def _plant_salience(layers: Any, seed: int, std: float) -> dict[str, Any]:
    """Inflate fixed channels of both RMSNorms of every layer and give every decoder Linear a heavy tail."""
    channels = salient_channels(seed, int(layers[0].input_layernorm.weight.shape[0]))
    generator = torch.Generator().manual_seed(2_000_003 + seed)
    index = torch.tensor(channels)
    gains = []
    for layer in layers:
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            gain = SALIENT_GAIN[0] + (SALIENT_GAIN[1] - SALIENT_GAIN[0]) * torch.rand(
                len(channels), generator=generator
            )
            norm.weight[index] *= gain.to(norm.weight.dtype)
            gains.append([round(float(g), 3) for g in gain])
        for name in _LINEARS:
            weight = layer.get_submodule(name).weight
            flat = weight.view(-1)
            count = max(1, int(flat.numel() * HEAVY_TAIL_FRACTION))
            where = torch.randperm(flat.numel(), generator=generator)[:count]
            low, high = HEAVY_TAIL_SIGMA
            magnitude = (low + (high - low) * torch.rand(count, generator=generator)) * std
            sign = torch.randint(0, 2, (count,), generator=generator) * 2 - 1
            flat[where] = (sign * magnitude).to(flat.dtype)
    return {
        "channels": channels,
        "norm_gains": gains,
        "heavy_tail_fraction": HEAVY_TAIL_FRACTION,
        "heavy_tail_sigma": list(HEAVY_TAIL_SIGMA),
    }


@torch.no_grad()
def _randomize_codebooks(codec: torch.nn.Module) -> None:
    """Codebooks start as zeros (both the Mimi encoder's ``embed_sum`` and the decoder's ``embedding_sum``), so a
    fresh codec encodes everything to code 0 and decodes every code to silence. Give them N(0, 1) entries."""
    for module in codec.modules():
        for name in ("embed_sum", "embedding_sum"):
            tensor = getattr(module, name, None)
            if isinstance(tensor, torch.Tensor):
                tensor.normal_()
                if getattr(module, "_embed", None) is not None:
                    module._embed = None


#: Target standard deviation of the tiny codec's waveform before its final clamp to [-1, 1].
CODEC_OUTPUT_STD = 0.1


@torch.no_grad()
def _rescale_codec_decoder(codec: Any, seed: int) -> None:
    """The codec decoder is a deep conv stack initialised with std 0.02, so its output is ~1e-8 (silence).
    Re-initialise its convolutions variance-preserving (std 1/sqrt(fan_in)), then scale the last one so random
    codes decode to noise-like audio with std ``CODEC_OUTPUT_STD``: audio metrics on the tiny model then mean
    something."""
    decoder = codec.decoder
    generator = torch.Generator().manual_seed(3_000_017 + seed)
    for module in decoder.modules():
        if isinstance(module, torch.nn.ConvTranspose1d):
            fan_in = module.in_channels * module.kernel_size[0] / module.stride[0]
        elif isinstance(module, torch.nn.Conv1d):
            fan_in = module.in_channels // module.groups * module.kernel_size[0]
        else:
            continue
        module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / math.sqrt(fan_in))
        if module.bias is not None:
            module.bias.zero_()
    codes = torch.randint(
        0, decoder.config.codebook_size, (1, decoder.config.num_quantizers, 16), generator=generator
    )
    hidden = decoder.pre_conv(decoder.quantizer.decode(codes)).transpose(1, 2)
    hidden = decoder.pre_transformer(inputs_embeds=hidden).last_hidden_state.permute(0, 2, 1)
    for blocks in decoder.upsample:
        for block in blocks:
            hidden = block(hidden)
    for block in decoder.decoder:
        hidden = block(hidden)
    last = decoder.decoder[-1].conv
    last.weight.mul_(CODEC_OUTPUT_STD / max(float(hidden.std()), 1e-12))


def _fix_config_json(path: Path, drop_speaker_model_type: bool = False) -> None:
    """Pin transformers_version and (for the TTS model) drop the ``"model_type": ""`` that save_pretrained adds to
    the speaker-encoder sub-config, which would crash the reload (docs section 9.2)."""
    config = read_json(path, "config.json")
    config["transformers_version"] = TINY_TRANSFORMERS_VERSION
    if drop_speaker_model_type and isinstance(config.get("speaker_encoder_config"), dict):
        config["speaker_encoder_config"].pop("model_type", None)
    write_json(path, config)


def _decoder_sizes(preset: Preset = TINY) -> dict[str, int]:
    return {
        k: int(v) for k, v in preset.decoder.items() if k.endswith(("_size", "_layers", "_heads", "head_dim"))
    }


# --------------------------------------------------------------------------------------------- streamed weights


def meta_tts_model(preset: Preset | str = TINY) -> Any:
    """``Qwen3TTSForConditionalGeneration`` for ``preset`` on the meta device (shapes only, nothing allocated)."""
    from tts_awq.qwen_tts import qwen_tts_classes

    qt = qwen_tts_classes()
    with torch.device("meta"):
        return qt.Qwen3TTSForConditionalGeneration(qt.Qwen3TTSConfig(**tts_config_kwargs(preset))).eval()


def meta_lm_model(preset: Preset | str = TINY) -> Any:
    """``Qwen3ForCausalLM`` for ``preset`` on the meta device (tied ``lm_head``, like Qwen3-1.7B)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    with torch.device("meta"):
        return Qwen3ForCausalLM(Qwen3Config(**lm_config_kwargs(preset))).eval()


def weight_plan(
    model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16
) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """What ``save_pretrained`` would write for ``model``: every parameter once (tied weights under their first
    name) and every persistent buffer, floating tensors as ``dtype``, in state-dict order."""
    plan = {name: (dtype, tuple(p.shape)) for name, p in model.named_parameters()}
    transient = {
        f"{prefix}.{buffer}" if prefix else buffer
        for prefix, module in model.named_modules()
        for buffer in module._non_persistent_buffers_set
    }
    for name, buffer in model.named_buffers():
        if name not in transient:
            plan[name] = (dtype if buffer.dtype.is_floating_point else buffer.dtype, tuple(buffer.shape))
    return plan


def plan_parameters(plan: dict[str, tuple[torch.dtype, tuple[int, ...]]]) -> int:
    return sum(math.prod(shape) for _, shape in plan.values())


def _tensor_generator(seed: int, name: str) -> torch.Generator:
    """A generator seeded from (seed, tensor name): each tensor is independent of the order they are made in."""
    digest = hashlib.sha256(f"tts-awq-random/{seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


_SALIENT_NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight")
_LINEAR_WEIGHTS = tuple(f"{name}.weight" for name in _LINEARS)


@dataclass
class _Recipe:
    """How :func:`_random_tensor` fills a checkpoint: init std, the decoder layers that get planted salience
    (``layer_prefix``), the salient channels, and an optional (tensor, row) whose row is scaled by EOS_ROW_GAIN."""

    seed: int
    std: float
    layer_prefix: str
    channels: list[int]
    eos_row: tuple[str, int] | None = None
    norm_gains: dict[str, list[float]] = field(default_factory=dict)

    def layer_part(self, name: str) -> tuple[int, str] | None:
        if not name.startswith(self.layer_prefix):
            return None
        index, _, rest = name[len(self.layer_prefix) :].partition(".")
        return (int(index), rest) if index.isdigit() else None

    def salience(self, num_layers: int) -> dict[str, Any]:
        """Provenance entry in the tiny recipe's format (norm gains in layer order, input before post-attn)."""
        gains = [
            self.norm_gains[f"{self.layer_prefix}{layer}.{norm}"]
            for layer in range(num_layers)
            for norm in _SALIENT_NORMS
        ]
        return {
            "channels": self.channels,
            "norm_gains": gains,
            "heavy_tail_fraction": HEAVY_TAIL_FRACTION,
            "heavy_tail_sigma": list(HEAVY_TAIL_SIGMA),
        }


@torch.no_grad()
def _random_tensor(name: str, dtype: torch.dtype, shape: tuple[int, ...], recipe: _Recipe) -> torch.Tensor:
    """One tensor, generated directly in ``dtype``: biases 0, 1-D weights (RMSNorms) 1 with the salient channels
    of the decoder-layer norms raised to a gain in SALIENT_GAIN, matrices N(0, std) with a heavy tail in the
    decoder-layer Linears (the tiny recipe's salience, drawn per tensor)."""
    if name.endswith(".bias") or not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    layer = recipe.layer_part(name)
    if len(shape) == 1:
        tensor = torch.ones(shape, dtype=dtype)
        if layer is not None and layer[1] in _SALIENT_NORMS:
            generator = _tensor_generator(recipe.seed, name)
            low, high = SALIENT_GAIN
            gain = low + (high - low) * torch.rand(len(recipe.channels), generator=generator)
            tensor[torch.tensor(recipe.channels)] = gain.to(dtype)
            recipe.norm_gains[name] = [round(float(g), 3) for g in gain]
        return tensor
    generator = _tensor_generator(recipe.seed, name)
    tensor = torch.empty(shape, dtype=dtype).normal_(0.0, recipe.std, generator=generator)
    if layer is not None and layer[1] in _LINEAR_WEIGHTS:
        flat = tensor.view(-1)
        count = max(1, int(flat.numel() * HEAVY_TAIL_FRACTION))
        # unique(): with a repeated index, which write wins in flat[where] = ... is unspecified (not deterministic)
        where = torch.randint(0, flat.numel(), (count,), generator=generator).unique()
        count = where.numel()
        low, high = HEAVY_TAIL_SIGMA
        magnitude = (low + (high - low) * torch.rand(count, generator=generator)) * recipe.std
        sign = torch.randint(0, 2, (count,), generator=generator) * 2 - 1
        flat[where] = (sign * magnitude).to(dtype)
    if recipe.eos_row is not None and name == recipe.eos_row[0]:
        row = recipe.eos_row[1]
        tensor[row] = (tensor[row].float() * EOS_ROW_GAIN).to(dtype)
    return tensor


def _generated(plan: dict[str, tuple[torch.dtype, tuple[int, ...]]], recipe: _Recipe
               ) -> Iterator[tuple[str, torch.Tensor]]:
    """Every planned tensor in plan order, generated by a pool of threads a few tensors ahead of the writer. Each
    tensor has its own generator (seeded by its name), so the bytes do not depend on the thread count; at most
    ``2 x threads`` tensors wait in memory."""
    threads = max(1, min(16, os.cpu_count() or 1))
    names = list(plan)
    with ThreadPoolExecutor(threads, thread_name_prefix="random-tensor") as pool:
        pending: dict[int, Any] = {}
        for index, name in enumerate(names):
            for ahead in range(index, min(len(names), index + 2 * threads)):
                if ahead not in pending:
                    dtype, shape = plan[names[ahead]]
                    pending[ahead] = pool.submit(_random_tensor, names[ahead], dtype, shape, recipe)
            yield name, pending.pop(index).result()


def _stream_weights(
    out: Path,
    plan: dict[str, tuple[torch.dtype, tuple[int, ...]]],
    recipe: _Recipe,
    max_shard_bytes: int | None,
    what: str,
) -> list[str]:
    """Generate and write every planned tensor, one at a time; returns the weight file names."""
    total_bytes = sum(math.prod(shape) * dtype.itemsize for dtype, shape in plan.values())
    writer = ShardedWriter(
        out, plan, metadata={"format": "pt"}, max_shard_bytes=max_shard_bytes or total_bytes + 1
    )
    done, next_report, start = 0, 0.25, time.perf_counter()
    try:
        for name, tensor in _generated(plan, recipe):
            writer.write(name, tensor)
            done += tensor.numel() * tensor.element_size()
            del tensor
            if done >= next_report * total_bytes:
                log.info(
                    "%s: %.0f%% of %.2f GB written (%.0fs)",
                    what,
                    100 * done / total_bytes,
                    total_bytes / 1e9,
                    time.perf_counter() - start,
                )
                while next_report * total_bytes <= done:
                    next_report += 0.25
    except BaseException:
        try:
            writer.close()
        except ValueError:  # "never written": the original error matters
            pass
        raise
    return writer.close()


def _save_meta_config(model: Any, out: Path, *, generation_config: bool) -> None:
    """config.json (and generation_config.json) as ``model.save_pretrained`` would write them for BF16 weights."""
    model.config.architectures = [type(model).__name__]
    model.config.dtype = torch.bfloat16
    model.config.save_pretrained(str(out))
    if generation_config and getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(out))


def _stream_tts_model(tmp: Path, preset: Preset, seed: int) -> tuple[int, dict[str, Any]]:
    model = meta_tts_model(preset)
    plan = weight_plan(model)
    _save_meta_config(model, tmp, generation_config=False)
    recipe = _Recipe(
        seed=seed,
        std=float(model.config.talker_config.initializer_range),
        layer_prefix="talker.model.layers.",
        channels=salient_channels(seed, preset.decoder["hidden_size"]),
        eos_row=("talker.codec_head.weight", CODEC_IDS["codec_eos_token_id"]),
    )
    del model
    log.info(
        "streaming %s TTS weights: %.1f M params, %d tensors",
        preset.name,
        plan_parameters(plan) / 1e6,
        len(plan),
    )
    _stream_weights(tmp, plan, recipe, preset.tts_max_shard_bytes, f"{preset.name} TTS")
    return plan_parameters(plan), recipe.salience(preset.decoder["num_hidden_layers"])


def _stream_lm_model(tmp: Path, preset: Preset, seed: int) -> tuple[int, dict[str, Any]]:
    model = meta_lm_model(preset)
    plan = weight_plan(model)
    model.generation_config.do_sample = False  # a random LM: greedy output is the useful default
    _save_meta_config(model, tmp, generation_config=True)
    recipe = _Recipe(
        seed=seed,
        std=float(model.config.initializer_range),
        layer_prefix="model.layers.",
        channels=salient_channels(seed, preset.decoder["hidden_size"]),
    )
    del model
    log.info(
        "streaming %s Qwen3 LM weights: %.1f M params, %d tensors",
        preset.name, plan_parameters(plan) / 1e6, len(plan),
    )  # fmt: skip
    _stream_weights(tmp, plan, recipe, preset.lm_max_shard_bytes, f"{preset.name} LM")
    return plan_parameters(plan), recipe.salience(preset.decoder["num_hidden_layers"])


# --------------------------------------------------------------------------------------------- builders


def _identity(preset: Preset) -> dict[str, Any]:
    """What, besides the seed (and alpha), names a build: the tiny preset keeps its historical marker and
    provenance fields; every other preset adds its name and fingerprint."""
    if preset == TINY:
        return {"format_version": TINY_FORMAT_VERSION}
    return {
        "format_version": STREAMED_FORMAT_VERSION if preset.streamed else TINY_FORMAT_VERSION,
        "preset": preset.name,
        "preset_fingerprint": preset.fingerprint(),
    }


def _stage(preset: Preset, what: str) -> str:
    return f"tiny-{what}" if preset == TINY else f"random-{what}"


def _materialize_tts_model(tmp: Path, preset: Preset, seed: int, qt: Any) -> tuple[int, dict[str, Any]]:
    """The tiny recipe: library init under ``torch.manual_seed(seed)``, planted salience, ``save_pretrained``."""
    torch.manual_seed(seed)
    config = qt.Qwen3TTSConfig(**tts_config_kwargs(preset))
    model = qt.Qwen3TTSForConditionalGeneration(config).eval()
    salience = _plant_salience(model.talker.model.layers, seed, config.talker_config.initializer_range)
    with torch.no_grad():
        model.talker.codec_head.weight[CODEC_IDS["codec_eos_token_id"]] *= EOS_ROW_GAIN
    model = model.to(torch.bfloat16)
    model.save_pretrained(tmp, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    del model
    return params, salience


def _write_codec(codec_dir: Path, seed: int, decoder_overrides: dict[str, Any] | None = None) -> int:
    """The tiny 12 Hz codec (FP32) with its feature extractor and ModelScope file; returns its parameter count.
    ``decoder_overrides`` change the decoder_config (a preset's ``codec_decoder``)."""
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model
    from transformers import EncodecFeatureExtractor

    torch.manual_seed(seed + 7919)
    kwargs = tiny_codec_config_kwargs()
    kwargs["decoder_config"] = {**kwargs["decoder_config"], **(decoder_overrides or {})}
    codec = Qwen3TTSTokenizerV2Model(Qwen3TTSTokenizerV2Config(**kwargs)).eval()
    _randomize_codebooks(codec)
    _rescale_codec_decoder(codec, seed)
    codec.save_pretrained(codec_dir, safe_serialization=True)
    codec_params = sum(p.numel() for p in codec.parameters())
    del codec
    _fix_config_json(codec_dir / "config.json")
    EncodecFeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, return_attention_mask=True
    ).save_pretrained(str(codec_dir))
    (codec_dir / "configuration.json").write_text(json.dumps(CODEC_CONFIGURATION), encoding="utf-8")
    return codec_params


def build_tts(out: Path, seed: int = 0, *, overwrite: bool = False, preset: Preset | str = TINY) -> Path:
    """Build a random Qwen3-TTS-12Hz base checkpoint of ``preset``'s size at ``out`` (BF16 weights, FP32 tiny
    codec). Deterministic in ``seed``. Reload with ``Qwen3TTSModel.from_pretrained(out, dtype=...,
    device_map="cpu", attn_implementation="sdpa")``."""
    from tts_awq.qwen_tts import qwen_tts_classes

    preset = get_preset(preset)
    qt = qwen_tts_classes()
    start = time.perf_counter()
    identity = _identity(preset)
    provenance = Provenance(
        stage=_stage(preset, "tts"),
        parameters={"seed": seed, "format_version": identity.pop("format_version"), **identity},
    )
    with atomic_output_dir(Path(out), overwrite=overwrite) as tmp, torch.random.fork_rng(devices=[]):
        with provenance.timed("model"):
            if preset.streamed:
                params, salience = _stream_tts_model(tmp, preset, seed)
            else:
                params, salience = _materialize_tts_model(tmp, preset, seed, qt)
        _fix_config_json(tmp / "config.json", drop_speaker_model_type=True)
        (tmp / "generation_config.json").write_text(
            json.dumps(GENERATION_DEFAULTS, indent=2), encoding="utf-8"
        )

        with provenance.timed("tokenizer"):
            tokenizer = _build_tokenizer(
                tmp / ".tokenizer-work",
                TEXT_FIRST_SPECIAL_ID,
                TEXT_SPECIALS,
                "<|im_end|>",
                "<|endoftext|>",
                131072,
            )
            (tmp / ".tokenizer-work").rmdir()
            qt.Qwen3TTSProcessor(tokenizer=tokenizer).save_pretrained(str(tmp))
            _mirror_real_tokenizer_files(tmp)

        with provenance.timed("codec"):
            codec_params = _write_codec(tmp / "speech_tokenizer", seed, preset.codec_decoder)

        provenance.parameters.update(
            {
                "talker": _decoder_sizes(preset),
                "parameters": params,
                "codec_parameters": codec_params,
                "salience": salience,
                "eos_row_gain": EOS_ROW_GAIN,
                "transformers_version_pinned": TINY_TRANSFORMERS_VERSION,
            }
        )
        if preset != TINY:
            provenance.parameters["codec_note"] = CODEC_NOTE
        provenance.write(tmp)
    if preset != TINY:
        log.info("%s TTS: %s (%.1f M codec params)", preset.name, CODEC_NOTE, codec_params / 1e6)
    log.info(
        "built %s TTS (seed %d, %.1f M params) at %s in %.1fs",
        preset.name,
        seed,
        params / 1e6,
        out,
        time.perf_counter() - start,
    )
    return Path(out)


def build_tiny_tts(out: Path, seed: int = 0, *, overwrite: bool = False) -> Path:
    """Build a tiny Qwen3-TTS-12Hz base checkpoint at ``out`` (BF16 ``model.safetensors``, FP32 codec).

    Deterministic in ``seed``. Reload with ``Qwen3TTSModel.from_pretrained(out, dtype=torch.float32,
    device_map="cpu", attn_implementation="sdpa")``.
    """
    return build_tts(out, seed, overwrite=overwrite, preset=TINY)


def _materialize_lm_model(tmp: Path, preset: Preset, seed: int) -> tuple[int, dict[str, Any]]:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(**lm_config_kwargs(preset))
    model = Qwen3ForCausalLM(config).eval()
    salience = _plant_salience(model.model.layers, seed, config.initializer_range)
    model = model.to(torch.bfloat16)
    model.generation_config.do_sample = False  # a random LM: greedy output is the useful default
    model.save_pretrained(tmp, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    del model
    return params, salience


def build_qwen3_lm(out: Path, seed: int = 1, *, overwrite: bool = False, preset: Preset | str = TINY) -> Path:
    """Build a random ``Qwen3ForCausalLM`` with ``preset``'s talker decoder shape (BF16, byte-level tokenizer)."""
    preset = get_preset(preset)
    start = time.perf_counter()
    spec = _lm_tokenizer_spec(preset)
    identity = _identity(preset)
    provenance = Provenance(
        stage=_stage(preset, "qwen3-lm"),
        parameters={"seed": seed, "format_version": identity.pop("format_version"), **identity},
    )
    with atomic_output_dir(Path(out), overwrite=overwrite) as tmp, torch.random.fork_rng(devices=[]):
        with provenance.timed("model"):
            if preset.streamed:
                params, salience = _stream_lm_model(tmp, preset, seed)
            else:
                params, salience = _materialize_lm_model(tmp, preset, seed)
        _fix_config_json(tmp / "config.json")
        with provenance.timed("tokenizer"):
            tokenizer = _build_tokenizer(
                tmp / ".tokenizer-work", spec.n_regular, spec.specials, spec.eos, spec.pad, spec.max_len
            )
            (tmp / ".tokenizer-work").rmdir()
            tokenizer.save_pretrained(str(tmp))
        provenance.parameters.update(
            {"decoder": _decoder_sizes(preset), "parameters": params, "salience": salience}
        )
        provenance.write(tmp)
    log.info(
        "built %s Qwen3 LM (seed %d, %.2f M params) at %s in %.1fs",
        preset.name,
        seed,
        params / 1e6,
        out,
        time.perf_counter() - start,
    )
    return Path(out)


def build_tiny_qwen3_lm(out: Path, seed: int = 1, *, overwrite: bool = False) -> Path:
    """Build a tiny ``Qwen3ForCausalLM`` with the tiny talker's decoder shape (BF16, byte-level tokenizer)."""
    return build_qwen3_lm(out, seed, overwrite=overwrite, preset=TINY)


def weights_digest(path: Path) -> str | dict[str, str] | None:
    """sha256 of a checkpoint's weights: one hex string for ``model.safetensors``, ``{shard: hex}`` for a
    sharded checkpoint, None when there are none."""
    path = Path(path)
    if (path / WEIGHTS_NAME).is_file():
        return sha256_file(path / WEIGHTS_NAME)
    if not (path / INDEX_NAME).is_file():
        return None
    try:
        shards = sorted(
            set(json.loads((path / INDEX_NAME).read_text(encoding="utf-8"))["weight_map"].values())
        )
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        return None
    if not all((path / shard).is_file() for shard in shards):
        return None
    return {shard: sha256_file(path / shard) for shard in shards}


def _marker_matches(marker: Path, expected: dict[str, Any], paths: dict[str, Path]) -> bool:
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    if not isinstance(recorded, dict) or {k: recorded.get(k) for k in expected} != expected:
        return False
    hashes = recorded.get("model_sha256", {})
    for name, path in paths.items():
        if not (path / "config.json").is_file():
            return False
        digest = weights_digest(path)
        if digest is None or hashes.get(name) != digest:
            return False
    return True


def build_darwin(
    root: Path, seed: int = 0, alpha: float = 0.03, preset: Preset | str = TINY
) -> dict[str, Path]:
    """Build (or reuse) ``preset``'s three directories under ``root`` (``tiny-tts-base``, ``tiny-qwen3-lm``,
    ``tiny-darwin`` for the tiny preset); returns the three paths by directory name, in that order.

    The TTS model uses ``seed``, the LM ``seed + 1``; the blend uses ``alpha``. A marker file in ``root`` (preset,
    seed, alpha, recipe version, weight hashes) decides whether an existing build can be reused.
    """
    from tts_awq.upstream.blend import blend_ffn, check_alpha

    preset = get_preset(preset)
    alpha = check_alpha(alpha)
    root = Path(root)
    paths = {name: root / name for name in preset.dir_names}
    tts_path, lm_path, darwin_path = paths.values()
    expected = {**_identity(preset), "seed": seed, "alpha": alpha}
    if preset == TINY:  # the historical marker's key order
        expected = {"format_version": TINY_FORMAT_VERSION, "seed": seed, "alpha": alpha}
    if _marker_matches(root / preset.marker_name, expected, paths):
        log.info("reusing %s checkpoints in %s (seed %d, alpha %g)", preset.name, root, seed, alpha)
        return paths
    root.mkdir(parents=True, exist_ok=True)
    (root / preset.marker_name).unlink(missing_ok=True)
    build_tts(tts_path, seed=seed, overwrite=True, preset=preset)
    build_qwen3_lm(lm_path, seed=seed + 1, overwrite=True, preset=preset)
    blend_ffn(tts_path, lm_path, alpha, darwin_path, overwrite=True)
    marker = {**expected, "model_sha256": {name: weights_digest(path) for name, path in paths.items()}}
    write_json(root / preset.marker_name, marker)
    return paths


def build_tiny_darwin(
    root: Path, seed: int = 0, alpha: float = 0.03, preset: Preset | str = TINY
) -> dict[str, Path]:
    """Build (or reuse) ``root/{tiny-tts-base, tiny-qwen3-lm, tiny-darwin}``; returns the three paths by name.

    The TTS model uses ``seed``, the LM ``seed + 1``; the blend uses ``alpha``. A marker file in ``root`` (seed,
    alpha, recipe version, weight hashes) decides whether an existing build can be reused. ``preset`` picks
    other sizes (see :func:`build_darwin`).
    """
    return build_darwin(root, seed, alpha, preset)


def reference_wav(seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    """A deterministic 24 kHz float32 test signal (two tones + noise) to use as ``ref_audio``."""
    import numpy as np

    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    rng = np.random.default_rng(seed)
    wav = (
        0.3 * np.sin(2 * math.pi * 220.0 * t)
        + 0.1 * np.sin(2 * math.pi * 555.0 * t)
        + 0.02 * rng.standard_normal(n)
    )
    return wav.astype(np.float32)
