"""Crash-resume state of a quantize-talker run, kept inside its partial output directory.

A run builds OUT in ``.OUT.partial-<key>`` beside it, where ``key`` hashes the source files, the calibration
source and every option that changes the result. Every state file is a checksummed record
(:mod:`tts_awq.checkpoint.record`) naming its run key and the tool version: after each finished layer the partial
directory holds ``.resume/layers/NNN.safetensors`` (the layer's packed tensors, its search state and stats) and,
written last (the commit), ``.resume/inputs.safetensors`` (the full-precision activations entering the next
layer, with the number of finished layers). ``calibration.safetensors`` keeps the calibration, and a
``--keep-bf16-budget`` run its choice (``keep_bf16.safetensors``), so a resumed run keeps the same Linears without
scanning again. A run killed with SIGKILL leaves that directory; ``--resume`` continues after the last finished
layer, so the package is byte-identical to an uninterrupted run on the same machine. A torn, altered or foreign
record is refused with the fix (remove the directory); a clean interrupt (Ctrl-C, SIGTERM) removes the partial
directory like any failure.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from tts_awq import __version__
from tts_awq.checkpoint.files import sha256_file
from tts_awq.checkpoint.record import RECORD_KEY, RecordError, read_record, write_record
from tts_awq.checkpoint.store import read_safetensors_header
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


def _as_list(tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [tensors[k] for k in sorted(tensors)]


def _as_dict(seqs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"seq{i:06d}": t for i, t in enumerate(seqs)}


_TENSORS, _STATE = "t/", "s/"


class ResumeRefused(UserError):
    """A resume state that cannot be trusted: the partial directory is kept for the user (see the message)."""

    keep_partial = True


class ResumeState:
    """The ``.resume/`` records of one partial directory; ``key`` is the run key (default: the directory's
    ``.OUT.partial-<key>`` suffix)."""

    def __init__(self, partial_dir: Path, key: str | None = None) -> None:
        self.partial = Path(partial_dir)
        self.root = self.partial / RESUME_DIR
        self.layers = self.root / "layers"
        self.key = key if key is not None else self.partial.name.rpartition(".partial-")[2]
        self._inputs: list[torch.Tensor] | None = None
        self._calibration: Calibration | None = None

    def verify(self) -> int:
        """Check every record a resumed run will use, before the run adds anything to the directory; returns the
        finished layer count. A torn, altered or foreign record raises :class:`ResumeRefused`."""
        done = self.finished_layers()
        if done:
            self._calibration = self.load_calibration()
            for index in range(done):
                self._read(self.layers / f"{index:03d}.safetensors", "layer", layer=index)
        self.load_keep_choice()
        return done

    def _write(self, path: Path, kind: str, tensors: dict[str, torch.Tensor], **fields: Any) -> None:
        self.layers.mkdir(parents=True, exist_ok=True)
        write_record(path, {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                     {"kind": kind, "run": self.key, **fields})

    def _read(self, path: Path, kind: str, **expect: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """A verified record, or a one-line refusal with the fix (a torn or foreign state is never used)."""
        try:
            return read_record(path, {"kind": kind, "run": self.key, **expect})
        except RecordError as exc:
            raise ResumeRefused(f"{exc}; the resume state cannot be trusted: remove {self.partial} (rm -r) and run "
                                "again without --resume") from None

    def finished_layers(self) -> int:
        """Layers 0 .. n-1 are complete (0 when no layer was committed)."""
        path = self.root / "inputs.safetensors"
        if not path.is_file():
            return 0
        tensors, fields = self._read(path, "inputs")
        self._inputs = _as_list(tensors)
        return int(fields["next_layer"])

    def load_calibration(self) -> Calibration | None:
        if self._calibration is not None:
            return self._calibration
        path = self.root / "calibration.safetensors"
        if not path.is_file():
            return None
        tensors, fields = self._read(path, "calibration")
        return Calibration(_as_list(tensors), fields["info"])

    def save_calibration(self, calibration: Calibration) -> None:
        self._write(self.root / "calibration.safetensors", "calibration", _as_dict(calibration.sequences),
                    info=calibration.info)

    def save_layer(self, result: LayerResult, next_inputs: list[torch.Tensor]) -> None:
        tensors = {**{_TENSORS + k: v for k, v in result.tensors.items()},
                   **{_STATE + k: v for k, v in result.state.items()}}
        self._write(self.layers / f"{result.index:03d}.safetensors", "layer", tensors, layer=result.index,
                    stats=result.stats)
        # last: commits the layer (a run killed before this line redoes it)
        self._write(self.root / "inputs.safetensors", "inputs", _as_dict(next_inputs), next_layer=result.index + 1)

    def load_layer(self, index: int) -> LayerResult:
        tensors, fields = self._read(self.layers / f"{index:03d}.safetensors", "layer", layer=index)
        return LayerResult(index=index, stats=fields["stats"],
                           tensors={k.removeprefix(_TENSORS): v for k, v in tensors.items() if k.startswith(_TENSORS)},
                           state={k.removeprefix(_STATE): v for k, v in tensors.items() if k.startswith(_STATE)})

    def save_keep_choice(self, choice: dict[str, Any]) -> None:
        self._write(self.root / "keep_bf16.safetensors", "keep_bf16", {}, choice=choice)

    def load_keep_choice(self) -> dict[str, Any] | None:
        path = self.root / "keep_bf16.safetensors"
        return self._read(path, "keep_bf16")[1]["choice"] if path.is_file() else None

    def load_inputs(self) -> list[torch.Tensor]:
        if self._inputs is None:
            self.finished_layers()
        return list(self._inputs or [])

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def peek_next_layer(partial_dir: Path) -> int:
    """The committed layer count of a partial directory from the inputs record's header alone (no checksum):
    for watching a run from outside (tests); a run itself uses :meth:`ResumeState.finished_layers`."""
    path = Path(partial_dir) / RESUME_DIR / "inputs.safetensors"
    try:
        _, metadata = read_safetensors_header(path)
        return int(json.loads(metadata[RECORD_KEY])["fields"]["next_layer"])
    except (OSError, UserError, KeyError, ValueError):
        return 0
