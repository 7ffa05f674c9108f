"""Darwin-style FFN blend: lerp a Qwen3 LLM's MLP weights into a Qwen3-TTS talker, one tensor at a time.

For every talker layer N and every projection P in gate/up/down::

    talker.model.layers.N.mlp.P.weight = (1 - alpha) * W_tts + alpha * W_llm[model.layers.N.mlp.P.weight]

computed in float32 and cast back to the TTS tensor's dtype. Every other tensor is copied byte for byte, every
non-weight file (config, tokenizer, ``speech_tokenizer/``...) verbatim, and ``provenance.json`` records both
parents with their file hashes. alpha 0 reproduces the TTS weights exactly and alpha 1 the LLM's FFN exactly
(cast to the TTS dtype).

Example::

    from tts_awq.upstream.blend import blend_ffn
    blend_ffn("Qwen/Qwen3-TTS-12Hz-1.7B-Base", "Qwen/Qwen3-1.7B", 0.03, "darwin-0.03")
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from tts_awq.checkpoint import (
    ShardedWriter,
    TensorStore,
    atomic_output_dir,
    copy_tree,
    read_json,
    resolve_source,
)
from tts_awq.checkpoint.arch import head_dim, is_repo_id
from tts_awq.checkpoint.atomic import check_output_dir
from tts_awq.checkpoint.layout import TTS_KIND, detect_layout
from tts_awq.checkpoint.source import offline
from tts_awq.checkpoint.store import INDEX_NAME, WEIGHTS_NAME
from tts_awq.errors import UserError
from tts_awq.provenance import PROVENANCE_NAME, Provenance

log = logging.getLogger(__name__)

FFN_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
TTS_FFN = "talker.model.layers.{layer}.mlp.{proj}.weight"
LLM_FFN = "model.layers.{layer}.mlp.{proj}.weight"
LLM_MODEL_TYPE = "qwen3"

#: (name in the check, key in the TTS talker_config, key in the LLM config.json)
_ARCH_FIELDS = (
    ("hidden_size", "hidden_size"),
    ("intermediate_size", "intermediate_size"),
    ("num_hidden_layers", "num_hidden_layers"),
    ("num_attention_heads", "num_attention_heads"),
    ("num_key_value_heads", "num_key_value_heads"),
)

PathLike = str | os.PathLike[str]


def check_alpha(alpha: float) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError) as exc:
        raise UserError(f"alpha {alpha!r} is not a number; pass a value in [0, 1] such as 0.03") from exc
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise UserError(f"alpha {alpha!r} is outside [0, 1]; pass a value in [0, 1] such as 0.03")
    return value


def architecture_mismatches(talker: dict[str, Any], llm: dict[str, Any]) -> list[str]:
    """Every way the LLM's decoder differs from the TTS talker's, as ``field: tts X != llm Y`` strings."""
    problems = []
    model_type = llm.get("model_type")
    if model_type != LLM_MODEL_TYPE:
        problems.append(f"model_type: tts talker is {LLM_MODEL_TYPE!r} != llm {model_type!r}")
    for name, key in _ARCH_FIELDS:
        if talker.get(key) != llm.get(key):
            problems.append(f"{name}: tts {talker.get(key)} != llm {llm.get(key)}")
    if head_dim(talker) != head_dim(llm):
        problems.append(f"head_dim: tts {head_dim(talker)} != llm {head_dim(llm)}")
    return problems


def ffn_pairs(num_layers: int) -> list[tuple[str, str]]:
    """(TTS tensor name, LLM tensor name) for every blended FFN weight, in layer order."""
    return [
        (TTS_FFN.format(layer=layer, proj=proj), LLM_FFN.format(layer=layer, proj=proj))
        for layer in range(num_layers)
        for proj in FFN_PROJECTIONS
    ]


def _check_tensors(
    tts: TensorStore, llm: TensorStore, pairs: list[tuple[str, str]], tts_path: Path, llm_path: Path
) -> None:
    problems = []
    for tts_name, llm_name in pairs:
        if tts_name not in tts:
            problems.append(f"{tts_name} missing in {tts_path}")
        elif llm_name not in llm:
            problems.append(f"{llm_name} missing in {llm_path}")
        elif tts.info(tts_name).shape != llm.info(llm_name).shape:
            problems.append(
                f"{llm_name}: shape {list(llm.info(llm_name).shape)} != tts {list(tts.info(tts_name).shape)}"
            )
        elif (
            not llm.info(llm_name).torch_dtype.is_floating_point
            or not tts.info(tts_name).torch_dtype.is_floating_point
        ):
            problems.append(f"{llm_name}: dtype {llm.info(llm_name).dtype} is not a float type")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise UserError(
            f"cannot blend: {'; '.join(problems[:5])}{more}; point at matching, complete checkpoints"
        )


def lerp_weights(w_tts: torch.Tensor, w_llm: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - alpha) * w_tts + alpha * w_llm`` in float32, cast to ``w_tts.dtype``; exact at alpha 0 and 1."""
    if alpha == 0.0:
        return w_tts
    if alpha == 1.0:
        return w_llm.to(w_tts.dtype)
    mixed = (1.0 - alpha) * w_tts.to(torch.float32) + alpha * w_llm.to(torch.float32)
    return mixed.to(w_tts.dtype)


