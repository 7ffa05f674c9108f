"""Layer-by-layer AWQ over a decoder stack, streaming one layer from the safetensors files at a time.

Per layer (AutoAWQ's order): capture each Linear's input on the full-precision layer (whose output becomes the
next layer's input), search every scale group on the unmodified layer, fold the scales into the previous
norm/Linear (:mod:`tts_awq.quantize.apply`), search clipping on the scaled inputs, apply it, then quantize and
pack. The chosen scales and clip maxima travel with each layer's result (``search_state.safetensors``).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from tts_awq.checkpoint.layout import DECODER_LINEARS, DecoderSpec
from tts_awq.checkpoint.store import TensorStore
from tts_awq.errors import UserError
from tts_awq.memory import current_rss_bytes
from tts_awq.quantize.apply import apply_clips, apply_scales
from tts_awq.quantize.decoder import Activations, DecoderRunner, run_layer_recording
from tts_awq.quantize.gptq import gptq_round, hessian, inverse_factor
from tts_awq.quantize.int4 import QuantizedWeight, check_group_size, quantize
from tts_awq.quantize.objective import ModuleObjective
from tts_awq.quantize.pack import pack_gemm
from tts_awq.quantize.scale_groups import CAPTURED_INPUTS, LINEAR_INPUT, NO_CLIP, ScaleGroup, groups_for
from tts_awq.quantize.search import search_clip, search_scales
from tts_awq.quantize.search_state import layer_state

#: awq-gptq: AWQ scales and clipping, then error-compensating rounding (:mod:`tts_awq.quantize.gptq`); awq: AWQ
#: with round-to-nearest; gptq: error-compensating rounding of the unscaled weights; rtn: round-to-nearest only.
METHODS = ("awq-gptq", "awq", "gptq", "rtn")


def searches_scales(method: str) -> bool:
    return method in ("awq-gptq", "awq")


def compensates_rounding(method: str) -> bool:
    return method in ("awq-gptq", "gptq")


def needs_calibration(method: str) -> bool:
    return method != "rtn"


@dataclass(frozen=True)
class AwqOptions:
    bits: int = 4
    group_size: int = 128
    method: str = "awq"  # one of METHODS
    duo_scaling: bool = True
    clip: bool = True
    n_grid: int = 20
    #: Tokens sampled for the clip search (AutoAWQ: 512). 2048 measured better on held-out data at about 5 %
    #: more quantize time (SmolLM2 8 layers: relative logit error 0.0823 vs 0.0843; AutoAWQ 0.0831).
    clip_tokens: int = 2048
    #: Scale search: every ``coarse_stride``-th grid ratio, then the neighbours of the best (1: the full grid).
    coarse_stride: int = 4
    #: Error-compensating rounding: damping added to the Hessian's diagonal, relative to its mean.
    gptq_damp: float = 0.01

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class LayerResult:
    index: int
    tensors: dict[str, torch.Tensor]  # output tensors, names relative to the layer prefix
    stats: dict[str, object] = field(default_factory=dict)
    next_inputs: Activations | None = field(default=None, repr=False)  # full-precision input of the next layer
    state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # search_state, names relative


def packed_names(linear: str) -> tuple[str, str, str]:
    return f"{linear}.qweight", f"{linear}.qzeros", f"{linear}.scales"


def check_layer_shapes(store: TensorStore, spec: DecoderSpec, group_size: int) -> None:
    for index in range(spec.num_layers):
        for linear in spec.linear_names(index):
            info = store.info(f"{linear}.weight")
            check_group_size(info.shape[1], group_size, where=f"{store.root}: {linear}")
            if info.shape[0] % 8:
                raise UserError(f"{store.root}: {linear} has {info.shape[0]} output features; AWQ GEMM packing "
                                "needs a multiple of 8 (this model cannot be stored in that format)")


def _objective(runner: DecoderRunner, layer: nn.Module, group: ScaleGroup, xs: Activations,
               reference: Activations) -> ModuleObjective:
    target = layer.get_submodule(group.inspect)
    widest = max(max(m.weight.shape) for m in target.modules() if isinstance(m, nn.Linear))
    return ModuleObjective(runner, layer, group.linears, group.inspect, group.attention, xs, reference, widest)


@dataclass
class LayerSearch:
    """One layer's AWQ pass: its final float tensors and what the searches chose (see :mod:`search_state`)."""

    weights: dict[str, torch.Tensor]  # scaled and clipped float tensors, names relative to the layer
    stats: dict[str, object]
    next_inputs: Activations = field(repr=False)  # full-precision output of the unquantized layer
    scales: dict[str, torch.Tensor] = field(default_factory=dict)  # group prev -> [in] scales
    clips: dict[str, torch.Tensor] = field(default_factory=dict)  # linear -> clip maxima [out, in/group, 1]
    codes: dict[str, QuantizedWeight] = field(default_factory=dict)  # linear -> error-compensated codes

    @property
    def state(self) -> dict[str, torch.Tensor]:
        return layer_state(self.scales, self.clips, {name: qw.q for name, qw in self.codes.items()})


