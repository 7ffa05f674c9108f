"""AWQ scale groups of a Qwen3/Llama decoder layer, as data (the search never names an architecture)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ScaleGroup:
    prev: str  # op whose output is divided by the scales (a norm or a Linear)
    linears: tuple[str, ...]  # Linear layers whose input columns are multiplied by the scales
    inspect: str  # module whose output defines the search loss
    attention: bool  # inspect needs position embeddings / mask

    @property
    def input_of(self) -> str:
        return self.linears[0]


DECODER_SCALE_GROUPS = (
    ScaleGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn", True),
    ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj", False),
    ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp", False),
    ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj", False),
)

#: Linears whose clipping is not searched (AutoAWQ: q/k feed a softmax, clipping them hurts).
NO_CLIP = ("self_attn.q_proj", "self_attn.k_proj")


def groups_for(layer: nn.Module) -> list[ScaleGroup]:
    """The applicable groups: v -> o only when v and o weights have equal shapes (skipped under GQA)."""
    groups = []
    for group in DECODER_SCALE_GROUPS:
        if group.prev == "self_attn.v_proj":
            v = layer.get_submodule("self_attn.v_proj").weight
            o = layer.get_submodule("self_attn.o_proj").weight
            if v.shape != o.shape:
                continue
        groups.append(group)
    return groups

#: Which captured input feeds each Linear (q/k/v share the normed hidden state; gate/up share the MLP input).
LINEAR_INPUT = {
    "self_attn.q_proj": "self_attn.q_proj",
    "self_attn.k_proj": "self_attn.q_proj",
    "self_attn.v_proj": "self_attn.q_proj",
    "self_attn.o_proj": "self_attn.o_proj",
    "mlp.gate_proj": "mlp.gate_proj",
    "mlp.up_proj": "mlp.gate_proj",
    "mlp.down_proj": "mlp.down_proj",
}
CAPTURED_INPUTS = tuple(sorted(set(LINEAR_INPUT.values())))
