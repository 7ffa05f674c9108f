"""Runs INSIDE the mlx-audio venv (tts_awq.testing.side_venv.MLX_AUDIO), never imports tts_awq or torch.

    python scripts/mlx_audio_check.py EXPORT_DIR WORK_DIR

Reads WORK_DIR/inputs.npz (``rows``: talker input embeddings [T, hidden]; ``ref.<module>``: the package's dequantized
INT4 weights) and writes WORK_DIR/result.json and WORK_DIR/mlx_logits.npy:

* ``mlx.core.dequantize`` of every QuantizedLinear's (weight, scales, biases) vs ``ref.<module>``: max |dw|;
* first-codebook logits of mlx-audio's talker on ``rows`` (teacher forced: one causal forward);
* ``model.generate`` of a short text (seeded): frames and samples of audio produced.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_audio.tts.utils import load_model


def main(export_dir: str, work_dir: str) -> int:
    work = Path(work_dir)
    inputs = np.load(work / "inputs.npz")
    model = load_model(Path(export_dir))
    quantized = {name: module for name, module in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module)
                 if isinstance(module, nn.QuantizedLinear)}
    dequant = {}
    for key in inputs.files:
        if not key.startswith("ref."):
            continue
        module = quantized.get(key[len("ref."):])
        if module is None:
            dequant[key[4:]] = None
            continue
        dense = mx.dequantize(module.weight, module.scales, module.biases, group_size=module.group_size,
                              bits=module.bits, mode=module.mode)
        dequant[key[4:]] = float(np.abs(np.array(dense.astype(mx.float32)) - inputs[key]).max())
    logits, _ = model.talker(mx.array(inputs["rows"])[None])
    np.save(work / "mlx_logits.npy", np.array(logits[0].astype(mx.float32)))
    mx.random.seed(int(inputs["seed"]))
    results = list(model.generate(text=str(inputs["text"]), max_tokens=int(inputs["max_tokens"]), verbose=False))
    audio = [np.array(r.audio) for r in results]
    summary = {
        "quantized_modules": sorted(quantized),
        "group_sizes": sorted({int(m.group_size) for m in quantized.values()}),
        "bits": sorted({int(m.bits) for m in quantized.values()}),
        "dense_talker_linears": sorted(name for name, m in tree_flatten(model.leaf_modules(),
                                                                         is_leaf=nn.Module.is_module)
                                       if isinstance(m, nn.Linear) and ".layers." in name
                                       and name.startswith("talker.model.")),
        "dequantize_max_abs_dw": dequant,
        "frames": [int(r.token_count) for r in results],
        "samples": [int(r.samples) for r in results],
        "sample_rate": int(model.sample_rate),
        "audio_finite": all(bool(np.isfinite(a).all()) for a in audio),
        "audio_rms": [float(np.sqrt(np.mean(np.square(a, dtype=np.float64)))) for a in audio],
    }
    (work / "result.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
