"""Free-running generation with fixed seeds: how long does the package talk compared with the reference?

Per (prompt, seed) the duration ratio is package frames / reference frames. A package generation is a
*runaway* when it hit ``--max-new-tokens`` (while the reference stopped) or ran over ``RUNAWAY_FACTOR`` x the
reference length; a pair where both hit the limit is *censored* and reported, not counted; an *early
stop* when it is under ``EARLY_FACTOR`` x. Long-form prompts (kind "long") are summarized on their own; the
"sentence" summary covers every other prompt.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tts_awq.validate.plan import Job
from tts_awq.validate.synth import FRAME_RATE_HZ, Generation

RUNAWAY_FACTOR = 2.0
EARLY_FACTOR = 0.5


def pair(job: Job, ref: Generation, test: Generation) -> dict[str, Any]:
    ratio = test.frames / ref.frames if ref.frames else None
    # When the reference itself ran to the limit the pair is censored: the package cannot be blamed for it.
    censored = not ref.stopped and not test.stopped
    runaway = not censored and ((not test.stopped) or (ratio is not None and ratio > RUNAWAY_FACTOR))
    return {
        "reference_frames": ref.frames,
        "package_frames": test.frames,
        "reference_seconds": round(ref.frames / FRAME_RATE_HZ, 3),
        "package_seconds": round(test.frames / FRAME_RATE_HZ, 3),
        "duration_ratio": ratio,
        "reference_hit_limit": not ref.stopped,
        "package_hit_limit": not test.stopped,
        "runaway": bool(runaway),
        "censored": bool(censored),
        "early_stop": bool(ratio is not None and ratio < EARLY_FACTOR),
        "long_form": job.prompt.kind == "long",
    }


def _stats(entries: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = np.array([e["duration_ratio"] for e in entries if e["duration_ratio"] is not None], dtype=np.float64)
    return {
        "generations": len(entries),
        "median_ratio": float(np.median(ratios)) if ratios.size else None,
        "p5_ratio": float(np.percentile(ratios, 5)) if ratios.size else None,
        "p95_ratio": float(np.percentile(ratios, 95)) if ratios.size else None,
        "mean_ratio": float(ratios.mean()) if ratios.size else None,
        "runaway_count": sum(e["runaway"] for e in entries),
        "package_hit_limit_count": sum(e["package_hit_limit"] for e in entries),
        "early_stop_count": sum(e["early_stop"] for e in entries),
        "reference_hit_limit_count": sum(e["reference_hit_limit"] for e in entries),
        "censored_count": sum(e["censored"] for e in entries),
        "reference_seconds_total": round(sum(e["reference_seconds"] for e in entries), 3),
        "package_seconds_total": round(sum(e["package_seconds"] for e in entries), 3),
    }


def summarize(entries: list[dict[str, Any]], max_new_tokens: int) -> dict[str, Any]:
    sentence = [e for e in entries if not e["long_form"]]
    long_form = [e for e in entries if e["long_form"]]
    summary = {
        "max_new_tokens": max_new_tokens,
        "runaway_factor": RUNAWAY_FACTOR,
        "early_factor": EARLY_FACTOR,
        "all": _stats(entries),
        "sentence": _stats(sentence),
        "long": _stats(long_form),
    }
    if summary["all"]["reference_hit_limit_count"]:
        summary["note"] = ("the reference itself hit --max-new-tokens on some prompts: their ratios are censored; "
                           "raise --max-new-tokens")
    return summary
