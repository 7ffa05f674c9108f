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
    """Builds decoder layers from tensors and runs them causally over variable-length sequences."""

    def __init__(self, spec: DecoderSpec, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.spec = spec
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
        # attention_mask=None with sdpa means causal attention over the whole (unpadded) sequence.
        return {"position_embeddings": self.position_embeddings(length), "attention_mask": None}

    @torch.no_grad()
    def run_layer(self, layer: nn.Module, xs: Sequence[torch.Tensor]) -> Activations:
        outs = []
        for x in xs:
            kwargs = self.attention_kwargs(x.shape[0])
            ids = torch.arange(x.shape[0], device=self.device)[None]
            out = layer(x[None], position_ids=ids, **kwargs)
            outs.append((out[0] if isinstance(out, tuple) else out)[0])
        return outs

    @torch.no_grad()
    def run_module(self, module: nn.Module, xs: Sequence[torch.Tensor], attention: bool) -> Activations:
        """Run a sub-module (attention block, MLP or Linear) per sequence."""
        if not attention:  # token-wise modules: one call over every token, then split back per sequence
            return list(module(torch.cat(list(xs))).split([x.shape[0] for x in xs]))
        return [module(x[None], **self.attention_kwargs(x.shape[0]))[0][0] for x in xs]


@torch.no_grad()
def run_layer_capturing(
    runner: DecoderRunner,
    layer: nn.Module,
    xs: Sequence[torch.Tensor],
    names: Sequence[str],
    capture: str = "input",
    keep: Callable[[torch.Tensor], torch.Tensor] = lambda t: t.detach().clone(),
) -> tuple[dict[str, Activations], Activations]:
    """Run ``layer`` over ``xs`` recording the input (or output) of each named sub-module, per sequence.

    Inputs are cloned by default: q/k/v (and gate/up) receive the very same tensor, and a later in-place change
    to one must never leak into another.
    """
    captured: dict[str, Activations] = {name: [] for name in names}
    handles = []
    for name in names:
        module = layer.get_submodule(name)
        if capture == "input":
            def pre_hook(_m: nn.Module, args: tuple[torch.Tensor, ...], name: str = name) -> None:
                captured[name].append(keep(args[0][0]))

            handles.append(module.register_forward_pre_hook(pre_hook))
        else:
            def post_hook(_m: nn.Module, _a: object, out: torch.Tensor, name: str = name) -> None:
                captured[name].append(keep(out[0]))

            handles.append(module.register_forward_hook(post_hook))
    try:
        outputs = runner.run_layer(layer, xs)
    finally:
        for handle in handles:
            handle.remove()
    return captured, outputs


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
