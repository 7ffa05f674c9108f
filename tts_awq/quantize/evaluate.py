"""Teacher-forced comparison of decoder stacks: logits of the reference vs a quantized (or RTN) variant."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from tts_awq.checkpoint.layout import DECODER_LINEARS, DecoderSpec
from tts_awq.checkpoint.store import TensorStore
from tts_awq.quantize.decoder import Activations, DecoderRunner, stack_hidden_states
from tts_awq.quantize.int4 import rtn
from tts_awq.quantize.pack import dequantize_gemm

LayerSource = Callable[[int], dict[str, torch.Tensor]]


def layer_tensors(store: TensorStore, spec: DecoderSpec, group_size: int | None = None) -> LayerSource:
    """Dense layer tensors from a checkpoint; AWQ GEMM triples (if any) are dequantized."""

    def source(index: int) -> dict[str, torch.Tensor]:
        raw = store.get_prefix(f"{spec.layer_prefix}{index}.")
        dense: dict[str, torch.Tensor] = {}
        for name, tensor in raw.items():
            if name.endswith((".qzeros", ".scales")):
                continue
            if name.endswith(".qweight"):
                linear = name.removesuffix(".qweight")
                scales = raw[f"{linear}.scales"]
                in_features = tensor.shape[0]
                gs = group_size or in_features // scales.shape[0]
                dense[f"{linear}.weight"] = dequantize_gemm(tensor, raw[f"{linear}.qzeros"], scales, gs)
            else:
                dense[name] = tensor.float()
        return dense

    return source


def rtn_layer_tensors(source: LayerSource, bits: int, group_size: int) -> LayerSource:
    """The same layers with every decoder Linear rounded to nearest (the baseline AWQ must beat)."""

    def rounded(index: int) -> dict[str, torch.Tensor]:
        tensors = source(index)
        for linear in DECODER_LINEARS:
            key = f"{linear}.weight"
            tensors[key] = rtn(tensors[key].float(), bits, group_size)
        return tensors

    return rounded


@torch.no_grad()
def stack_logits(store: TensorStore, spec: DecoderSpec, xs: Activations, source: LayerSource,
                 device: torch.device | str = "cpu", head_store: TensorStore | None = None) -> Activations:
    runner = DecoderRunner(spec, device)
    xs = [x.to(runner.device, torch.float32) for x in xs]
    hidden = stack_hidden_states(runner, xs, source, store.get(spec.final_norm))
    head = (head_store or store).get(spec.head).to(runner.device, torch.float32)
    return [F.linear(h, head) for h in hidden]


def relative_error(reference: Activations, test: Activations) -> float:
    """‖ΔL‖ / ‖L‖ over all tokens."""
    num = sum(float((t.double() - r.double()).pow(2).sum()) for r, t in zip(reference, test, strict=True))
    den = sum(float(r.double().pow(2).sum()) for r in reference)
    return (num / max(den, 1e-30)) ** 0.5
