"""Resolve and load the two models being compared: the INT4 package and its reference.

The reference is a plain Qwen3-TTS checkpoint (loaded with the calibration loader) or itself a tts-awq package
(loaded with :func:`tts_awq.load_quantized`), so a package can be validated against itself. Load time and peak
memory are measured while loading.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tts_awq.checkpoint import Layout, ResolvedSource, TensorStore, detect_layout, resolve_source
from tts_awq.checkpoint.arch import (
    PREDICTOR_FIELDS,
    TALKER_SHAPE_FIELDS,
    TALKER_TOKEN_FIELDS,
    field_mismatches,
    is_awq_package,
)
from tts_awq.checkpoint.files import list_files
from tts_awq.checkpoint.layout import TTS_KIND
from tts_awq.errors import UserError
from tts_awq.qwen_tts import default_dtype, load_tts_model, qwen_tts_classes


@dataclass
class Side:
    """One side of the comparison: where it lives, what it is, and (once loaded) the model."""

    role: str  # "package" or "reference"
    source: ResolvedSource
    layout: Layout
    quantized: bool
    tts: Any = None
    load: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.source.path

    def store(self) -> TensorStore:
        return TensorStore(self.root)


def resolve_package(out: str | os.PathLike[str]) -> Side:
    path = Path(out).expanduser()
    if not path.is_dir():
        raise UserError(f"{path}: package directory not found; pass the OUT directory written by quantize-talker")
    list_files(path)  # nothing of the package may resolve outside it (refused before anything is read)
    layout = detect_layout(path)
    if layout.kind != TTS_KIND:
        raise UserError(f"{path}: not a Qwen3-TTS package (model_type {layout.config.get('model_type')!r})")
    if not is_awq_package(layout.config):
        raise UserError(f"{path / 'config.json'}: no AWQ quantization_config; quantize it with quantize-talker first")
    layout.require_codec()
    return Side("package", ResolvedSource(path=path.resolve(), spec=str(out)), layout, quantized=True)


def resolve_reference(spec: str | os.PathLike[str]) -> Side:
    source = resolve_source(spec, what="--reference")
    layout = detect_layout(source.path)
    if layout.kind != TTS_KIND:
        raise UserError(f"{source.path}: --reference is not a Qwen3-TTS checkpoint "
                        f"(model_type {layout.config.get('model_type')!r}); pass the model the package was made from")
    layout.require_codec()
    return Side("reference", source, layout, quantized=is_awq_package(layout.config))


def check_same_architecture(package: Side, reference: Side) -> None:
    """The talker and code predictor must have the same shapes; otherwise the comparison is meaningless."""
    p_talker = package.layout.config.get("talker_config", {})
    r_talker = reference.layout.config.get("talker_config", {})
    diffs = field_mismatches(r_talker, p_talker, TALKER_SHAPE_FIELDS + TALKER_TOKEN_FIELDS)
    diffs += field_mismatches(r_talker.get("code_predictor_config") or {}, p_talker.get("code_predictor_config") or {},
                              PREDICTOR_FIELDS, label="code_predictor")
    if diffs:
        raise UserError(f"{reference.root}: --reference has another architecture than the package "
                        f"({'; '.join(diffs[:3])}); pass the checkpoint the package was quantized from")


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _PeakRss:
    """Samples the resident set size every few milliseconds while a block runs."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> _PeakRss:
        gc.collect()
        self.start = self.peak = _rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def warm_imports() -> None:
    """Import qwen-tts and transformers' processors up front, so the load timings measure loading only."""
    import transformers  # noqa: F401

    qwen_tts_classes()


def load_side(side: Side, device: str) -> Side:
    """Load the model; records wall time and peak memory of the load in ``side.load`` (not deterministic)."""
    warm_imports()
    dtype = default_dtype(device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        cuda_start = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    with _PeakRss() as rss:
        if side.quantized:
            from tts_awq.loading import load_quantized

            # kernel="dequant" + cached_dequant: exact (q - z) * s in the model dtype, dequantized once, so the
            # measured difference is the quantization itself (int4mm would add its bfloat16 activations).
            tts = load_quantized(side.root, device=device, dtype=dtype, kernel="dequant", cached_dequant=True)
        else:
            tts = load_tts_model(side.root, device, dtype)
    seconds = time.perf_counter() - start
    side.tts = tts
    side.load = {
        "loader": "tts_awq.load_quantized" if side.quantized else "qwen_tts.Qwen3TTSModel.from_pretrained",
        "dtype": str(dtype).removeprefix("torch."),
        "device": device,
        "seconds": round(seconds, 3),
        "peak_rss_increase_mib": round(max(rss.peak - rss.start, 0) / 2**20, 1),
        "rss_after_mib": round(_rss_bytes() / 2**20, 1),
    }
    if cuda:
        side.load["peak_cuda_allocated_mib"] = round(
            (torch.cuda.max_memory_allocated(device) - cuda_start) / 2**20, 1)
    tts.model.eval()
    return side