def _peek_config(spec: PathLike, revision: str | None) -> dict[str, Any] | None:
    """config.json of a local directory or a Hub repo (config only); None when it cannot be had cheaply, in
    which case :func:`resolve_source` reports the problem properly."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return read_json(path / "config.json") if (path / "config.json").is_file() else None
    text = str(spec)
    if path.exists() or not is_repo_id(text):
        return None  # not a Hub id: resolve_source says what is wrong
    try:
        from huggingface_hub import hf_hub_download

        local = hf_hub_download(repo_id=text, filename="config.json", revision=revision,
                                local_files_only=offline())
        data = json.loads(Path(local).read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - any failure here is re-raised with context by resolve_source
        return None
    return data if isinstance(data, dict) else None


def _check_architecture(
    tts_config: dict[str, Any], llm_config: dict[str, Any], tts_where: str, llm_where: str
) -> dict[str, Any]:
    """The TTS talker_config, after checking that the LLM's decoder has the talker's shape (one UserError)."""
    talker = tts_config.get("talker_config")
    if tts_config.get("model_type") != TTS_KIND or not isinstance(talker, dict):
        raise UserError(
            f"{tts_where}: not a Qwen3-TTS checkpoint (model_type {tts_config.get('model_type')!r}); "
            "pass the TTS model first, the LLM second"
        )
    problems = architecture_mismatches(talker, llm_config)
    if problems:
        raise UserError(
            f"{llm_where}: LLM decoder does not match the TTS talker ({'; '.join(problems)}); "
            "blend with a Qwen3 LLM of the talker's size (Qwen3-1.7B for the 1.7B talker)"
        )
    return talker


def _weight_files(store: TensorStore) -> set[str]:
    return set(store.files) | {WEIGHTS_NAME, INDEX_NAME}


def blend_ffn(
    tts_src: PathLike,
    llm_src: PathLike,
    alpha: float,
    out: PathLike,
    overwrite: bool = False,
    *,
    tts_revision: str | None = None,
    llm_revision: str | None = None,
) -> Path:
    """Write ``out``: the TTS checkpoint with its talker FFN weights lerped toward the LLM's by ``alpha``.

    ``tts_src``/``llm_src`` are local directories or Hugging Face repo ids. Architecture mismatches, a bad alpha
    or an existing ``out`` (without ``overwrite``) raise a one-line :class:`UserError` before anything is written.
    """
    alpha = check_alpha(alpha)
    check_output_dir(Path(out), overwrite, stage="blend")
    # Hub sources: compare the two config.json files before downloading gigabytes of weights.
    peeked_tts, peeked_llm = _peek_config(tts_src, tts_revision), _peek_config(llm_src, llm_revision)
    if peeked_tts is not None and peeked_llm is not None:
        _check_architecture(peeked_tts, peeked_llm, str(tts_src), str(llm_src))

    provenance = Provenance(stage="blend")
    with provenance.timed("resolve"):
        tts_source = resolve_source(tts_src, revision=tts_revision, what="TTS checkpoint")
        llm_source = resolve_source(llm_src, revision=llm_revision, what="LLM checkpoint")
    tts_path, llm_path = tts_source.path, llm_source.path
    tts_config = read_json(tts_path / "config.json", "TTS config.json")
    llm_config = read_json(llm_path / "config.json", "LLM config.json")
    talker = _check_architecture(tts_config, llm_config, str(tts_path), str(llm_path))
    tts_layout = detect_layout(tts_path)
    if tts_layout.has_codec:
        tts_layout.require_codec()  # a pickled codec would be left out of the copy: refuse it up front

    tts_store, llm_store = TensorStore(tts_path), TensorStore(llm_path)
    pairs = ffn_pairs(int(talker["num_hidden_layers"]))
    _check_tensors(tts_store, llm_store, pairs, tts_path, llm_path)
    blended = dict(pairs)

    infos = tts_store.infos()
    plan = {name: (info.torch_dtype, info.shape) for name, info in infos.items()}
    total_bytes = sum(info.numel * info.torch_dtype.itemsize for info in infos.values())
    # A single-file source stays single-file; a sharded one is re-sharded by the writer's default size.
    shard_kwargs: dict[str, Any] = {"max_shard_bytes": total_bytes + 1} if len(tts_store.files) == 1 else {}
    metadata = tts_store.metadata.get(tts_store.files[0]) or {"format": "pt"}
    weight_files = _weight_files(tts_store)

    with atomic_output_dir(Path(out), overwrite, sources=(tts_path, llm_path), stage="blend") as tmp:
        with provenance.timed("copy_files"):
            copied = copy_tree(tts_path, tmp, skip=lambda rel: rel in weight_files or rel == PROVENANCE_NAME)
        with provenance.timed("blend"):
            writer = ShardedWriter(tmp, plan, metadata=metadata, **shard_kwargs)
            try:
                for name in tqdm(
                    tts_store.keys(), desc=f"blend alpha={alpha:g}", unit="tensor", disable=None
                ):
                    tensor = tts_store.get_finite(name) if name in blended else tts_store.get(name)
                    if name in blended:
                        tensor = lerp_weights(tensor, llm_store.get_finite(blended[name]), alpha)
                    writer.write(name, tensor)
            except BaseException:
                with contextlib.suppress(ValueError):  # "never written": the original error matters
                    writer.close()
                raise
            written = writer.close()
        tts_store.close()
        llm_store.close()
        with provenance.timed("hash_inputs"):
            provenance.add_input("tts", tts_source, tts_path)
            provenance.add_input("llm", llm_source, llm_path)
        changed = sorted(blended) if alpha > 0.0 else []
        provenance.parameters = {
            "alpha": alpha,
            "formula": "W = (1 - alpha) * W_tts + alpha * W_llm (float32, cast to the TTS dtype)",
            "tts_pattern": TTS_FFN,
            "llm_pattern": LLM_FFN,
            "tensors_changed": len(changed),
            "changed": changed,
        }
        provenance.extra["files"] = {"copied": copied, "weights": written}
        provenance.write(tmp)
    log.info("blended %d FFN tensors (alpha %g) into %s", len(blended), alpha, out)
    return Path(out)


def sweep_dir_name(alpha: float) -> str:
    return f"alpha-{alpha:g}"


def blend_sweep(
    tts_src: PathLike,
    llm_src: PathLike,
    alphas: list[float],
    out_root: PathLike,
    overwrite: bool = False,
) -> list[Path]:
    """One blend per alpha, written to ``out_root/alpha-<alpha>`` (e.g. ``alpha-0.03``); returns the paths.

    Every alpha and every target directory is checked before the first blend starts.
    """
    if not alphas:
        raise UserError("no alpha given; pass at least one value in [0, 1]")
    values = [check_alpha(a) for a in alphas]
    names = [sweep_dir_name(a) for a in values]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"alphas repeat ({', '.join(duplicates)}); pass each alpha once")
    out_root = Path(out_root)
    targets = [out_root / name for name in names]
    for target in targets:
        check_output_dir(target, overwrite, stage="blend")
    return [
        blend_ffn(tts_src, llm_src, a, target, overwrite=overwrite)
        for a, target in zip(values, targets, strict=True)
    ]