def _search_all_scales(runner: DecoderRunner, layer: nn.Module, groups: list[ScaleGroup],
                       inputs: dict[str, Activations], references: dict[str, Activations], options: AwqOptions,
                       keep: Collection[str], stats: dict[str, object]) -> dict[str, torch.Tensor]:
    """Every group's scales, searched on the unmodified layer. A group whose Linears are all kept dense gets
    ``s = 1`` (nothing to protect; the kept weights stay bit-exact); a mixed group is searched with the kept
    Linears exact in the loss."""
    found: dict[str, torch.Tensor] = {}
    for group in groups:
        x = inputs[LINEAR_INPUT[group.input_of]]
        dense = [name in keep for name in group.linears]
        if all(dense):
            found[group.prev] = torch.ones(x[0].shape[-1], device=runner.device)
            references.pop(group.inspect, None)
            stats[f"scale.{group.prev}"] = {"ratio": -1.0, "loss": None, "loss_rtn": None, "kept_bf16": True}
            continue
        weights = [layer.get_submodule(n).weight.data for n in group.linears]
        objective = _objective(runner, layer, group, x, references.pop(group.inspect))
        result = search_scales(weights, x, objective.loss, options.bits, options.group_size, options.duo_scaling,
                               options.n_grid, dense=dense if any(dense) else None,
                               coarse_stride=options.coarse_stride)
        del objective
        found[group.prev] = result.scales
        stats[f"scale.{group.prev}"] = {"ratio": result.ratio, "loss": result.loss, "loss_rtn": result.loss_identity}
    return found


def _search_all_clips(layer: nn.Module, inputs: dict[str, Activations], options: AwqOptions,
                      keep: Collection[str]) -> dict[str, torch.Tensor]:
    """Clip maxima of every clipped Linear (not q/k, not the kept ones), on the scaled weights and inputs."""
    return {name: search_clip(layer.get_submodule(name).weight.data, inputs[LINEAR_INPUT[name]], options.bits,
                              options.group_size, options.n_grid, n_sample_tokens=options.clip_tokens)
            for name in DECODER_LINEARS if name not in NO_CLIP and name not in keep}


def _round_compensated(layer: nn.Module, inputs: dict[str, Activations], options: AwqOptions,
                       keep: Collection[str]) -> dict[str, QuantizedWeight]:
    """Error-compensated codes of every quantized Linear, on the final (scaled, clipped) weights and the inputs
    they receive; Linears that share an input share its Hessian, built once."""
    codes: dict[str, QuantizedWeight] = {}
    factors: dict[str, torch.Tensor] = {}
    for name in DECODER_LINEARS:
        if name in keep:
            continue
        key = LINEAR_INPUT[name]
        if key not in factors:
            factors = {key: inverse_factor(hessian(inputs[key]), options.gptq_damp)}  # one at a time: the MLP's is [inter, inter]
        qw = gptq_round(layer.get_submodule(name).weight.data, factors[key], options.bits, options.group_size)
        codes[name] = QuantizedWeight(q=qw.q.cpu(), zeros=qw.zeros.cpu(), scales=qw.scales.cpu(),
                                      group_size=qw.group_size, bits=qw.bits)
    return codes


@torch.no_grad()
def search_layer(runner: DecoderRunner, layer: nn.Module, xs: Activations, options: AwqOptions,
                 keep: Collection[str] = ()) -> LayerSearch:
    """AWQ on one layer, in place: record -> search every scale group -> apply scales -> search clip -> apply
    clip. ``keep``: Linears (relative names) that stay dense; they are scaled like their group but never
    clipped or quantized."""
    start = time.perf_counter()
    groups = groups_for(layer) if searches_scales(options.method) else []
    # One forward of the full-precision layer records every Linear input and, as the searches' reference,
    # every inspected module's output (so no grid search re-runs the unmodified module).
    inputs, references, next_xs = run_layer_recording(
        runner, layer, xs, inputs=CAPTURED_INPUTS, outputs=sorted({g.inspect for g in groups}))
    stats: dict[str, object] = {}
    scales = _search_all_scales(runner, layer, groups, inputs, references, options, keep, stats)
    apply_scales(layer, [(g, scales[g.prev]) for g in groups], inputs)  # after every group was searched
    clips = _search_all_clips(layer, inputs, options, keep) if groups and options.clip else {}
    for name, fraction in apply_clips(layer, clips).items():
        stats[f"clip.{name}"] = fraction
    codes = _round_compensated(layer, inputs, options, keep) if compensates_rounding(options.method) else {}
    if keep:
        stats["kept_bf16"] = sorted(keep)
    stats["seconds"] = round(time.perf_counter() - start, 3)
    stats["rss_mb"] = round(current_rss_bytes() / 2**20, 1)  # calibration activations + this layer + search
    weights = {name: t for name, t in layer.state_dict().items()}
    return LayerSearch(weights, stats, next_xs, scales, clips, codes)


