"""scripts/gpu_check.py's parent side: part selection and the report of failed parts (the parts themselves run in
the CPU rehearsal, `scripts/gpu_check.sh --rehearse`, which CI runs for part b)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def test_only_takes_known_parts_in_run_order() -> None:
    gc = _module()
    assert gc.parse_only("d,b, b") == ["b", "d"]
    for bad in ("", "b,x", "g"):
        with pytest.raises(argparse.ArgumentTypeError):
            gc.parse_only(bad)


def test_a_failed_part_is_reported_and_the_rest_render(tmp_path: Path) -> None:
    gc = _module()
    header = {"date": "d", "gpu": "g", "torch": "t", "cuda_runtime": "c", "python": "p", "transformers": "x",
              "huggingface_hub": "h", "qwen_tts": "q", "tts_awq": "v", "cpu_count": 2}
    results = [gc.PartResult("b", gc.TITLES["b"], False, 3.0, {}, "RuntimeError: quantize-talker exited 3"),
               gc.PartResult("d", gc.TITLES["d"], True, 9.0, {
                   "int4mm": {"batch1": {"frame_s": 0.02}, "batch8": {"frame_s": 0.03}, "peak_allocated": 10**9},
                   "bf16": {"batch1": {"frame_s": 0.025}, "batch8": {"frame_s": 0.02}, "peak_allocated": 4 * 10**9}})]
    gc.write_outputs(tmp_path, header, gc.REHEARSAL, results, ["===== part b (exit 3) =====\nboom\n"])
    text = (tmp_path / "gpu_check.md").read_text()
    assert "| b | checkpoint build + quantize-talker | FAILED: RuntimeError: quantize-talker exited 3 | 3.0 |" in text
    assert "| 1 | 20.00 | 25.00 | 0.80x | met |" in text and "| 8 | 30.00 | 20.00 | 1.50x | - |" in text
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [p["ok"] for p in data["parts"]] == [False, True]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]


def test_the_gpu_run_refuses_a_machine_without_cuda(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: no CUDA device")


def test_wheels_list_pins_every_entry() -> None:
    """.whl/ must hold one version of each package: every line of gpu_wheels.txt is an exact pin."""
    lines = [line.split("#")[0].strip() for line in (REPO / "scripts" / "gpu_wheels.txt").read_text().splitlines()]
    pins = [line for line in lines if line]
    assert pins and all("==" in pin for pin in pins)
    names = [pin.split("==")[0].lower().replace("_", "-") for pin in pins]
    assert len(names) == len(set(names))
