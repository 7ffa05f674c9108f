"""Which kind of checkpoint a directory holds, and where its decoder stack lives (architecture knowledge as data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tts_awq.checkpoint.arch import head_dim
from tts_awq.checkpoint.confine import is_pickle
from tts_awq.checkpoint.files import read_json
from tts_awq.errors import UserError

TTS_KIND = "qwen3_tts"
CAUSAL_LM_KIND = "causal_lm"
CODEC_DIR = "speech_tokenizer"
SUPPORTED_CAUSAL_LM = ("llama", "qwen2", "qwen3")

#: The seven Linear layers of a Qwen3/Llama decoder layer that become INT4, relative to the layer.
DECODER_LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)

#: Every Linear outside the talker decoder layers of a Qwen3-TTS checkpoint stays BF16. Matched as substrings.
TTS_MODULES_NOT_CONVERTED = ("talker.code_predictor", "talker.codec_head", "talker.text_projection", "speaker_encoder")


@dataclass(frozen=True)
class DecoderSpec:
    """The causal-LM view of a checkpoint's decoder stack."""

    model_type: str  # transformers decoder family: qwen3 / qwen2 / llama
    layer_prefix: str  # e.g. "talker.model.layers."
    num_layers: int
    final_norm: str  # key of the final RMSNorm weight
    embed: str | None  # token embedding used to turn ids into inputs_embeds (codec embedding for the talker)
    head: str | None  # output projection (codec_head for the talker)
    config: dict[str, Any] = field(default_factory=dict)  # kwargs for the transformers config class

    def layer_key(self, index: int, rest: str) -> str:
        return f"{self.layer_prefix}{index}.{rest}"

    def linear_names(self, index: int) -> list[str]:
        return [f"{self.layer_prefix}{index}.{name}" for name in DECODER_LINEARS]

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])

    def transformers_config(self) -> Any:
        import transformers

        cls = {
            "qwen3": transformers.Qwen3Config,
            "qwen2": transformers.Qwen2Config,
            "llama": transformers.LlamaConfig,
        }[self.model_type]
        config = cls(**self.config)
        config._attn_implementation = "sdpa"
        return config


@dataclass(frozen=True)
class Layout:
    root: Path
    kind: str
    config: dict[str, Any]
    decoder: DecoderSpec

    @property
    def has_codec(self) -> bool:
        return (self.root / CODEC_DIR / "config.json").is_file()

    def require_codec(self) -> None:
        """A Qwen3-TTS checkpoint must hold a codec whose weights are safetensors (a pickled codec is bad input:
        loading it could run code, and no output of tts-awq carries it)."""
        if self.kind != TTS_KIND:
            return
        codec = self.root / CODEC_DIR
        if not self.has_codec:
            raise UserError(
                f"{codec}: missing (the codec is needed to synthesize); "
                "pass --codec-from BASE to copy it from a base checkpoint such as Qwen/Qwen3-TTS-12Hz-1.7B-Base"
            )
        if any((codec / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
            return
        pickles = [path for path in sorted(codec.iterdir()) if path.is_file() and is_pickle(path)]
        if pickles:
            raise UserError(f"{pickles[0]}: the codec's weights are a pickle file, which tts-awq does not load "
                            "(loading it can run code); convert it to speech_tokenizer/model.safetensors or pass "
                            "--codec-from BASE")
        raise UserError(f"{codec}: holds no model.safetensors (the codec's weights); restore it or pass --codec-from "
                        "BASE")

    @property
    def modules_to_not_convert(self) -> list[str]:
        if self.kind == TTS_KIND:
            return list(TTS_MODULES_NOT_CONVERTED)
        return ["lm_head"]


def _talker_decoder(config: dict[str, Any], path: Path) -> DecoderSpec:
    talker = config.get("talker_config")
    if not isinstance(talker, dict):
        raise UserError(f"{path}: qwen3_tts config without a talker_config object; restore the original config.json")
    needed = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    missing = [k for k in needed if k not in talker]
    if missing:
        raise UserError(f"{path}: talker_config lacks {', '.join(missing)}; restore the original config.json")
    rope = talker.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise UserError(f"{path}: talker rope_type {rope.get('rope_type')!r} is not supported (only default M-RoPE)")
    hidden = int(talker["hidden_size"])
    heads = int(talker["num_attention_heads"])
    decoder_config = {
        "vocab_size": int(talker.get("vocab_size", 3072)),
        "hidden_size": hidden,
        "intermediate_size": int(talker["intermediate_size"]),
        "num_hidden_layers": int(talker["num_hidden_layers"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(talker["num_key_value_heads"]),
        "head_dim": head_dim(talker) or hidden // heads,
        "rms_norm_eps": float(talker.get("rms_norm_eps", 1e-6)),
        "rope_theta": float(talker.get("rope_theta", 10000.0)),
        "max_position_embeddings": int(talker.get("max_position_embeddings", 32768)),
        "hidden_act": talker.get("hidden_act", "silu"),
        "attention_bias": bool(talker.get("attention_bias", False)),
        "rope_scaling": None,  # three identical M-RoPE streams == plain RoPE (docs, section 8)
        "tie_word_embeddings": False,
    }
    return DecoderSpec(
        model_type="qwen3",
        layer_prefix="talker.model.layers.",
        num_layers=decoder_config["num_hidden_layers"],
        final_norm="talker.model.norm.weight",
        embed="talker.model.codec_embedding.weight",
        head="talker.codec_head.weight",
        config=decoder_config,
    )


def _causal_lm_decoder(config: dict[str, Any], path: Path) -> DecoderSpec:
    needed = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in needed if k not in config]
    if missing:
        raise UserError(f"{path}: {config.get('model_type')} config lacks {', '.join(missing)}; restore config.json")
    keep = {
        k: v
        for k, v in config.items()
        if k not in {"architectures", "quantization_config", "transformers_version", "torch_dtype", "dtype"}
    }
    keep.pop("model_type", None)
    tied = bool(config.get("tie_word_embeddings", False))
    return DecoderSpec(
        model_type=config["model_type"],
        layer_prefix="model.layers.",
        num_layers=int(config["num_hidden_layers"]),
        final_norm="model.norm.weight",
        embed="model.embed_tokens.weight",
        head="model.embed_tokens.weight" if tied else "lm_head.weight",
        config=keep,
    )


def detect_layout(root: Path) -> Layout:
    """Read ``root/config.json`` and describe the checkpoint; unsupported layouts raise a one-line UserError."""
    root = Path(root)
    config_path = root / "config.json"
    config = read_json(config_path, "config.json")
    model_type = config.get("model_type")
    if model_type == TTS_KIND or "talker_config" in config:
        return Layout(root=root, kind=TTS_KIND, config=config, decoder=_talker_decoder(config, config_path))
    if model_type in SUPPORTED_CAUSAL_LM:
        return Layout(root=root, kind=CAUSAL_LM_KIND, config=config, decoder=_causal_lm_decoder(config, config_path))
    raise UserError(
        f"{config_path}: model_type {model_type!r} is not supported; expected qwen3_tts or a "
        f"{'/'.join(SUPPORTED_CAUSAL_LM)} causal LM"
    )
