"""Crash-resume state of a quantize-talker run, kept inside its partial output directory.

A run builds OUT in ``.OUT.partial-<key>`` beside it, where ``key`` hashes the source files, the calibration
source and every option that changes the result. After each finished layer the partial directory holds
``.resume/layers/NNN.safetensors`` (the layer's packed tensors) with its stats and its search state
(``NNN.state.safetensors``: the searched scales and clip maxima), ``.resume/inputs.safetensors`` (the
full-precision activations entering the next layer) and, written last, ``.resume/progress.json``. A
``--keep-bf16-budget`` run also keeps its sensitivity scan and choice (``keep_bf16.json``), so a resumed run
keeps the same Linears without scanning again. A run
killed with SIGKILL leaves that directory; ``--resume`` continues after the last finished layer with the saved
calibration and activations, so the package is byte-identical to an uninterrupted run on the same machine.
A clean interrupt (Ctrl-C, SIGTERM) removes the partial directory like any failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tts_awq import __version__
from tts_awq.checkpoint.files import sha256_file
from tts_awq.errors import UserError
from tts_awq.quantize.calibration import Calibration
from tts_awq.quantize.engine import LayerResult

RESUME_DIR = ".resume"
#: Options that do not change the package (where it goes, how it is shown, whether to resume).
_NOT_IN_KEY = ("out", "overwrite", "resume", "progress")


def run_key(options: dict[str, Any], source_hashes: list[dict[str, str]], calibration_source: str | None) -> str:
    """16 hex digits identifying a run's result: tool version, the sources' file hashes (as
    :func:`tts_awq.provenance.input_hashes` gives them), calibration, options."""
    from tts_awq.prompts import CALIB_DATA_DIR

    calib_path = Path(calibration_source).expanduser() if calibration_source else CALIB_DATA_DIR / "calib.jsonl"
    calib = sha256_file(calib_path) if calib_path.is_file() else str(calibration_source)
    payload = {
        "tool": __version__,
        "options": {k: str(v) for k, v in sorted(options.items()) if k not in _NOT_IN_KEY},
        "sources": source_hashes,
        "calibration": calib,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _atomic_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _as_list(tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [tensors[k] for k in sorted(tensors)]


def _as_dict(seqs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"seq{i:06d}": t for i, t in enumerate(seqs)}


class ResumeState:
    def __init__(self, partial_dir: Path) -> None:
        self.root = Path(partial_dir) / RESUME_DIR
        self.layers = self.root / "layers"

    def _progress(self) -> dict[str, Any]:
        path = self.root / "progress.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def finished_layers(self) -> int:
        """Layers 0 .. n-1 are complete (0 when nothing usable was saved)."""
        return int(self._progress().get("next_layer", 0))

    def load_calibration(self) -> Calibration | None:
        info_path = self.root / "calibration.json"
        if not info_path.is_file() or not (self.root / "calibration.safetensors").is_file():
            return None
        info = json.loads(info_path.read_text(encoding="utf-8"))
        return Calibration(_as_list(load_file(str(self.root / "calibration.safetensors"))), info)

    def save_calibration(self, calibration: Calibration) -> None:
        self.layers.mkdir(parents=True, exist_ok=True)
        _atomic_tensors(self.root / "calibration.safetensors", _as_dict(calibration.sequences))
        _atomic_json(self.root / "calibration.json", calibration.info)

    def save_layer(self, result: LayerResult, next_inputs: list[torch.Tensor]) -> None:
        stem = self.layers / f"{result.index:03d}"
        _atomic_tensors(stem.with_suffix(".safetensors"), result.tensors)
        _atomic_tensors(stem.with_suffix(".state.safetensors"), result.state)
        _atomic_json(stem.with_suffix(".json"), result.stats)
        _atomic_tensors(self.root / "inputs.safetensors", _as_dict(next_inputs))
        _atomic_json(self.root / "progress.json", {"next_layer": result.index + 1})  # last: commits the layer

    def load_layer(self, index: int) -> LayerResult:
        stem = self.layers / f"{index:03d}"
        stats = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
        state_path = stem.with_suffix(".state.safetensors")
        if not state_path.is_file():
            raise UserError(f"{state_path}: missing (a partial run of an older tts-awq); remove "
                            f"{self.root.parent} and run again without --resume")
        return LayerResult(index=index, tensors=load_file(str(stem.with_suffix(".safetensors"))), stats=stats,
                           state=load_file(str(state_path)))

    def save_keep_choice(self, choice: dict[str, Any]) -> None:
        self.layers.mkdir(parents=True, exist_ok=True)
        _atomic_json(self.root / "keep_bf16.json", choice)

    def load_keep_choice(self) -> dict[str, Any] | None:
        path = self.root / "keep_bf16.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def load_inputs(self) -> list[torch.Tensor]:
        return _as_list(load_file(str(self.root / "inputs.safetensors")))

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
