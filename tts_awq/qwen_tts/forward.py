"""The talker, codec head, code predictor and speaker encoder as plain forwards (teacher forcing, speaker checks)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _weight(module: torch.nn.Module) -> torch.Tensor:
    return next(module.parameters())


@torch.no_grad()
def talker_hidden(tts: Any, rows: torch.Tensor) -> torch.Tensor:
    """One causal forward of the talker's decoder over captured ``inputs_embeds`` rows -> normed hidden states
    ``[rows, hidden]`` in the model's dtype and device."""
    talker = tts.model.talker
    weight = _weight(talker.codec_head)
    x = rows.to(weight.device, weight.dtype)
    return talker.model(inputs_embeds=x[None], use_cache=False).last_hidden_state[0]


@torch.no_grad()
def talker_hidden_batch(tts: Any, rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """:func:`talker_hidden` for several row sequences in one forward: right-padded with zeros, which the causal
    mask keeps from reaching any real row (positions stay 0..L-1 per item); returns each item's real rows."""
    if len(rows) == 1:
        return [talker_hidden(tts, rows[0])]
    talker = tts.model.talker
    weight = _weight(talker.codec_head)
    longest = max(int(r.shape[0]) for r in rows)
    x = torch.zeros(len(rows), longest, rows[0].shape[1], dtype=weight.dtype, device=weight.device)
    for i, r in enumerate(rows):
        x[i, : r.shape[0]] = r.to(weight.device, weight.dtype)
    hidden = talker.model(inputs_embeds=x, use_cache=False).last_hidden_state
    return [hidden[i, : r.shape[0]] for i, r in enumerate(rows)]


@torch.no_grad()
def codec_logits(tts: Any, hidden: torch.Tensor) -> torch.Tensor:
    """First-codebook logits ``[rows, vocab]`` (float64, CPU) from talker hidden states."""
    return tts.model.talker.codec_head(hidden).double().cpu()


@torch.no_grad()
def sub_talker_logits(tts: Any, codes: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Code-predictor logits ``[frames, groups-1, vocab]`` (float32, CPU), teacher-forced on ``codes`` and fed
    ``hidden`` (the talker hidden states that predicted each frame)."""
    talker = tts.model.talker
    weight = _weight(talker.codec_head)
    logits, _ = talker.forward_sub_talker_finetune(codes.to(weight.device), hidden.to(weight.device, weight.dtype))
    return logits.float().cpu()


@torch.no_grad()
def speaker_embedding(tts: Any, wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """The model's own speaker-encoder x-vector of a waveform (float64)."""
    emb = tts.model.extract_speaker_embedding(np.ascontiguousarray(wav, dtype=np.float32), sample_rate)
    return emb.float().cpu().numpy().astype(np.float64)
