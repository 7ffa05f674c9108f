"""The stop signal: does the package still put probability on EOS where the reference stopped?

Known INT4 failure of TTS talkers: the EOS logit weakens, the model talks on to the token limit (or stops early).
Teacher-forced on the reference's sequence, at the frame where the reference sampled EOS (``T``) and over the
last ``LAST_FRAMES`` frames up to it, we compare the EOS probability (softmax over the ids generation can emit)
of package and reference, and where each model's argmax first picks EOS.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tts_awq.validate.synth import Generation
from tts_awq.validate.teacher import TeacherForced, Vocab

LAST_FRAMES = 5


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def compare(ref: TeacherForced, test: TeacherForced, gen: Generation, vocab: Vocab) -> dict[str, Any]:
    """Per-sequence stop numbers. Frames are 0-based; ``offset`` < 0 means the package would stop early."""
    p_ref = ref.logprobs[:, vocab.eos_index].exp().numpy()
    p_test = test.logprobs[:, vocab.eos_index].exp().numpy()
    first_ref = _first(ref.logprobs.argmax(-1).numpy() == vocab.eos_index)
    first_test = _first(test.logprobs.argmax(-1).numpy() == vocab.eos_index)
    entry: dict[str, Any] = {
        "reference_stopped": gen.stopped,
        "stop_frame": gen.frames if gen.stopped else None,
        "first_argmax_eos_reference": first_ref,
        "first_argmax_eos_package": first_test,
        "first_argmax_eos_offset": (first_test - first_ref) if first_ref is not None and first_test is not None
        else None,
    }
    if gen.stopped:
        t = gen.frames
        lo = max(0, t - LAST_FRAMES + 1)
        entry.update({
            "p_eos_at_stop_reference": float(p_ref[t]),
            "p_eos_at_stop_package": float(p_test[t]),
            "p_eos_last_frames_reference": float(p_ref[lo : t + 1].mean()),
            "p_eos_last_frames_package": float(p_test[lo : t + 1].mean()),
            "package_first_argmax_eos_vs_stop": (first_test - t) if first_test is not None else None,
        })
    return entry


def _ratio(num: list[float], den: list[float]) -> float | None:
    if not num or not den:
        return None
    d = float(np.mean(den))
    return float(np.mean(num)) / d if d > 0 else None


def summarize(entries: list[dict[str, Any]]) -> dict[str, Any]:
    stopped = [e for e in entries if e["reference_stopped"]]
    at_ref = [e["p_eos_at_stop_reference"] for e in stopped]
    at_pkg = [e["p_eos_at_stop_package"] for e in stopped]
    last_ref = [e["p_eos_last_frames_reference"] for e in stopped]
    last_pkg = [e["p_eos_last_frames_package"] for e in stopped]
    per_seq = [p / r for p, r in zip(at_pkg, at_ref, strict=True) if r > 0]
    offsets = [e["first_argmax_eos_offset"] for e in entries if e["first_argmax_eos_offset"] is not None]
    vs_stop = [e["package_first_argmax_eos_vs_stop"] for e in stopped
               if e.get("package_first_argmax_eos_vs_stop") is not None]
    return {
        "sequences": len(entries),
        "reference_stopped": len(stopped),
        "last_frames": LAST_FRAMES,
        "p_eos_at_stop_reference_mean": float(np.mean(at_ref)) if at_ref else None,
        "p_eos_at_stop_package_mean": float(np.mean(at_pkg)) if at_pkg else None,
        "ratio_at_stop": _ratio(at_pkg, at_ref),
        "ratio_at_stop_median_per_sequence": float(np.median(per_seq)) if per_seq else None,
        "ratio_last_frames": _ratio(last_pkg, last_ref),
        "argmax_eos_reference_count": sum(e["first_argmax_eos_reference"] is not None for e in entries),
        "argmax_eos_package_count": sum(e["first_argmax_eos_package"] is not None for e in entries),
        "first_argmax_eos_offset_mean": float(np.mean(offsets)) if offsets else None,
        "package_argmax_eos_early_count": sum(1 for v in vs_stop if v < 0),
        "package_argmax_eos_vs_stop_mean": float(np.mean(vs_stop)) if vs_stop else None,
        "note": None if stopped else "no reference generation stopped within --max-new-tokens; stop signal not measured",
    }
