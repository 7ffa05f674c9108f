"""``--keep-bf16-budget``: a sensitivity scan that picks the Linears to keep dense within a size budget.

Design. AWQ streams the stack once, one layer at a time, and each layer's result is final when the next one
starts, so a choice that needs every layer's score cannot be made inside that loop. The scan is therefore a
cheap first pass over the same calibration activations: per layer one forward of the full-precision layer
records every Linear's input (exactly as the AWQ pass does; its output feeds the next layer), and each Linear is
scored by the error of its round-to-nearest INT4 version on all of those inputs, ``||x·Q(W)ᵀ − x·Wᵀ|| /
||x·Wᵀ||`` (the relative output error validate-awq ranks by; the MSE is recorded too). No grid search runs, so
the scan costs about one calibration forward of the stack, a small fraction of the AWQ pass. The Linears are
then taken greedily by score while their extra bytes (dense minus INT4) fit the budget, and the normal AWQ pass
runs with them kept. RTN error is a proxy for the AWQ loss: AWQ lowers every error, but the ranking (which
Linears quantize worst) is what matters here, and it is the ranking validate-awq's per-layer check reports.

Second score, for TTS talkers: the first-order change each Linear's RTN error makes to the stop hazard (mean
per-frame P(codec EOS) under teacher forcing; :mod:`tts_awq.quantize.eos_shift`, one extra forward+backward of
the stack instead of one stack suffix per Linear). The ranking key is the larger of the two scores, each divided
by its median over all Linears (:func:`combined_rank`): a Linear is kept if it is an outlier on either the output
error or the stop signal.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, replace

import torch

from tts_awq.checkpoint.layout import DECODER_LINEARS, DecoderSpec
from tts_awq.checkpoint.store import TensorInfo, TensorStore
from tts_awq.quantize.decoder import Activations, DecoderRunner, run_layer_recording
from tts_awq.quantize.int4 import rtn
from tts_awq.quantize.scale_groups import CAPTURED_INPUTS, LINEAR_INPUT

MB = 10**6  # --keep-bf16-budget is in MB (10^6 bytes)


@dataclass(frozen=True)
class LinearScore:
    name: str
    score: float  # relative output error of RTN INT4 on the calibration inputs
    mse: float
    extra_bytes: int  # dense bytes minus AWQ GEMM bytes
    kept: bool = False
    eos_shift: float | None = None  # first-order relative change of the stop hazard (TTS talkers)
    rank: float | None = None  # the ranking key (combined_rank), when the table was ranked

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def int4_bytes(out_features: int, in_features: int, group_size: int) -> int:
    """Bytes of one AWQ GEMM triple: int32 qweight + int32 qzeros + fp16 scales."""
    groups = in_features // group_size
    return in_features * out_features // 2 + groups * out_features // 2 + groups * out_features * 2


def extra_bytes(info: TensorInfo, group_size: int) -> int:
    """What keeping the Linear of weight ``info`` dense costs over INT4."""
    out_features, in_features = info.shape
    return info.nbytes - int4_bytes(out_features, in_features, group_size)


def _errors(weight: torch.Tensor, xs: Activations, bits: int, group_size: int) -> tuple[float, float]:
    quantized = rtn(weight, bits, group_size)
    num = den = 0.0
    count = 0
    for x in xs:
        ref = x @ weight.t()
        num += float((x @ quantized.t() - ref).double().pow(2).sum())
        den += float(ref.double().pow(2).sum())
        count += ref.numel()
    return (num / max(den, 1e-30)) ** 0.5, num / max(count, 1)


@torch.no_grad()
def scan_sensitivity(store: TensorStore, spec: DecoderSpec, xs: Activations, bits: int, group_size: int,
                     device: torch.device | str = "cpu", progress: bool = True) -> list[LinearScore]:
    """Score every decoder Linear (in layer order), one layer at a time on the calibration activations."""
    from tqdm.auto import tqdm

    from tts_awq.quantize.engine import read_layer

    runner = DecoderRunner(spec, device)
    xs = [x.to(runner.device, torch.float32) for x in xs]
    scores: list[LinearScore] = []
    for index in tqdm(range(spec.num_layers), desc="sensitivity scan", unit="layer", disable=not progress):
        layer = runner.build_layer(read_layer(store, spec, index), index)
        inputs, _, xs = run_layer_recording(runner, layer, xs, inputs=CAPTURED_INPUTS, keep=lambda t: t.detach())
        for linear in DECODER_LINEARS:
            name = f"{spec.layer_prefix}{index}.{linear}"
            score, mse = _errors(layer.get_submodule(linear).weight.data, inputs[LINEAR_INPUT[linear]], bits,
                                 group_size)
            scores.append(LinearScore(name, score, mse, extra_bytes(store.info(f"{name}.weight"), group_size)))
        del layer, inputs
    return scores


def with_eos_shift(scores: Sequence[LinearScore], shifts: dict[str, float]) -> list[LinearScore]:
    return [replace(s, eos_shift=shifts.get(s.name)) for s in scores]


def combined_rank(scores: Sequence[LinearScore]) -> dict[str, float]:
    """Per Linear: max(output error / its median, |EOS shift| / its median); the output error alone when the
    EOS shift was not scanned."""
    def normalized(values: dict[str, float]) -> dict[str, float]:
        median = statistics.median(values.values()) if values else 0.0
        return {k: v / median if median > 0 else 0.0 for k, v in values.items()}

    error = normalized({s.name: s.score for s in scores})
    shift = normalized({s.name: abs(s.eos_shift) for s in scores if s.eos_shift is not None})
    return {s.name: max(error[s.name], shift.get(s.name, 0.0)) for s in scores}


def choose_within_budget(scores: Sequence[LinearScore], budget_bytes: int,
                         already: Collection[str] = ()) -> list[LinearScore]:
    """The scan table with ``kept`` set: most sensitive first (:func:`combined_rank`), each taken while its extra
    bytes still fit the budget (Linears in ``already`` are kept anyway and cost nothing here). Sorted by rank,
    then name."""
    left = budget_bytes
    rank = combined_rank(scores)
    table = []
    for entry in sorted(scores, key=lambda e: (-rank[e.name], e.name)):
        take = entry.name not in already and entry.extra_bytes <= left
        if take:
            left -= entry.extra_bytes
        table.append(replace(entry, kept=take, rank=rank[entry.name]))
    return table
