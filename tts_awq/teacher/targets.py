"""Teacher forcing -> the stored targets: top-k log-probabilities per frame, plus the log of the remaining mass.

First codebook: log-softmax over the ids generation can emit (codes ``0..vocab-1025`` and EOS; qwen-tts suppresses
the rest), at temperature 1 without sampling filters, one distribution per frame and, for a line that stopped, one
more at the EOS position. Codebooks 1-15: the code predictor teacher-forced on the stored codes and the talker's
own hidden states, log-softmax over its whole vocabulary. Ids are codec ids (EOS keeps its id). The arrays are
computed in float64 and rounded to float16 once, when stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tts_awq.validate.synth import Generation
from tts_awq.validate.teacher import Vocab, teacher_force_batch


@dataclass
class Targets:
    """One row's targets (numpy, ready for a parquet row)."""

    c0_ids: np.ndarray  # [frames + stopped, k] int16 codec ids, best first
    c0_logprobs: np.ndarray  # [frames + stopped, k] float16
    c0_rest: np.ndarray  # [frames + stopped] float16: log of the probability outside the top k
    cp_ids: np.ndarray  # [frames, 15, k_cp] int16
    cp_logprobs: np.ndarray  # [frames, 15, k_cp] float16
    cp_rest: np.ndarray  # [frames, 15] float16
    hidden: np.ndarray | None  # [frames, hidden] float16: talker state that predicted each frame


def top_k(logprobs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(indices, values, log remaining mass)`` of the ``k`` most probable entries of the last axis (sorted, best
    first); the remaining mass is ``-inf`` when ``k`` covers the axis."""
    k = min(k, logprobs.shape[-1])
    values, indices = logprobs.topk(k, dim=-1)
    rest = torch.logsumexp(logprobs.scatter(-1, indices, float("-inf")), dim=-1)
    return indices, values, rest


def row_targets(logprobs: torch.Tensor, cp_logits: torch.Tensor, hidden: torch.Tensor | None, vocab: Vocab,
                k: int, k_cp: int) -> Targets:
    ids, values, rest = top_k(logprobs.double(), k)
    allowed = torch.tensor(vocab.allowed, dtype=torch.long)
    cp_lp = torch.log_softmax(cp_logits.double(), dim=-1)
    cp_ids, cp_values, cp_rest = top_k(cp_lp, k_cp)
    return Targets(
        c0_ids=allowed[ids].numpy().astype(np.int16), c0_logprobs=values.numpy().astype(np.float16),
        c0_rest=rest.numpy().astype(np.float16), cp_ids=cp_ids.numpy().astype(np.int16),
        cp_logprobs=cp_values.numpy().astype(np.float16), cp_rest=cp_rest.numpy().astype(np.float16),
        hidden=None if hidden is None else hidden.float().numpy().astype(np.float16))


def batch_targets(tts: object, gens: list[Generation], vocab: Vocab, k: int, k_cp: int,
                  hidden: bool) -> list[Targets]:
    """Teacher-force ``tts`` on the generations' captured rows (one padded forward) and keep the top-k targets."""
    forced = teacher_force_batch(tts, gens, vocab)
    return [row_targets(tf.logprobs, tf.cp_logits, tf.hidden if hidden else None, vocab, k, k_cp) for tf in forced]
