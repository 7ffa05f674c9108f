"""Teacher-forced fidelity: both talkers score the codec sequence the reference generated.

The reference's talker input rows (``inputs_embeds``, captured while it generated) are fed to each model's talker
in one causal forward. The prediction for frame ``t`` sits at row ``prefill - 1 + t``; frames ``0..T-1`` are the
generated codes and, when the reference stopped, frame ``T`` is EOS. First-codebook distributions are compared
over the ids generation can emit (codes ``0..vocab-1025`` plus EOS; qwen-tts suppresses the rest), at
temperature 1 without sampling filters. The code predictor is teacher-forced on the reference codes, fed either
its own talker's hidden states or the reference talker's (``forward_sub_talker_finetune``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from tts_awq.qwen_tts import (
    allowed_ids,
    codec_logits,
    codec_vocab_size,
    eos_id,
    sub_talker_logits,
    talker_hidden_batch,
)
from tts_awq.validate.synth import Generation


@dataclass
class TeacherForced:
    """One model's teacher-forced view of one reference generation (CPU tensors)."""

    logprobs: torch.Tensor  # [n_targets, len(allowed)] float64, log-softmax over the allowed ids
    hidden: torch.Tensor  # [frames, hidden] talker output (normed) at the rows that predict frames 0..T-1
    cp_logits: torch.Tensor  # [frames, groups-1, cp_vocab] code predictor on its own hidden states
    cp_logits_ref_hidden: torch.Tensor | None  # same, fed the reference talker's hidden states
    greedy_codes: torch.Tensor  # [frames, groups] argmax codes under teacher forcing (for audio)


@dataclass(frozen=True)
class Vocab:
    allowed: list[int]
    eos: int
    eos_index: int  # EOS position inside ``allowed``
    n_codes: int  # ids below this are audio codes

    @classmethod
    def of(cls, tts: Any) -> Vocab:
        allowed = allowed_ids(tts)
        eos = eos_id(tts)
        vocab = codec_vocab_size(tts)
        return cls(allowed=allowed, eos=eos, eos_index=allowed.index(eos), n_codes=vocab - 1024)

    def targets(self, gen: Generation) -> torch.Tensor:
        """Indices (into ``allowed``) of the reference's first-codebook tokens, EOS appended if it stopped."""
        lookup = {tok: i for i, tok in enumerate(self.allowed)}
        ids = [lookup[int(c)] for c in gen.codes[:, 0].tolist()]
        if gen.stopped:
            ids.append(self.eos_index)
        return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def teacher_force_batch(tts: Any, gens: list[Generation], vocab: Vocab,
                        ref_hiddens: list[torch.Tensor] | None = None) -> list[TeacherForced]:
    """Run ``tts``'s talker (one padded forward) and code predictor (one call over every frame) on the
    reference generations ``gens``; ``ref_hiddens`` (the reference talker's frame states) feed the second
    code-predictor pass."""
    if any(g.rows is None for g in gens):
        raise ValueError("teacher forcing needs the captured talker rows of the reference generation")
    hidden_all = talker_hidden_batch(tts, [g.rows for g in gens])  # type: ignore[misc]
    preds = []
    for gen, hidden in zip(gens, hidden_all, strict=True):
        n_targets = gen.frames + int(gen.stopped)
        available = gen.rows.shape[0] - gen.prefill + 1  # type: ignore[union-attr]
        if n_targets > available:
            raise RuntimeError(f"captured {available} prediction rows for {n_targets} targets")
        preds.append(hidden[gen.prefill - 1 : gen.prefill - 1 + n_targets])
    frames = [g.frames for g in gens]
    codes = torch.cat([g.codes for g in gens])
    frame_hidden = [p[: g.frames] for p, g in zip(preds, gens, strict=True)]
    cp_all = sub_talker_logits(tts, codes, torch.cat(frame_hidden)).split(frames)
    cp_ref_all = (sub_talker_logits(tts, codes, torch.cat(ref_hiddens)).split(frames)
                  if ref_hiddens is not None else [None] * len(gens))
    out = []
    for gen, pred, fh, cp, cp_ref in zip(gens, preds, frame_hidden, cp_all, cp_ref_all, strict=True):
        logits = codec_logits(tts, pred)
        code0 = logits[: gen.frames, : vocab.n_codes].argmax(-1)
        greedy = torch.cat([code0[:, None], cp.argmax(-1)], dim=1).long()
        out.append(TeacherForced(logprobs=F.log_softmax(logits[:, vocab.allowed], dim=-1), hidden=fh.float().cpu(),
                                 cp_logits=cp, cp_logits_ref_hidden=cp_ref, greedy_codes=greedy))
    return out


