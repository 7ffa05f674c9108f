"""Collect: run one batch of prompt x seed jobs on both models and return one typed record per job.

Per job: the reference generates (recording its talker input rows) and the package generates with the same
seed, voice and batch; both talkers are teacher-forced on the reference's codes (KL, top-k, stop signal, code
predictor); audio is decoded from the free-running and the teacher-forced greedy codes (spectral distance,
speaker similarity, optional ASR). Everything later stages need is in the record, so records can be cached,
computed by other processes and merged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tts_awq.qwen_tts import decode_codes
from tts_awq.validate import asr as asr_mod
from tts_awq.validate import audio, freerun, stop, teacher
from tts_awq.validate.plan import Job
from tts_awq.validate.synth import Generation, generate_jobs

#: Jobs (in job order) whose reference talker rows are kept for the per-linear held-out error.
HELD_OUT_JOBS = 8


@dataclass
class JobRecord:
    """Everything measured for one job. ``data`` is JSON (the report's per-prompt entry plus timings);
    ``arrays`` holds the per-frame KL, the code-predictor hits per codebook and, for the first jobs, the
    reference talker rows (held-out activations) and the first job's log-mels."""

    number: int  # position in the run's job list
    data: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.data['id']}#s{self.data['seed']}"


@dataclass
class Context:
    """What every batch needs: both models, the judges and the run's sizes."""

    package: Any  # qwen_tts.Qwen3TTSModel
    reference: Any
    judge: audio.SpeakerJudge
    vocab: teacher.Vocab
    voice_audio: dict[str, tuple[np.ndarray, int]]
    voice_embedding: dict[str, dict[str, np.ndarray | None]]
    max_new_tokens: int
    transcribe: Any = None  # (wav, sr) -> text, when an ASR model was given
    asr_name: str | None = None
    prompt_cache: dict[Any, Any] = field(default_factory=dict)  # voice prompts per (model, voice, mode)
    engine: str = "fast"  # talker decode loop, see tts_awq.qwen_tts.decode
    slots: int = 1  # items decoded at once ("fast": a group of jobs refills its slots; else the group is one batch)


def _audio_entry(ctx: Context, job: Job, g_ref: Generation, g_pkg: Generation, tf_ref: teacher.TeacherForced,
                 tf_pkg: teacher.TeacherForced, arrays: dict[str, np.ndarray], keep_mel: bool) -> dict[str, Any]:
    wav_tf_ref, sr = decode_codes(ctx.reference, tf_ref.greedy_codes, g_ref.ref_code)
    wav_tf_pkg, _ = decode_codes(ctx.package, tf_pkg.greedy_codes, g_ref.ref_code)
    entry: dict[str, Any] = dict(audio.spectral_distance(wav_tf_ref, wav_tf_pkg, sr))
    if keep_mel:
        arrays["mel_reference"], arrays["mel_package"] = audio.log_mel(wav_tf_ref, sr), audio.log_mel(wav_tf_pkg, sr)
    wav_ref, sr_ref = decode_codes(ctx.reference, g_ref.codes, g_ref.ref_code)
    wav_pkg, sr_pkg = decode_codes(ctx.package, g_pkg.codes, g_pkg.ref_code)
    target = ctx.voice_embedding[job.voice.name]
    sim_ref = ctx.judge.similarity(ctx.judge.embed(wav_ref, sr_ref), target)
    sim_pkg = ctx.judge.similarity(ctx.judge.embed(wav_pkg, sr_pkg), target)
    entry.update({"sim_reference": sim_ref["model"], "sim_package": sim_pkg["model"],
                  "resemblyzer_sim_reference": sim_ref["resemblyzer"],
                  "resemblyzer_sim_package": sim_pkg["resemblyzer"]})
    if ctx.transcribe is not None:
        text_ref, text_pkg = ctx.transcribe(wav_ref, sr_ref), ctx.transcribe(wav_pkg, sr_pkg)
        counts = {f"reference_{k}": v for k, v in asr_mod.error_counts(job.prompt.text, text_ref).items()}
        counts.update({f"package_{k}": v for k, v in asr_mod.error_counts(job.prompt.text, text_pkg).items()})
        entry.update({"transcript_reference": text_ref, "transcript_package": text_pkg, "asr": counts})
    return entry


def _measure(ctx: Context, job: Job, number: int, g_ref: Generation, g_pkg: Generation,
             tf_ref: teacher.TeacherForced, tf_pkg: teacher.TeacherForced, generate_s: float,
             teacher_s: float) -> JobRecord:
    start = time.perf_counter()
    t_entry, kl = teacher.compare(tf_ref, tf_pkg, g_ref, ctx.vocab)
    arrays: dict[str, np.ndarray] = {"kl": kl, "codebook_hits": teacher.codebook_hits(tf_ref, tf_pkg)}
    if number < HELD_OUT_JOBS and g_ref.rows is not None:
        arrays["reference_rows"] = g_ref.rows.float().numpy()
    teacher_s += time.perf_counter() - start
    start = time.perf_counter()
    a_entry = _audio_entry(ctx, job, g_ref, g_pkg, tf_ref, tf_pkg, arrays, keep_mel=number == 0)
    data = {**job.describe(), "teacher": t_entry, "stop": stop.compare(tf_ref, tf_pkg, g_ref, ctx.vocab),
            "freerun": freerun.pair(job, g_ref, g_pkg), "audio": a_entry,
            "timing_s": {"generate_per_item": round(generate_s, 4), "teacher": round(teacher_s, 4),
                         "audio": round(time.perf_counter() - start, 4)}}
    return JobRecord(number=number, data=data, arrays=arrays)


@torch.no_grad()
def collect_batch(ctx: Context, batch: list[Job], first_number: int) -> list[JobRecord]:
    """Generate ``batch`` on both models (one batch each, same seed) and measure every job of it."""
    start = time.perf_counter()
    g_refs = generate_jobs(ctx.reference, batch, ctx.voice_audio, ctx.max_new_tokens, capture=True,
                           prompt_cache=ctx.prompt_cache, engine=ctx.engine, slots=ctx.slots)
    g_pkgs = generate_jobs(ctx.package, batch, ctx.voice_audio, ctx.max_new_tokens, prompt_cache=ctx.prompt_cache,
                           engine=ctx.engine, slots=ctx.slots)
    per_item = (time.perf_counter() - start) / len(batch)  # both models, per job
    start = time.perf_counter()
    tf_refs = teacher.teacher_force_batch(ctx.reference, g_refs, ctx.vocab)
    tf_pkgs = teacher.teacher_force_batch(ctx.package, g_refs, ctx.vocab, ref_hiddens=[t.hidden for t in tf_refs])
    teacher_per_item = (time.perf_counter() - start) / len(batch)
    records = []
    for offset, (job, g_ref, g_pkg) in enumerate(zip(batch, g_refs, g_pkgs, strict=True)):
        record = _measure(ctx, job, first_number + offset, g_ref, g_pkg, tf_refs[offset], tf_pkgs[offset],
                          per_item, teacher_per_item)
        record.data["batch_size"] = min(len(batch), ctx.slots) if ctx.engine == "fast" else len(batch)
        records.append(record)
    return records
