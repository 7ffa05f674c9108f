"""``quantize-talker``: SRC checkpoint -> calibrated AWQ INT4 package directory with provenance."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tts_awq.checkpoint import TensorStore, atomic_output_dir, detect_layout, resolve_source
from tts_awq.checkpoint.files import list_files
from tts_awq.checkpoint.layout import TTS_KIND, Layout
from tts_awq.checkpoint.source import CODEC_AND_PROCESSOR_FILES
from tts_awq.checkpoint.writer import DEFAULT_MAX_SHARD_BYTES
from tts_awq.constants import DEFAULT_SEED
from tts_awq.errors import UserError
from tts_awq.memory import current_rss_bytes
from tts_awq.process import keep_freed_blocks
from tts_awq.provenance import Provenance, input_hashes
from tts_awq.quantize.calibration import Calibration, build_calibration
from tts_awq.quantize.engine import METHODS, AwqOptions, check_layer_shapes, needs_calibration, run_awq
from tts_awq.quantize.eos_shift import scan_eos_shift
from tts_awq.quantize.keep import KeepPlan, resolve_keep_bf16
from tts_awq.quantize.reassemble import PackageWriter, decoder_linear_names, module_census
from tts_awq.quantize.resume import ResumeState, run_key
from tts_awq.quantize.sensitivity import MB, scan_sensitivity, with_eos_shift
from tts_awq.qwen_tts import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizeOptions:
    src: str
    out: Path
    group_size: int = 128
    w_bit: int = 4
    method: str = "awq"
    seed: int = DEFAULT_SEED
    seq_len: int = 512
    n_samples: int = 128
    calib: str | None = None
    calib_batch_size: int = 8
    device: str = "auto"
    overwrite: bool = False
    codec_from: str | None = None
    revision: str | None = None
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    duo_scaling: bool = True
    clip: bool = True
    progress: bool = True
    resume: bool = False  # continue a killed run's .OUT.partial-<key> directory
    keep_bf16: tuple[str, ...] = ()  # files of Linear names and fnmatch patterns: Linears kept dense
    keep_bf16_budget_mb: float | None = None  # MB (10^6 bytes) for the most sensitive Linears to stay dense
    keep_bf16_fused: bool = False  # keep vLLM's fused groups (q/k/v, gate/up) together: all dense or all INT4


def _check_finite(store: TensorStore, progress: bool) -> None:
    """Every floating source tensor must be finite: a NaN would break calibration inside qwen-tts (a traceback)
    or, worse, be packed silently. One tensor at a time, so memory stays flat."""
    from tqdm.auto import tqdm

    for name in tqdm(store.keys(), desc="checking source tensors", unit="tensor", disable=not progress, leave=False):
        store.get_finite(name)


def _validate(options: QuantizeOptions) -> None:
    if options.w_bit != 4:
        raise UserError(f"--w-bit {options.w_bit}: the AWQ GEMM format stores 4-bit weights only; use --w-bit 4")
    if options.method not in METHODS:
        raise UserError(f"--method {options.method}: expected one of {', '.join(METHODS)}")
    for name in ("seq_len", "n_samples", "calib_batch_size"):
        if getattr(options, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if options.keep_bf16_budget_mb is not None:
        if not options.keep_bf16_budget_mb >= 0:
            raise UserError(f"--keep-bf16-budget {options.keep_bf16_budget_mb}: must be a size in MB >= 0")
        if options.method == "rtn":
            raise UserError("--keep-bf16-budget needs calibration activations for its sensitivity scan, which "
                            "--method rtn skips; use --method awq or name the Linears with --keep-bf16")


def _plan_keep(options: QuantizeOptions, explicit: dict[str, str], state: ResumeState, store: TensorStore,
               layout: Layout, calibration: Calibration, device: str, prov: Provenance) -> KeepPlan:
    """The Linears to keep dense: ``--keep-bf16`` names plus, with a budget, the scan's picks (saved in the
    resume state, so a resumed run keeps the same ones without scanning again)."""
    saved = state.load_keep_choice()
    if saved is not None:
        return KeepPlan.from_dict(saved)
    plan = KeepPlan(dict(explicit))
    if options.keep_bf16_budget_mb is not None:
        with prov.timed("sensitivity_scan"):
            scores = scan_sensitivity(store, layout.decoder, calibration.sequences, options.w_bit,
                                      options.group_size, device, options.progress)
        eos = (layout.config.get("talker_config") or {}).get("codec_eos_token_id")
        if eos is not None and layout.decoder.head is not None:
            with prov.timed("eos_shift_scan"):
                shifts, _ = scan_eos_shift(store, layout.decoder, calibration.sequences, int(eos), options.w_bit,
                                           options.group_size, device, progress=options.progress)
            scores = with_eos_shift(scores, shifts)
        plan = plan.with_budget(scores, int(options.keep_bf16_budget_mb * MB), decoder_linear_names(layout))
    if options.keep_bf16_fused:
        plan = plan.with_fused_groups(decoder_linear_names(layout))
    state.save_keep_choice(plan.to_dict())
    return plan


@contextmanager
def _model_dir_with_copied_files(src: Path, package: Path, copied: list[str]) -> Iterator[Path]:
    """SRC itself, or a temp dir of symlinks to SRC plus the files copied from a base (codec, processor files).

    SRC is never modified; the staged view is what calibration loads."""
    if not copied:
        yield src
        return
    with tempfile.TemporaryDirectory(prefix="tts-awq-stage-") as stage:
        stage_path = Path(stage)
        tops = {rel.split("/", 1)[0] for rel in copied}
        for name in os.listdir(src):
            if name not in tops:
                os.symlink(src / name, stage_path / name)
        for name in sorted(tops):
            os.symlink(package / name, stage_path / name)
        yield stage_path


def quantize_talker(options: QuantizeOptions) -> Path:
    """Quantize SRC's talker decoder layers (or a causal LM's layers) to AWQ INT4 and write OUT atomically.

    Example::

        from tts_awq.quantize.pipeline import QuantizeOptions, quantize_talker
        quantize_talker(QuantizeOptions(src="FINAL-Bench/Darwin-TTS-1.7B-Cross", out=Path("darwin-awq")))
    """
    _validate(options)
    keep_freed_blocks()
    device = resolve_device(options.device)
    prov = Provenance(stage="quantize-talker")
    with prov.timed("resolve"):
        source = resolve_source(options.src, options.revision)
        layout = detect_layout(source.path)
        base = (resolve_source(options.codec_from, what="--codec-from", allow_patterns=CODEC_AND_PROCESSOR_FILES)
                if options.codec_from else None)
        if layout.kind == TTS_KIND and (layout.has_codec or base is None):
            layout.require_codec()  # present and loadable (safetensors), or --codec-from given
        store = TensorStore(source.path)
        missing = [f"{n}.weight" for i in range(layout.decoder.num_layers) for n in layout.decoder.linear_names(i)
                   if f"{n}.weight" not in store]
        if missing:
            raise UserError(f"{store.root}: weights lack {missing[0]} (and {len(missing) - 1} more); not a full checkpoint")
        check_layer_shapes(store, layout.decoder, options.group_size)
        explicit_keep = resolve_keep_bf16(options.keep_bf16, decoder_linear_names(layout))
    with prov.timed("finite_check"):
        _check_finite(store, options.progress)
    awq = AwqOptions(bits=options.w_bit, group_size=options.group_size, method=options.method,
                     duo_scaling=options.duo_scaling, clip=options.clip)
    sources = (source.path,) + ((base.path,) if base else ())
    with prov.timed("hash_sources"):  # once: for the resume key and for provenance
        source_hashes = [input_hashes(root) for root in sources]
        # the resolved names, not only the arguments: a --keep-bf16 FILE may change between runs
        key = run_key({**asdict(options), "keep_bf16_names": list(explicit_keep)}, source_hashes, options.calib)
    with atomic_output_dir(options.out, options.overwrite, sources=sources, stage="quantize-talker",
                           partial_key=key, resume=options.resume) as tmp:
        state = ResumeState(tmp, key)
        done = state.verify()  # every record checked before this run adds anything
        saved_calibration = state.load_calibration() if done else None
        if done and saved_calibration is None:
            done = 0
        if done:
            log.info("resuming %s after layer %d of %d", tmp, done - 1, layout.decoder.num_layers)
        package = PackageWriter(tmp, store, layout, awq, options.max_shard_bytes, source_hashes[0])
        codec_files: list[str] = []
        if base is not None and not layout.has_codec:
            from tts_awq.checkpoint.codec import copy_codec_into

            codec_files = copy_codec_into(tmp, base.path)
        if saved_calibration is not None:
            calibration = saved_calibration
        elif not needs_calibration(awq.method):  # round-to-nearest needs no activations
            calibration = Calibration([], {"mode": "none (round-to-nearest)", "n_samples": 0, "n_tokens": 0})
        else:
            with prov.timed("calibration"), _model_dir_with_copied_files(source.path, tmp, codec_files) as model_dir:
                calibration = build_calibration(layout, model_dir, store, options.calib, options.seed,
                                                options.seq_len, options.n_samples, device,
                                                options.calib_batch_size, progress=options.progress)
        log.info("calibration: %d sequences, %d tokens; RSS now %.0f MB", len(calibration.sequences),
                 calibration.n_tokens, current_rss_bytes() / 2**20)
        if saved_calibration is None:
            calibration.info["rss_mb_after"] = round(current_rss_bytes() / 2**20, 1)
            state.save_calibration(calibration)
        keep = _plan_keep(options, explicit_keep, state, store, layout, calibration, device, prov)
        kept_info = keep.provenance(store, options.group_size)
        if keep.names:
            log.info("keeping %d decoder linear(s) dense: +%.2f MB over all-INT4", len(keep.names),
                     kept_info["extra_bytes"] / MB)
        package.start_weights(keep.names)
        layer_stats: list[dict[str, Any]] = []
        with prov.timed("write_kept_tensors"):
            package.write_kept_tensors()
        for index in range(done):  # layers a killed run finished
            result = state.load_layer(index)
            package.write_layer(result)
            layer_stats.append({"layer": result.index, **result.stats})
        xs = state.load_inputs() if done else calibration.sequences
        with prov.timed("quantize_layers"):
            for result in run_awq(store, layout.decoder, xs, awq, device, options.progress, start=done,
                                  keep=keep.names):
                state.save_layer(result, result.next_inputs or [])
                result.next_inputs = None
                package.write_layer(result)
                layer_stats.append({"layer": result.index, **result.stats})
        state.discard()
        with prov.timed("finish"):
            weight_files = package.finish()
        prov.parameters = {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()
               if k not in ("progress", "resume")},
            "awq": awq.to_dict(),
            "zero_point": True,
            "version": "gemm",
        }
        prov.add_input("source", source, source.path, source_hashes[0])
        if base is not None:
            prov.add_input("codec_from", base, base.path, source_hashes[1])
        prov.extra = {
            "layout": {"kind": layout.kind, "decoder": layout.decoder.model_type,
                       "num_layers": layout.decoder.num_layers, "layer_prefix": layout.decoder.layer_prefix},
            "calibration": calibration.info,
            "modules": module_census(layout, package.kept, keep.names),
            "kept_bf16": kept_info,
            "search_state": package.search_state_info,
            "files": {"copied_verbatim": package.copied, "codec_from_base": codec_files,
                      "weights_written": weight_files},
            "layer_stats": layer_stats,
            "resumed_after_layers": done,
        }
        prov.write(tmp, device=device if device == "cpu" else torch.cuda.get_device_name(device))
        log.info("wrote %d files", len(list_files(tmp)))
    return Path(options.out)
