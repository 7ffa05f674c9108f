"""Summarize: job records -> the report's ``metrics`` section (pure functions of the records).

Besides the per-measure summaries (teacher forcing, stop signal, free-running duration, audio), the
``runaway`` section answers the tail question with intervals: how often does each side never stop (hit
``max_new_tokens``), is the package's rate above the reference's, and how large an excess is still compatible
with what was seen (the gated upper bound). Package and reference generations are paired (same prompt, seed,
voice and batch), so the paired exact test is reported beside the unpaired one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats as st

from tts_awq.validate import asr as asr_mod
from tts_awq.validate import audio, freerun, stats, stop, teacher
from tts_awq.validate.collect import JobRecord
from tts_awq.validate.plan import Settings

#: The excess runaway rate the "generations needed" line is computed for, besides the gate's threshold.
REFERENCE_EXCESS = 0.01


def _teacher(records: list[JobRecord]) -> dict[str, Any]:
    entries = [r.data["teacher"] for r in records]
    kl_values = [r.arrays["kl"] for r in records]
    hits = [r.arrays["codebook_hits"] for r in records if r.arrays["codebook_hits"].size]
    frames = sum(int(r.data["freerun"]["reference_frames"]) for r in records)
    summary = teacher.summarize(entries, kl_values, np.sum(hits, axis=0) if hits else None, frames)
    for key in ("kl_mean", "top1_agreement"):
        values = [e[key] for e in entries if e.get(key) is not None]
        point, lo, hi = stats.bootstrap_ci(values, "mean")
        summary[f"{key}_per_generation_ci95"] = {"mean": point, "lo": lo, "hi": hi,
                                                 "method": "percentile bootstrap over generations"}
    return summary


def _paired_excess_p(package_only: int, reference_only: int) -> float:
    """Exact one-sided McNemar: among discordant pairs, is "package ran away, reference did not" over half?"""
    discordant = package_only + reference_only
    if discordant == 0:
        return 1.0
    return float(st.binomtest(package_only, discordant, 0.5, alternative="greater").pvalue)


def runaway(freeruns: list[dict[str, Any]], gate_excess: float) -> dict[str, Any]:
    """Never-stopped rates of both sides with Clopper-Pearson intervals, excess tests and the gated bound."""
    n = len(freeruns)
    k_pkg = sum(bool(f["package_hit_limit"]) for f in freeruns)
    k_ref = sum(bool(f["reference_hit_limit"]) for f in freeruns)
    pkg_only = sum(bool(f["package_hit_limit"] and not f["reference_hit_limit"]) for f in freeruns)
    ref_only = sum(bool(f["reference_hit_limit"] and not f["package_hit_limit"]) for f in freeruns)
    early_pkg = sum(bool(f["early_stop"]) for f in freeruns)
    early_ref = sum(1 for f in freeruns if f["reference_frames"] < freerun.EARLY_FACTOR * f["package_frames"])
    ref_rate = k_ref / n if n else 0.0
    return {
        "generations": n,
        "definition": "a generation that emitted no codec EOS within max_new_tokens",
        "package": stats.rate_summary(k_pkg, n).to_dict(),
        "reference": stats.rate_summary(k_ref, n).to_dict(),
        "excess": (k_pkg - k_ref) / n if n else None,
        "excess_upper95": stats.excess_upper_bound(k_pkg, n, k_ref, n) if n else None,
        "excess_upper95_method": "one-sided 95 % Newcombe hybrid score bound (unpaired; conservative for pairs)",
        "excess_p_value_fisher": stats.excess_test(k_pkg, n, k_ref, n) if n else None,
        "paired": {"package_only": pkg_only, "reference_only": ref_only,
                   "p_value_exact_mcnemar": _paired_excess_p(pkg_only, ref_only)},
        "early_stop": {"definition": f"under {freerun.EARLY_FACTOR}x the other side's length (same job)",
                       "package": stats.rate_summary(early_pkg, n).to_dict(),
                       "reference": stats.rate_summary(early_ref, n).to_dict()},
        "resolution": {
            "resolvable_excess_with_n": stats.resolvable_excess(ref_rate, n) if n and ref_rate < 1 else None,
            "generations_needed": {str(e): stats.generations_needed(ref_rate, e)
                                   for e in sorted({gate_excess, REFERENCE_EXCESS}) if 0 < e <= 1 - ref_rate},
            "at_reference_rate": ref_rate,
            "test": "one-sided two-proportion test, alpha 0.05, power 0.8, per arm",
        },
    }


def _duration_ci(freeruns: list[dict[str, Any]]) -> dict[str, Any]:
    pairs = [(f["package_frames"], f["reference_frames"]) for f in freeruns
             if not f["long_form"] and f["reference_frames"] > 0]
    point, lo, hi = stats.paired_ratio_ci([p for p, _ in pairs], [r for _, r in pairs], "median")
    return {"median": point, "lo": lo, "hi": hi, "method": "percentile bootstrap over sentence prompt pairs"}


def _throughput(records: list[JobRecord]) -> dict[str, Any]:
    generate = [r.data["timing_s"]["generate_per_item"] for r in records]
    total = [sum(r.data["timing_s"].values()) for r in records]
    return {
        "batch_sizes": sorted({int(r.data.get("batch_size", 1)) for r in records}),
        "generate_seconds_per_job_mean": float(np.mean(generate)) if generate else None,
        "generate_seconds_per_job_p95": float(np.percentile(generate, 95)) if generate else None,
        "seconds_per_job_mean": float(np.mean(total)) if total else None,
        "note": "a job = one generation by each model + teacher forcing + audio; machine-dependent",
    }


def summarize(records: list[JobRecord], settings: Settings, gate_excess: float, resemblyzer_note: str,
              asr_name: str | None) -> dict[str, Any]:
    records = sorted(records, key=lambda r: r.number)
    freeruns = [r.data["freerun"] for r in records]
    audio_entries = [r.data["audio"] for r in records]
    free = freerun.summarize(freeruns, settings.max_new_tokens)
    free["sentence_median_ratio_ci95"] = _duration_ci(freeruns)
    return {
        "teacher": _teacher(records),
        "stop": stop.summarize([r.data["stop"] for r in records]),
        "freerun": free,
        "runaway": runaway(freeruns, gate_excess),
        "audio": {
            "teacher_forced": audio.summarize_spectral(audio_entries),
            "speaker_similarity": audio.summarize_speaker(audio_entries, resemblyzer_note),
            "asr": asr_mod.summarize([a["asr"] for a in audio_entries if "asr" in a], asr_name),
        },
        "throughput": _throughput(records),
    }
