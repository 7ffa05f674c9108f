"""Per-linear relative output error of the package vs round-to-nearest, on held-out talker activations.

The held-out activations are the talker input rows the reference produced on the evaluation prompts (never seen by
calibration). Layer by layer, the reference layer's input feeds three versions of the layer: the reference, the
package (INT4 weights dequantized, with its smoothed norms) and plain RTN of the reference weights (same bits and
group size). Each Linear's output inside the layer's own forward is compared with the reference's:
``||y - y_ref|| / ||y_ref||`` over all tokens, so errors of q/k/v reach o_proj and of gate/up reach down_proj, for
AWQ and RTN alike. AWQ folds its smoothing scales into the output of the Linear before each scaled group
(``up_proj``, and ``v_proj`` when v -> o is smoothed), so those outputs are compared after a least-squares gain
per output channel (for AWQ and RTN alike). The reference output then becomes the next layer's input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from tts_awq.checkpoint.layout import DECODER_LINEARS, DecoderSpec
from tts_awq.checkpoint.store import TensorStore
from tts_awq.quantize.decoder import Activations, DecoderRunner, run_layer_capturing
from tts_awq.quantize.evaluate import layer_tensors, relative_error, rtn_layer_tensors
from tts_awq.quantize.scale_groups import DECODER_SCALE_GROUPS

MAX_TOKENS = 2048
WORST = 5
OUTLIER_FACTOR = 2.0  # a linear whose error is over this x the median is a candidate to keep in BF16
#: Linears whose output carries AWQ's smoothing scales (the ``prev`` of a scale group that is a Linear).
SMOOTHED_OUTPUTS = tuple(g.prev for g in DECODER_SCALE_GROUPS if g.prev in DECODER_LINEARS)


def held_out(sequences: list[torch.Tensor], max_tokens: int = MAX_TOKENS) -> Activations:
    """The first sequences, in order, up to ``max_tokens`` rows in all."""
    out: Activations = []
    left = max_tokens
    for seq in sequences:
        if left <= 0:
            break
        out.append(seq[:left].float())
        left -= out[-1].shape[0]
    return out


def _keep(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double().cpu()


def gain_matched(reference: Activations, test: Activations) -> Activations:
    """``test`` times the per-output-channel gain that best fits ``reference`` (least squares over all tokens)."""
    num = sum((t * r).sum(0) for r, t in zip(reference, test, strict=True))
    den = sum((t * t).sum(0) for t in test)
    gain = torch.where(den > 0, num / den.clamp_min(1e-300), torch.ones_like(den))
    return [t * gain for t in test]


@torch.no_grad()
def layer_errors(reference: TensorStore, package: TensorStore, spec: DecoderSpec, xs: Activations, bits: int,
                 group_size: int, device: str = "cpu", progress: Callable[[int], None] | None = None
                 ) -> dict[str, Any]:
    runner = DecoderRunner(spec, device)
    ref_source = layer_tensors(reference, spec)
    pkg_source = layer_tensors(package, spec, group_size)
    rtn_source = rtn_layer_tensors(ref_source, bits, group_size)
    xs = [x.to(runner.device, torch.float32) for x in xs]
    linears: list[dict[str, Any]] = []
    layers: list[dict[str, Any]] = []
    for index in range(spec.num_layers):
        ref_layer = runner.build_layer(ref_source(index), index)
        ref_out, next_xs = run_layer_capturing(runner, ref_layer, xs, DECODER_LINEARS, "output", _keep)
        del ref_layer
        errors: dict[str, dict[str, float]] = {}
        layer_entry: dict[str, Any] = {"layer": index}
        ref_final = [x.double().cpu() for x in next_xs]
        for variant, source in (("awq", pkg_source), ("rtn", rtn_source)):
            layer = runner.build_layer(source(index), index)
            outs, final = run_layer_capturing(runner, layer, xs, DECODER_LINEARS, "output", _keep)
            del layer
            for name in DECODER_LINEARS:
                test = gain_matched(ref_out[name], outs[name]) if name in SMOOTHED_OUTPUTS else outs[name]
                errors.setdefault(name, {})[variant] = relative_error(ref_out[name], test)
            layer_entry[f"{variant}_output_error"] = relative_error(ref_final, [x.double().cpu() for x in final])
        for name in DECODER_LINEARS:
            full = f"{spec.layer_prefix}{index}.{name}"
            linears.append({"name": full, "layer": index, "linear": name, "awq": errors[name]["awq"],
                            "rtn": errors[name]["rtn"], "kept_bf16": f"{full}.qweight" not in package})
        layers.append(layer_entry)
        xs = next_xs
        if progress:
            progress(index)
    return summarize(linears, layers, sum(int(x.shape[0]) for x in xs), bits, group_size)


def summarize(linears: list[dict[str, Any]], layers: list[dict[str, Any]], tokens: int, bits: int,
              group_size: int) -> dict[str, Any]:
    awq = np.array([e["awq"] for e in linears], dtype=np.float64)
    rtn = np.array([e["rtn"] for e in linears], dtype=np.float64)
    order = sorted(linears, key=lambda e: (-e["awq"], e["name"]))
    int4 = np.array([e["awq"] for e in linears if not e.get("kept_bf16")], dtype=np.float64)
    median = float(np.median(int4)) if int4.size else 0.0
    keep = [e["name"] for e in order[:WORST] if median > 0 and e["awq"] > OUTLIER_FACTOR * median]
    if keep:
        suggestion = (f"keep in BF16 (add to modules_to_not_convert): {', '.join(keep)} "
                      f"(error over {OUTLIER_FACTOR:g}x the median {median:.4g})")
    else:
        suggestion = f"no linear stands out (none over {OUTLIER_FACTOR:g}x the median error {median:.4g})"
    return {
        "tokens": tokens,
        "bits": bits,
        "group_size": group_size,
        "awq_mean_relative_error": float(awq.mean()) if awq.size else None,
        "rtn_mean_relative_error": float(rtn.mean()) if rtn.size else None,
        "awq_max_relative_error": float(awq.max()) if awq.size else None,
        "awq_better_than_rtn_fraction": float((awq <= rtn).mean()) if awq.size else None,
        "awq_worse_than_rtn": [e["name"] for e in linears if e["awq"] > e["rtn"]],
        "worst": [{"name": e["name"], "awq": e["awq"], "rtn": e["rtn"]} for e in order[:WORST]],
        "keep_in_bf16": keep,
        "kept_bf16_in_package": [e["name"] for e in linears if e.get("kept_bf16")],
        "keep_in_bf16_reason": (f"held-out relative output error over {OUTLIER_FACTOR:g}x the median "
                                f"({median:.4g}), at most the {WORST} worst linears"),
        "suggestion": suggestion,
        "per_layer": layers,
        "per_linear": linears,
    }
