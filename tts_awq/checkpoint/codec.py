"""Giving a Qwen3-TTS checkpoint the codec (``speech_tokenizer/``) and processor files of a base checkpoint whose
talker has the same architecture: the check and the copy, shared by ``tts-awq repack`` and ``quantize-talker
--codec-from``."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from tts_awq.checkpoint.arch import TALKER_SHAPE_FIELDS, with_head_dim
from tts_awq.checkpoint.confine import confined, is_pickle
from tts_awq.checkpoint.files import hash_tree, read_json
from tts_awq.checkpoint.layout import CODEC_DIR, TTS_KIND, Layout, detect_layout
from tts_awq.errors import UserError

log = logging.getLogger(__name__)

#: Top-level processor/tokenizer files copied from BASE when SRC lacks them (never config.json or weights).
COMPANION_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "generation_config.json",
)


def talker_arch_mismatches(src: Layout, base: Layout) -> list[str]:
    """Every disagreement between the talker architectures of ``src`` and ``base`` ("field SRC=a BASE=b")."""
    a = with_head_dim(src.config.get("talker_config") or {})
    b = with_head_dim(base.config.get("talker_config") or {})
    out = [f"{k} SRC={a.get(k)} BASE={b.get(k)}" for k in TALKER_SHAPE_FIELDS if a.get(k) != b.get(k)]
    tok_a, tok_b = src.config.get("tokenizer_type"), base.config.get("tokenizer_type")
    if tok_a is not None and tok_b is not None and tok_a != tok_b:
        out.append(f"tokenizer_type SRC={tok_a} BASE={tok_b}")
    return out


def _tts_layout(root: Path, what: str) -> Layout:
    config = read_json(root / "config.json", "config.json")
    if config.get("model_type") != TTS_KIND and "talker_config" not in config:
        raise UserError(f"{root}: {what} is not a Qwen3-TTS checkpoint (config.json has no talker_config)")
    return detect_layout(root)


def _codec_files(root: Path) -> dict[str, str]:
    codec = root / CODEC_DIR
    return hash_tree(codec) if codec.is_dir() else {}


def plan_codec_copy(dst: Path, base: Path) -> list[str]:
    """Check ``dst`` against ``base`` and list the relative paths of ``base`` that :func:`copy_codec_into` would copy.

    Raises a one-line UserError when the talker architectures differ (every mismatch listed), when BASE has no
    codec, or when ``dst`` already has a ``speech_tokenizer/`` that differs from BASE's.
    """
    dst_layout = _tts_layout(dst, "the checkpoint to repack")
    base_layout = _tts_layout(base, "--codec-from BASE")
    mismatches = talker_arch_mismatches(dst_layout, base_layout)
    if mismatches:
        raise UserError(
            f"{base}: talker architecture differs from {dst} ({'; '.join(mismatches)}); "
            "use a base of the same size (e.g. a 1.7B base for a 1.7B model)"
        )
    if not base_layout.has_codec:
        raise UserError(f"{base / CODEC_DIR}: --codec-from BASE has no codec (speech_tokenizer/config.json)")
    base_layout.require_codec()  # its weights are safetensors (a pickled codec is never copied)
    base_codec = _codec_files(base)
    dst_codec = _codec_files(dst)
    plan: list[str] = []
    if dst_codec:
        if dst_codec != base_codec:
            state = "a complete" if dst_layout.has_codec else "an incomplete"
            raise UserError(
                f"{dst / CODEC_DIR}: already present ({state} codec that differs from BASE's); nothing to "
                f"repack: use it as is, or remove {CODEC_DIR}/ from a copy first to take BASE's"
            )
    else:
        for rel in sorted(base_codec):
            if is_pickle(base / CODEC_DIR / rel):
                log.warning("not copied: %s/%s (a pickle file; outputs carry safetensors and plain files only)",
                            CODEC_DIR, rel)
            else:
                plan.append(f"{CODEC_DIR}/{rel}")
    plan.extend(name for name in COMPANION_FILES
                if confined(base, name, "--codec-from file").is_file() and not (dst / name).exists())
    return plan


def copy_codec_into(dst_dir: str | Path, base_dir: str | Path) -> list[str]:
    """Copy BASE's ``speech_tokenizer/`` and missing processor/tokenizer files into the prepared ``dst_dir``.

    ``dst_dir`` must already hold the model's config.json; ``base_dir`` is a local checkpoint directory (resolve a
    Hub id with :func:`tts_awq.checkpoint.resolve_source` first, to record its revision). Files ``dst_dir`` already
    has are left alone; an identical codec is not copied again. Returns the copied relative paths (sorted).

    Example::

        copied = copy_codec_into(out_tmp, base.path)   # e.g. ['speech_tokenizer/config.json', ...]
    """
    dst, base = Path(dst_dir), Path(base_dir)
    if not base.is_dir():
        raise UserError(
            f"{base}: --codec-from BASE directory not found; pass a local Qwen3-TTS base checkpoint"
        )
    plan = plan_codec_copy(dst, base)
    for rel in plan:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(base / rel, target)
    return sorted(plan)
