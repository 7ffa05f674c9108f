"""Recording what the talker's decoder stack really sees during qwen-tts generation."""

from __future__ import annotations

from typing import Any

import torch


class TalkerCapture:
    """Hooks that record the rows entering ``talker.model`` for each batch item, until that item emits EOS.

    The talker is fed ``inputs_embeds`` (text projection + summed codebook embeddings + speaker x-vector), so
    these rows, not token ids, are what its decoder layers see. Padding rows are dropped with the attention mask,
    and the position ids are checked to be 0..L-1 for every kept row (``position_mismatches`` counts calls where
    they were not), because the quantizer and teacher forcing replay the rows at exactly those positions.
    """

    def __init__(self, talker: torch.nn.Module, eos_id: int, seq_len: int) -> None:
        self.eos_id = eos_id
        self.seq_len = seq_len
        self.rows: list[list[torch.Tensor]] = []
        self.done: list[bool] = []
        self.position_rows_checked = 0
        self.position_mismatches = 0
        self._handles = [
            talker.register_forward_pre_hook(self._on_talker, with_kwargs=True),
            talker.model.register_forward_pre_hook(self._on_model, with_kwargs=True),
        ]

    def _on_talker(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.shape[1] > 1:
            return  # prefill
        input_ids = kwargs.get("input_ids")
        if input_ids is None and args:
            input_ids = args[0]
        if input_ids is None:
            return
        for b, code in enumerate(input_ids[:, 0].tolist()):
            if code == self.eos_id and b < len(self.done):
                self.done[b] = True

    def _on_model(self, _module: Any, _args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            return
        mask = kwargs.get("attention_mask")
        batch, length, _ = embeds.shape
        if length > 1:  # prefill: a new batch starts
            self.rows = [[] for _ in range(batch)]
            self.done = [False] * batch
        positions = kwargs.get("position_ids")
        for b in range(batch):
            if self.done[b]:
                continue
            x = embeds[b]
            keep = mask[b, -length:].bool() if mask is not None else torch.ones(length, dtype=torch.bool)
            x = x[keep.to(x.device)]
            if positions is not None:
                # The decoder layers see these rows at positions 0..L-1 (the engine relies on it): check it.
                pos = positions[0, b] if positions.dim() == 3 else positions[b]
                pos = pos[keep.to(pos.device)].cpu()
                start = sum(int(r.shape[0]) for r in self.rows[b])
                self.position_rows_checked += int(pos.numel())
                if not torch.equal(pos, torch.arange(start, start + pos.numel())):
                    self.position_mismatches += 1
            self.rows[b].append(x.detach().float().cpu())

    def sequences(self) -> list[torch.Tensor]:
        return [torch.cat(rows)[: self.seq_len] for rows in self.rows if rows]

    def prefill_rows(self, item: int) -> int:
        """How many rows the prefill of batch item ``item`` had (padding excluded)."""
        return int(self.rows[item][0].shape[0]) if self.rows[item] else 0

    def __enter__(self) -> TalkerCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