def quantize_layer(runner: DecoderRunner, layer: nn.Module, xs: Activations, options: AwqOptions
                   ) -> tuple[dict[str, torch.Tensor], dict[str, object], Activations]:
    """Returns (final float weights per Linear + changed norms, stats, next layer's input)."""
    done = search_layer(runner, layer, xs, options)
    return done.weights, done.stats, done.next_inputs


def pack_layer(weights: dict[str, torch.Tensor], source_dtypes: dict[str, torch.dtype], options: AwqOptions,
               keep: Collection[str] = (), codes: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Linear weights -> AWQ GEMM triples; the ``keep`` Linears and every other tensor back in its source dtype.
    ``codes`` (Linear -> uint8 ``[out, in]``): integer codes chosen by error-compensating rounding, stored under
    the scales and zeros round-to-nearest computes from the same weight (which is how they were chosen)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        linear = name.removesuffix(".weight")
        if linear in DECODER_LINEARS and linear not in keep:
            qw = quantize(tensor.float().cpu(), options.bits, options.group_size)
            if codes and linear in codes:
                if tuple(codes[linear].shape) != tuple(qw.q.shape):
                    raise UserError(f"{linear}: saved codes are {tuple(codes[linear].shape)}, the weight is "
                                    f"{tuple(qw.q.shape)}; the search state does not belong to this source")
                qw = QuantizedWeight(q=codes[linear].cpu().to(torch.uint8), zeros=qw.zeros, scales=qw.scales,
                                     group_size=qw.group_size, bits=qw.bits)
            if not bool(torch.isfinite(qw.scales).all()):
                raise UserError(f"{linear}: a computed INT4 scale is not finite (weights beyond the fp16 range of "
                                "AWQ scales); check the source weights")
            qweight, qzeros = pack_gemm(qw.q, qw.zeros)
            n_qweight, n_qzeros, n_scales = packed_names(linear)
            out[n_qweight], out[n_qzeros], out[n_scales] = qweight, qzeros, qw.scales.t().contiguous()
        else:
            out[name] = tensor.detach().cpu().to(source_dtypes[name])
    return out


def read_layer(store: TensorStore, spec: DecoderSpec, index: int) -> dict[str, torch.Tensor]:
    """Every source tensor of decoder layer ``index`` (names relative to the layer), checked finite."""
    prefix = f"{spec.layer_prefix}{index}."
    return {n[len(prefix):]: store.get_finite(n) for n in store.keys() if n.startswith(prefix)}


def relative_keep(keep: Collection[str], spec: DecoderSpec, index: int) -> frozenset[str]:
    """The full Linear names in ``keep`` that belong to layer ``index``, relative to the layer."""
    prefix = f"{spec.layer_prefix}{index}."
    return frozenset(name[len(prefix):] for name in keep if name.startswith(prefix))


def run_awq(store: TensorStore, spec: DecoderSpec, xs: Activations, options: AwqOptions,
            device: torch.device | str = "cpu", progress: bool = True, start: int = 0,
            keep: Collection[str] = ()) -> Iterator[LayerResult]:
    """Quantize decoder layers ``start`` .. N-1 in order (``xs``: the activations entering layer ``start``); yields
    each layer's output tensors, and the next layer's input, as soon as it is done. ``keep``: full names of
    Linears stored dense (see :func:`search_layer`)."""
    from tqdm.auto import tqdm

    runner = DecoderRunner(spec, device)
    xs = [x.to(runner.device, torch.float32) for x in xs]
    bar = tqdm(range(start, spec.num_layers), desc=f"{options.method.upper()} layers", disable=not progress,
               unit="layer", initial=start, total=spec.num_layers)
    for index in bar:
        tensors = read_layer(store, spec, index)
        dtypes = {rel: t.dtype for rel, t in tensors.items()}
        layer = runner.build_layer(tensors, index)
        del tensors
        kept = relative_keep(keep, spec, index)
        done = search_layer(runner, layer, xs, options, kept)
        del layer
        xs = done.next_inputs
        codes = {name: qw.q for name, qw in done.codes.items()}
        yield LayerResult(index=index, tensors=pack_layer(done.weights, dtypes, options, kept, codes),
                          stats=done.stats, next_inputs=xs, state=done.state)
