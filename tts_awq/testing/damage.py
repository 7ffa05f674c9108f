"""Deliberately damaged packages for validation tests and benchmarks: edit the weights of a tts-awq package and
re-record them in its provenance, as if quantize-talker itself had written the bad package (validate-awq refuses
packages edited after quantize-talker)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tts_awq.checkpoint.files import sha256_file

Edit = Callable[[dict[str, torch.Tensor]], None]
#: codec EOS id of the tiny talker (tts_awq.testing.tiny)
TINY_EOS_ID = 2150


def edit_weights(root: Path, edit: Edit) -> None:
    path = root / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})
    prov_path = root / "provenance.json"
    prov = json.loads(prov_path.read_text())
    prov.setdefault("outputs_sha256", {})["model.safetensors"] = sha256_file(path)
    prov_path.write_text(json.dumps(prov, indent=2))


def scale_eos_row(factor: float, eos_id: int = TINY_EOS_ID) -> Edit:
    """Scale the codec head's EOS row: > 1 makes the talker stop sooner, < 1 raises its runaway rate."""

    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors["talker.codec_head.weight"][eos_id] *= factor

    return edit


def copy_package(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("validation"))
    return dst
