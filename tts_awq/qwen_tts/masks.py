"""SDPA attention masks built by broadcasting instead of ``torch.vmap``.

transformers 4.57 materializes every boolean SDPA mask by vmapping the mask function four times over
(batch, head, query, key). That costs milliseconds of Python per call whatever the model size: the codec's
decoder transformer pays it twice per clip (its position ids trigger the packed-sequence check, so the mask is
always built), and a padded talker batch pays it on every decode step. The mask functions themselves are
elementwise comparisons and tensor indexing, so calling them once on broadcast index tensors
(``[B,1,1,1]``, ``[1,1,1,1]``, ``[1,1,Q,1]``, ``[1,1,1,K]``) gives the same boolean tensor directly.

:func:`broadcast_sdpa_mask` keeps transformers' own decision of when no mask is needed (SDPA's ``is_causal``)
and its padding preparation, so a module run under :func:`fast_masks` sees the same masks as under ``"sdpa"``
(tested against ``transformers.masking_utils.sdpa_mask`` and end to end against qwen-tts's own generate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import _ignore_causal_mask_sdpa, causal_mask_function, prepare_padding_mask

#: The attention implementation name modules run under inside :func:`fast_masks` (SDPA attention, our masks).
FAST_SDPA = "tts_awq_sdpa"


def broadcast_sdpa_mask(batch_size: int, cache_position: torch.Tensor, kv_length: int, kv_offset: int = 0,
                        mask_function: Callable = causal_mask_function, attention_mask: torch.Tensor | None = None,
                        local_size: int | None = None, allow_is_causal_skip: bool = True,
                        **_: Any) -> torch.Tensor | None:
    """``transformers.masking_utils.sdpa_mask``'s result (``[B, 1, Q, K]`` bool, True = attend, or None when
    SDPA's ``is_causal`` suffices), computed with one broadcast call of ``mask_function``."""
    padding_mask = prepare_padding_mask(attention_mask, kv_length, kv_offset, _slice=False)
    query_length = cache_position.shape[0]
    if allow_is_causal_skip and _ignore_causal_mask_sdpa(padding_mask, query_length, kv_length, kv_offset,
                                                         local_size):
        return None
    device = cache_position.device
    batch = torch.arange(batch_size, device=device).view(-1, 1, 1, 1)
    head = torch.zeros((1, 1, 1, 1), dtype=torch.long, device=device)
    query = cache_position.view(1, 1, -1, 1)
    key = (torch.arange(kv_length, device=device) + kv_offset).view(1, 1, 1, -1)
    allowed = mask_function(batch, head, query, key)
    if padding_mask is not None:
        allowed = allowed & padding_mask[batch, key]
    return allowed.expand(batch_size, 1, query_length, kv_length).contiguous()


def register() -> None:
    """Make :data:`FAST_SDPA` known to transformers (idempotent): SDPA attention with :func:`broadcast_sdpa_mask`."""
    if FAST_SDPA not in AttentionMaskInterface._global_mapping:
        AttentionInterface.register(FAST_SDPA, sdpa_attention_forward)
        AttentionMaskInterface.register(FAST_SDPA, broadcast_sdpa_mask)


@contextmanager
def fast_masks(*modules: torch.nn.Module) -> Iterator[None]:
    """Inside the block every SDPA sub-module of ``modules`` builds its masks with :func:`broadcast_sdpa_mask`;
    the configs' attention implementation is restored afterwards (modules on eager / flash are left alone)."""
    register()
    changed: dict[int, Any] = {}
    for module in modules:
        for sub in module.modules():
            config = getattr(sub, "config", None)
            if getattr(config, "_attn_implementation_internal", None) == "sdpa" and id(config) not in changed:
                changed[id(config)] = config
                config._attn_implementation_internal = FAST_SDPA
    try:
        yield
    finally:
        for config in changed.values():
            config._attn_implementation_internal = "sdpa"
