"""Given codes instead of sampled ones: the talker input rows a generation of exactly those codes would feed.

:class:`ForcedDecode` stands in for the talker's ``generate`` like :class:`~tts_awq.qwen_tts.decode.FastDecode`
(qwen-tts still builds the prompt: voice, ICL, language tags), but draws nothing: for frame ``j`` of an item it
records the row the fast loop feeds after emitting that frame (the 16 codebook embeddings summed, plus trailing
text ``j`` or ``tts_pad``), with the same operations, so teacher forcing on these rows scores the given codes as
if the talker had generated them, EOS after the last frame.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from tts_awq.qwen_tts.decode import FastDecode, _as_generate_output


class ForcedDecode(FastDecode):
    """``codes``: one ``[frames, 16]`` long tensor per batch item."""

    def __init__(self, talker: torch.nn.Module, codes: list[torch.Tensor]) -> None:
        super().__init__(talker, seeds=None, record_rows=True)
        self.codes = codes

    @torch.no_grad()
    def decode(self, **kw: Any) -> SimpleNamespace:
        talker = self.talker
        embeds, mask, trailing = kw["inputs_embeds"], kw["attention_mask"], kw["trailing_text_hidden"]
        if len(self.codes) != embeds.shape[0]:
            raise ValueError(f"ForcedDecode got {len(self.codes)} code sequences for a batch of {embeds.shape[0]}")
        prompts = [embeds[i][mask[i].bool()] for i in range(embeds.shape[0])]
        fed = [self._rows(codes.to(embeds.device), trailing[i], kw["tts_pad_embed"])
               for i, codes in enumerate(self.codes)]
        self._record(prompts, fed)
        frames = [list(codes.to(embeds.device)) for codes in self.codes]
        return _as_generate_output(frames, talker.config.num_code_groups, int(kw["eos_token_id"]), embeds)

    def _rows(self, codes: torch.Tensor, trailing: torch.Tensor, tts_pad: torch.Tensor) -> torch.Tensor:
        """``[frames, hidden]``: as :meth:`FastDecode._next_input` sums them, plus each frame's text row."""
        predictor = self.talker.code_predictor
        first = self.talker.get_input_embeddings()(codes[:, :1])
        parts = [first] + [predictor.get_input_embeddings()[i](codes[:, i + 1 : i + 2])
                           for i in range(codes.shape[1] - 1)]
        x = torch.cat(parts, dim=1).sum(1)
        text = torch.stack([trailing[j] if j < trailing.shape[0] else tts_pad.reshape(-1)
                            for j in range(codes.shape[0])])
        return x + text
