"""Run one decoder layer of a checkpoint at a time with transformers' own layer classes.

The talker's decoder layer is exactly ``Qwen3DecoderLayer`` fed plain RoPE (its three M-RoPE streams are
identical), so the same code serves the talker and plain Llama/Qwen2/Qwen3 causal LMs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from tts_awq.checkpoint.layout import DecoderSpec

Activations = list[torch.Tensor]  # one [seq_len, hidden] tensor per calibration sequence


def _classes(model_type: str) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    if model_type == "qwen3":
        from transformers.models.qwen3 import modeling_qwen3 as m

        return m.Qwen3DecoderLayer, m.Qwen3RotaryEmbedding, m.Qwen3RMSNorm
    if model_type == "qwen2":
        from transformers.models.qwen2 import modeling_qwen2 as m

        return m.Qwen2DecoderLayer, m.Qwen2RotaryEmbedding, m.Qwen2RMSNorm
    if model_type == "llama":
        from transformers.models.llama import modeling_llama as m

        return m.LlamaDecoderLayer, m.LlamaRotaryEmbedding, m.LlamaRMSNorm
    raise ValueError(f"unsupported decoder family {model_type}")


class DecoderRunner:
    """Builds decoder layers from tensors and runs them causally over variable-length sequences, batched:
    sequences are sorted by length and right-padded into batches of at most ``max_batch_tokens`` rows."""

    def __init__(self, spec: DecoderSpec, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 max_batch_tokens: int = 16384):
        self.spec = spec
        self.max_batch_tokens = max_batch_tokens
        self.device = torch.device(device)
        self.dtype = dtype
        self.config = spec.transformers_config()
        self._layer_cls, rotary_cls, self._norm_cls = _classes(spec.model_type)
        self.rotary = rotary_cls(self.config, device=self.device)
        self._pe_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def build_layer(self, tensors: dict[str, torch.Tensor], index: int) -> nn.Module:
        """A decoder layer holding ``tensors`` (names relative to the layer) in the compute dtype."""
        with torch.device("meta"):
            layer = self._layer_cls(self.config, layer_idx=index)
        state = {name: t.to(self.device, self.dtype) for name, t in tensors.items()}
        layer.load_state_dict(state, strict=True, assign=True)
        return layer.eval()

    def final_norm(self, weight: torch.Tensor) -> nn.Module:
        norm = self._norm_cls(self.spec.hidden_size, eps=float(self.spec.config.get("rms_norm_eps", 1e-6)))
        norm.weight.data = weight.to(self.device, self.dtype)
        return norm.to(self.device)

    def position_embeddings(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if length not in self._pe_cache:
            ids = torch.arange(length, device=self.device)[None]
            probe = torch.zeros(1, length, 1, device=self.device, dtype=self.dtype)
            self._pe_cache[length] = self.rotary(probe, ids)
        return self._pe_cache[length]

    def attention_kwargs(self, length: int) -> dict[str, object]:
        # attention_mask=None with sdpa means causal attention. Batches are right-padded, so every real row
        # attends only to real rows before it: its output is exactly the unpadded sequence's.
        return {"position_embeddings": self.position_embeddings(length), "attention_mask": None}

    def plan(self, lengths: Sequence[int]) -> list[list[int]]:
        """Batches of sequence indices, longest first, each padded batch within ``max_batch_tokens``."""
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        batches: list[list[int]] = []
        for i in order:
            if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= self.max_batch_tokens:
                batches[-1].append(i)
            else:
                batches.append([i])
        return batches

    def _batched(self, call: Callable[[torch.Tensor], torch.Tensor], xs: Sequence[torch.Tensor],
                 on_batch: Callable[[list[int], list[int]], None] | None = None) -> Activations:
        """Run ``call`` on right-padded batches of ``xs`` and split the outputs back per sequence."""
        lengths = [int(x.shape[0]) for x in xs]
        outs: list[torch.Tensor | None] = [None] * len(xs)
        for batch in self.plan(lengths):
            sizes = [lengths[i] for i in batch]
            padded = torch.nn.utils.rnn.pad_sequence([xs[i] for i in batch], batch_first=True)
            if on_batch:
                on_batch(batch, sizes)
            out = call(padded)
            for row, (i, n) in enumerate(zip(batch, sizes, strict=True)):
                outs[i] = out[row, :n]
        return outs  # type: ignore[return-value]

    def layer_forward(self, layer: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """``layer`` on a right-padded batch [B, T, H] at positions 0..T-1 (autograd as the caller has it)."""
        length = batch.shape[1]
        ids = torch.arange(length, device=self.device)[None]
        out = layer(batch, position_ids=ids, **self.attention_kwargs(length))
        return out[0] if isinstance(out, tuple) else out

    @torch.no_grad()
    def run_layer(self, layer: nn.Module, xs: Sequence[torch.Tensor],
                  on_batch: Callable[[list[int], list[int]], None] | None = None) -> Activations:
        return self._batched(lambda batch: self.layer_forward(layer, batch), xs, on_batch)

    @torch.no_grad()
    def run_module(self, module: nn.Module, xs: Sequence[torch.Tensor], attention: bool) -> Activations:
        """Run a sub-module (attention block, MLP or Linear) over every sequence."""
        if not attention:  # token-wise modules: one call over every token, then split back per sequence
            return list(module(torch.cat(list(xs))).split([x.shape[0] for x in xs]))
        return self._batched(lambda b: module(b, **self.attention_kwargs(b.shape[1]))[0], xs)


def _first(value: object) -> torch.Tensor:
    return value[0] if isinstance(value, tuple) else value  # type: ignore[return-value]


@torch.no_grad()
def run_layer_recording(
    runner: DecoderRunner,
    layer: nn.Module,
    xs: Sequence[torch.Tensor],
    inputs: Sequence[str] = (),
    outputs: Sequence[str] = (),
    keep: Callable[[torch.Tensor], torch.Tensor] = lambda t: t.detach().clone(),
) -> tuple[dict[str, Activations], dict[str, Activations], Activations]:
    """Run ``layer`` over ``xs`` recording the inputs and outputs of named sub-modules, per sequence (in the
    order of ``xs``). Returns (inputs, outputs, layer outputs).

    Recorded tensors are cloned by default: q/k/v (and gate/up) receive the very same tensor, and a later
    in-place change to one must never leak into another.
    """
    n = len(xs)
    recorded: dict[tuple[str, str], list[torch.Tensor | None]] = {}
    current: dict[str, list[int]] = {"batch": [], "sizes": []}

    def record(key: tuple[str, str], value: torch.Tensor) -> None:
        slots = recorded.setdefault(key, [None] * n)
        for row, (i, size) in enumerate(zip(current["batch"], current["sizes"], strict=True)):
            slots[i] = keep(value[row, :size] if value.dim() == 3 else value[:size])

    handles = []
    for name in inputs:
        def pre_hook(_m: nn.Module, args: tuple[torch.Tensor, ...], name: str = name) -> None:
            record(("in", name), args[0])

        handles.append(layer.get_submodule(name).register_forward_pre_hook(pre_hook))
    for name in outputs:
        def post_hook(_m: nn.Module, _a: object, out: object, name: str = name) -> None:
            record(("out", name), _first(out))

        handles.append(layer.get_submodule(name).register_forward_hook(post_hook))

    def on_batch(batch: list[int], sizes: list[int]) -> None:
        current["batch"], current["sizes"] = batch, sizes

    try:
        layer_out = runner.run_layer(layer, xs, on_batch)
    finally:
        for handle in handles:
            handle.remove()
    got_in = {name: list(recorded.get(("in", name), [])) for name in inputs}
    got_out = {name: list(recorded.get(("out", name), [])) for name in outputs}
    return got_in, got_out, layer_out  # type: ignore[return-value]


def run_layer_capturing(
    runner: DecoderRunner,
    layer: nn.Module,
    xs: Sequence[torch.Tensor],
    names: Sequence[str],
    capture: str = "input",
    keep: Callable[[torch.Tensor], torch.Tensor] = lambda t: t.detach().clone(),
) -> tuple[dict[str, Activations], Activations]:
    """Run ``layer`` over ``xs`` recording the input (or output) of each named sub-module, per sequence."""
    if capture == "input":
        got, _, out = run_layer_recording(runner, layer, xs, inputs=names, keep=keep)
    else:
        _, got, out = run_layer_recording(runner, layer, xs, outputs=names, keep=keep)
    return got, out


def stack_hidden_states(
    runner: DecoderRunner,
    xs: Activations,
    layer_tensors: Callable[[int], dict[str, torch.Tensor]],
    final_norm: torch.Tensor,
    progress: Callable[[int], None] | None = None,
) -> Activations:
    """Final normed hidden states of the whole stack, streaming one layer at a time."""
    for index in range(runner.spec.num_layers):
        layer = runner.build_layer(layer_tensors(index), index)
        xs = runner.run_layer(layer, xs)
        del layer
        if progress:
            progress(index)
    norm = runner.final_norm(final_norm)
    with torch.no_grad():
        return [norm(x) for x in xs]