def teacher_force(tts: Any, gen: Generation, vocab: Vocab, ref_hidden: torch.Tensor | None = None) -> TeacherForced:
    """:func:`teacher_force_batch` for one generation."""
    return teacher_force_batch(tts, [gen], vocab, None if ref_hidden is None else [ref_hidden])[0]


def kl_per_frame(ref: TeacherForced, test: TeacherForced) -> torch.Tensor:
    """KL(ref || test) at every scored frame, float64 nats."""
    p = ref.logprobs
    q = test.logprobs
    return (p.exp() * (p - q)).sum(-1).clamp_min(0.0)


def compare(ref: TeacherForced, test: TeacherForced, gen: Generation, vocab: Vocab) -> tuple[dict[str, Any], np.ndarray]:
    """Per-sequence teacher-forced numbers, plus the per-frame KL values (for the histogram and p95)."""
    kl = kl_per_frame(ref, test)
    targets = vocab.targets(gen)
    ref_top1 = ref.logprobs.argmax(-1)
    test_top5 = test.logprobs.topk(min(5, test.logprobs.shape[-1]), dim=-1).indices
    nll_ref = -ref.logprobs.gather(1, targets[:, None])[:, 0]
    nll_test = -test.logprobs.gather(1, targets[:, None])[:, 0]
    own = (ref.cp_logits.argmax(-1) == test.cp_logits.argmax(-1)).double()
    entry: dict[str, Any] = {
        "frames_scored": int(kl.numel()),
        "frames": gen.frames,
        "kl_mean": float(kl.mean()),
        "kl_p95": float(torch.quantile(kl, 0.95)),
        "kl_max": float(kl.max()),
        "top1_agreement": float((ref_top1 == test.logprobs.argmax(-1)).double().mean()),
        "top5_agreement": float((test_top5 == ref_top1[:, None]).any(-1).double().mean()),
        "nll_reference": float(nll_ref.mean()),
        "nll_package": float(nll_test.mean()),
        "cp_top1_own_hidden": float(own.mean()) if own.numel() else None,
    }
    if test.cp_logits_ref_hidden is not None and own.numel():
        same = (ref.cp_logits.argmax(-1) == test.cp_logits_ref_hidden.argmax(-1)).double()
        entry["cp_top1_same_hidden"] = float(same.mean())
    return entry, kl.numpy()


def codebook_hits(ref: TeacherForced, test: TeacherForced) -> np.ndarray:
    """Frames on which codebooks 1..15 agree (own hidden states), one count per codebook."""
    return (ref.cp_logits.argmax(-1) == test.cp_logits.argmax(-1)).sum(0).numpy().astype(np.int64)


def summarize(entries: list[dict[str, Any]], kl_values: list[np.ndarray], hits: np.ndarray | None,
              frames: int) -> dict[str, Any]:
    """Frame-weighted totals over every scored sequence (``hits``/``frames`` from :func:`codebook_hits`)."""
    per_codebook = [float(h) / frames for h in hits] if hits is not None and frames else []
    if not entries:
        return {"frames_scored": 0}
    total = sum(int(e["frames_scored"]) for e in entries)

    def weighted(key: str, weight_key: str = "frames_scored") -> float | None:
        values = [(e[key], float(e[weight_key])) for e in entries if e.get(key) is not None and e[weight_key]]
        if not values:
            return None
        return float(sum(v * w for v, w in values) / sum(w for _, w in values))

    kl = np.concatenate(kl_values) if kl_values else np.zeros(0)
    nll_ref = weighted("nll_reference")
    nll_pkg = weighted("nll_package")
    return {
        "frames_scored": int(total),
        "sequences": len(entries),
        "kl_mean": float(kl.mean()) if kl.size else None,
        "kl_p95": float(np.quantile(kl, 0.95)) if kl.size else None,
        "kl_max": float(kl.max()) if kl.size else None,
        "top1_agreement": weighted("top1_agreement"),
        "top5_agreement": weighted("top5_agreement"),
        "nll_reference": nll_ref,
        "nll_package": nll_pkg,
        "nll_increase": None if nll_ref is None or nll_pkg is None else nll_pkg - nll_ref,
        "code_predictor": {
            "top1_own_hidden": weighted("cp_top1_own_hidden", "frames"),
            "top1_same_hidden": weighted("cp_top1_same_hidden", "frames"),
            "per_codebook_own_hidden": per_codebook,
        },
        "restricted_to": "codes 0..vocab-1025 and EOS (the ids generation can emit)",
    }
