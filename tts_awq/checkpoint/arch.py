"""Architecture facts read from config.json: talker fields that must agree, head_dim, AWQ package detection,
the quantization group size, and what a Hugging Face repo id looks like. One home, used by every stage."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tts_awq.errors import UserError

#: talker_config fields that fix the decoder's tensor shapes (a codec or a blend partner must match them).
TALKER_SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads", "head_dim", "vocab_size", "num_code_groups")
#: talker_config fields that fix the token interface (text embedding and codec EOS), beside the shapes.
TALKER_TOKEN_FIELDS = ("text_hidden_size", "text_vocab_size", "codec_eos_token_id")
#: code_predictor_config fields that must agree between a package and its reference.
PREDICTOR_FIELDS = ("hidden_size", "num_hidden_layers", "vocab_size", "num_code_groups")

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def is_repo_id(text: object) -> bool:
    """``owner/name`` as the Hub spells it (not a relative or absolute path)."""
    value = str(text) if text is not None else ""
    return bool(value) and bool(_REPO_ID.match(value)) and not value.startswith((".", "/", "~"))


def _get(config: Mapping[str, Any] | Any, key: str) -> Any:
    return config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)


def head_dim(config: Mapping[str, Any] | Any) -> int | None:
    """``head_dim``, or ``hidden_size // num_attention_heads`` when the config leaves it out (Qwen3 default);
    None when neither is known. Accepts a dict or a config object."""
    if _get(config, "head_dim"):
        return int(_get(config, "head_dim"))
    try:
        return int(_get(config, "hidden_size")) // int(_get(config, "num_attention_heads"))
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def with_head_dim(config: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(config)
    out["head_dim"] = head_dim(config)
    return out


def field_mismatches(a: Mapping[str, Any], b: Mapping[str, Any], fields: tuple[str, ...],
                     label: str = "") -> list[str]:
    """``"[label ]field a != b"`` for every field (head_dim derived when missing) on which ``a`` and ``b`` differ."""
    a, b = with_head_dim(a), with_head_dim(b)
    prefix = f"{label} " if label else ""
    return [f"{prefix}{k} {a.get(k)!r} != {b.get(k)!r}" for k in fields if a.get(k) != b.get(k)]


def awq_config(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``quantization_config`` of an AWQ package, or None for anything else."""
    qconfig = config.get("quantization_config")
    return dict(qconfig) if isinstance(qconfig, Mapping) and qconfig.get("quant_method") == "awq" else None


def is_awq_package(config: Mapping[str, Any]) -> bool:
    return awq_config(config) is not None


def group_size(config: Mapping[str, Any], where: str) -> int:
    """The AWQ group size the package declares; a missing or non-positive one is a UserError (never a default)."""
    qconfig = awq_config(config) or {}
    value = qconfig.get("group_size")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{where}: quantization_config.group_size {value!r} is not a positive integer; "
                        "re-run quantize-talker")
    return value


def bits(config: Mapping[str, Any]) -> int:
    qconfig = awq_config(config) or {}
    return int(qconfig.get("bits", qconfig.get("w_bit", 4)))
