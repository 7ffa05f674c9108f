"""The second score of ``--keep-bf16-budget``: how much each Linear's INT4 error moves the stop signal.

Quantity. Under teacher forcing on the calibration sequences (the talker input rows recorded from real TTS
generations, at their real positions), the stop hazard is the mean per-frame probability of the codec EOS token,
``H = mean_t softmax(codec_head(norm(h_t)))[eos]``. A Linear whose INT4 error lowers ``H`` makes the talker stop
later (the runaway failure); one that raises it cuts speech short.

Cost. Measuring ``H`` with each Linear quantized alone needs one pass through the rest of the stack per Linear
(~7·L²/2 layer forwards). Its first-order change needs one: with ``g`` the gradient of ``H`` with respect to a
Linear's output and ``ΔW = Q(W) − W`` its round-to-nearest error, ``ΔH ≈ Σ_t g_tᵀ ΔW x_t``. The scan streams the
stack forward once keeping each layer's input (on the CPU, for at most ``max_sequences`` sequences), gets
``dH/dh`` at the top, then walks the layers backwards, one layer resident at a time: it re-runs the layer with
autograd, backpropagates the incoming gradient, and on the way reads every Linear's ``g`` and ``x``. About three
layer forwards per layer in all. Tests compare the estimate with the measured ``ΔH`` of each Linear quantized
alone (tests/test_keep_bf16.py).
"""

from __future__ import annotations

from typing import Any

import torch

from tts_awq.checkpoint.layout import DECODER_LINEARS, DecoderSpec
from tts_awq.checkpoint.store import TensorStore
from tts_awq.quantize.decoder import Activations, DecoderRunner
from tts_awq.quantize.int4 import rtn

#: Calibration sequences the scan uses: enough for a ranking, few enough to keep every layer's input.
MAX_SEQUENCES = 16


def stop_hazard(hidden: torch.Tensor, norm: torch.nn.Module, head: torch.Tensor, eos: int) -> torch.Tensor:
    """Sum over rows of P(EOS) from the final hidden states [T, H] (divide by the row count for the mean)."""
    return torch.softmax(norm(hidden) @ head.t(), dim=-1)[:, eos].sum()


def scan_eos_shift(store: TensorStore, spec: DecoderSpec, xs: Activations, eos: int, bits: int, group_size: int,
                   device: torch.device | str = "cpu", max_sequences: int = MAX_SEQUENCES,
                   progress: bool = True) -> tuple[dict[str, float], float]:
    """``({linear name: first-order relative change of the stop hazard}, hazard)`` for every decoder Linear
    quantized alone with RTN INT4; negative values lower P(EOS)."""
    from tqdm.auto import tqdm

    from tts_awq.quantize.engine import read_layer

    if spec.head is None:
        raise ValueError("the EOS-shift scan needs the decoder's output head (codec_head)")
    runner = DecoderRunner(spec, device)
    xs = [x.to(runner.device, torch.float32) for x in xs[:max_sequences]]
    rows = sum(int(x.shape[0]) for x in xs)
    layer_inputs: list[list[torch.Tensor]] = []
    bar = tqdm(total=2 * spec.num_layers, desc="EOS-shift scan", unit="layer", disable=not progress)
    for index in range(spec.num_layers):
        layer_inputs.append([x.cpu() for x in xs])
        xs = runner.run_layer(runner.build_layer(read_layer(store, spec, index), index), xs)
        bar.update()
    norm = runner.final_norm(store.get(spec.final_norm)).requires_grad_(False)
    head = store.get(spec.head).to(runner.device, torch.float32)
    with torch.enable_grad():
        return _backward(store, spec, runner, layer_inputs, xs, norm, head, eos, rows, bits, group_size, bar)


def _backward(store: TensorStore, spec: DecoderSpec, runner: DecoderRunner, layer_inputs: list[list[torch.Tensor]],
              xs: Activations, norm: torch.nn.Module, head: torch.Tensor, eos: int, rows: int, bits: int,
              group_size: int, bar: Any) -> tuple[dict[str, float], float]:
    """dH/dh at the top, then layer by layer downwards: each Linear's first-order ``ΔH`` on the way."""
    from tts_awq.quantize.engine import read_layer

    grads, hazard = [], 0.0
    for x in xs:
        x = x.detach().requires_grad_(True)
        value = stop_hazard(x, norm, head, eos) / rows
        value.backward()
        grads.append(x.grad.detach())
        hazard += float(value.detach())
    shifts: dict[str, float] = {}
    for index in reversed(range(spec.num_layers)):
        layer = runner.build_layer(read_layer(store, spec, index), index).requires_grad_(False)
        errors = {name: rtn(w := layer.get_submodule(name).weight.data, bits, group_size) - w
                  for name in DECODER_LINEARS}
        totals = dict.fromkeys(DECODER_LINEARS, 0.0)
        seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        handles = [layer.get_submodule(name).register_forward_hook(
            lambda _m, args, out, name=name, seen=seen: seen.__setitem__(name, (args[0].detach(), out)))
            for name in DECODER_LINEARS]
        try:
            for seq, x in enumerate(layer_inputs[index]):
                x = x.to(runner.device).requires_grad_(True)
                seen.clear()
                out = runner.layer_forward(layer, x[None])[0]
                outputs = [seen[name][1] for name in DECODER_LINEARS]
                linear_grads = torch.autograd.grad(out, [x, *outputs], grad_outputs=grads[seq])
                grads[seq] = linear_grads[0].detach()
                for name, g in zip(DECODER_LINEARS, linear_grads[1:], strict=True):
                    inp = seen[name][0]
                    totals[name] += float(((inp @ errors[name].t()) * g).double().sum())
        finally:
            for handle in handles:
                handle.remove()
        for name in DECODER_LINEARS:
            shifts[f"{spec.layer_prefix}{index}.{name}"] = totals[name] / max(hazard, 1e-30)
        layer_inputs[index] = []
        bar.update()
    bar.close()
    return dict(sorted(shifts.items(), key=lambda kv: _layer_order(kv[0], spec))), hazard


def _layer_order(name: str, spec: DecoderSpec) -> tuple[int, int]:
    index, rest = name[len(spec.layer_prefix):].split(".", 1)
    return int(index), DECODER_LINEARS.index(rest)
