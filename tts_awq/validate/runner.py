"""``validate_package``: run every measure, evaluate the gates, write the report, record it in provenance."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tts_awq import __version__
from tts_awq.checkpoint.atomic import atomic_output_dir
from tts_awq.checkpoint.files import hash_tree, list_files, sha256_file
from tts_awq.constants import DEFAULT_SEED
from tts_awq.errors import UserError
from tts_awq.prompts import Prompt, load_prompts, load_voice_clips, read_voice
from tts_awq.provenance import PROVENANCE_NAME, git_commit, library_versions, read_provenance, verify_outputs
from tts_awq.validate import asr as asr_mod
from tts_awq.validate import audio, freerun, layers, plots, report, stop, teacher
from tts_awq.validate import gates as gates_mod
from tts_awq.validate import package as package_mod
from tts_awq.validate.models import (
    Side,
    check_same_architecture,
    compute_dtype,
    load_side,
    resolve_device,
    resolve_package,
    resolve_reference,
)
from tts_awq.validate.synth import Job, decode, generate

log = logging.getLogger(__name__)

VALIDATION_DIR = package_mod.VALIDATION_DIR
SEED_BASE = DEFAULT_SEED
DEFAULT_SEEDS = 2
DEFAULT_MAX_NEW_TOKENS = 2048


@dataclass
class Report:
    """The written report: ``data`` is exactly what ``report.json`` holds."""

    data: dict[str, Any]
    directory: Path  # OUT/validation
    report_sha256: str

    @property
    def passed(self) -> bool:
        return bool(self.data["passed"])

    @property
    def failed_gates(self) -> list[str]:
        return list(self.data["failed_gates"])

    @property
    def json_path(self) -> Path:
        return self.directory / report.REPORT_JSON

    @property
    def markdown_path(self) -> Path:
        return self.directory / report.REPORT_MD


def select_prompts(prompts: list[Prompt], n: int | None) -> list[Prompt]:
    """``n`` prompts spread evenly over the file, long-form ones in proportion (at least one when n >= 4)."""
    if n is None or n >= len(prompts):
        return list(prompts)
    long_idx = [i for i, p in enumerate(prompts) if p.kind == "long"]
    other_idx = [i for i, p in enumerate(prompts) if p.kind != "long"]
    n_long = round(n * len(long_idx) / len(prompts))
    if long_idx and n >= 4:
        n_long = max(n_long, 1)
    n_long = min(n_long, len(long_idx))
    n_other = min(n - n_long, len(other_idx))
    n_long = n - n_other

    def spread(indices: list[int], k: int) -> list[int]:
        return [indices[(j * len(indices)) // k] for j in range(k)] if k else []

    chosen = sorted(spread(long_idx, n_long) + spread(other_idx, n_other))
    return [prompts[i] for i in chosen]


def _gate_specs(gates: Any) -> dict[str, gates_mod.GateSpec]:
    if gates is None:
        return gates_mod.default_gates()
    if isinstance(gates, str | Path):
        return gates_mod.load_gates(gates)
    if isinstance(gates, Mapping):
        if all(isinstance(v, gates_mod.GateSpec) for v in gates.values()) and gates:
            return {**gates_mod.default_gates(), **gates}
        return gates_mod.parse_overrides(gates, where="gates")
    raise UserError(f"gates: expected a file path or a mapping, got {type(gates).__name__}")


def _weights_sha256(root: Path) -> dict[str, str]:
    return {rel: sha256_file(root / rel) for rel in list_files(root)
            if rel.endswith(".safetensors") and not rel.startswith(f"{VALIDATION_DIR}/")}


def _identity(side: Side) -> dict[str, Any]:
    entry: dict[str, Any] = side.source.describe()
    entry["kind"] = "tts-awq INT4 package" if side.quantized else "dense checkpoint"
    entry["config_sha256"] = sha256_file(side.root / "config.json")
    entry["weights_sha256"] = _weights_sha256(side.root)
    return entry


def _check_args(seeds: int, max_new_tokens: int, n_prompts: int | None) -> None:
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: must be at least 1")
    if max_new_tokens < 3:
        raise UserError(f"--max-new-tokens {max_new_tokens}: must be at least 3 (qwen-tts emits at least 2 frames)")
    if n_prompts is not None and n_prompts < 1:
        raise UserError(f"--n-prompts {n_prompts}: must be at least 1")


def _free(*sides: Side) -> None:
    for side in sides:
        side.tts = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _check_package_integrity(root: Path) -> None:
    """A package edited after quantize-talker must never get ``passed: true``: its files must match
    ``provenance.json -> outputs_sha256`` before anything is measured."""
    prov = read_provenance(root)
    if prov is None:
        raise UserError(f"{root / PROVENANCE_NAME}: not found; validate-awq checks packages written by quantize-talker")
    if "unreadable" in prov and len(prov) == 1:
        raise UserError(f"{root / PROVENANCE_NAME}: not valid JSON; restore it or re-run quantize-talker")
    verify_outputs(root, prov)


def validate_package(out: str | Path, reference: str | Path, eval: str | Path | None = None,
                     seeds: int = DEFAULT_SEEDS, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, gates: Any = None,
                     device: str = "auto", asr_model: str | Path | None = None, n_prompts: int | None = None
                     ) -> Report:
    """Compare the INT4 package in ``out`` with ``reference`` and write ``out/validation/report.{json,md}``.

    Example::

        from tts_awq.validate import validate_package
        rep = validate_package("darwin-awq", "FINAL-Bench/Darwin-TTS-1.7B-Cross", seeds=2, gates="gates.yaml")
        print(rep.passed, rep.failed_gates)
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(timings.get(name, 0.0) + now - since, 3)
        return now

    _check_args(seeds, max_new_tokens, n_prompts)
    specs = _gate_specs(gates)
    pkg = resolve_package(out)
    _check_package_integrity(pkg.root)
    ref = resolve_reference(reference)
    check_same_architecture(pkg, ref)
    report.check_provenance_writable(pkg.root)
    enabled_asr = [g for g in gates_mod.ASR_GATES if specs[g].enabled]
    if enabled_asr and asr_model is None:
        raise UserError(f"gate {enabled_asr[0]} needs --asr-model DIR (a local ASR model); pass one or switch it off")
    all_prompts, eval_sha = load_prompts(eval, split="eval")
    prompts = select_prompts(all_prompts, n_prompts)
    voices = load_voice_clips()
    voice_audio = [read_voice(v) for v in voices]
    device = resolve_device(device)
    seed_values = [SEED_BASE + k for k in range(seeds)]
    transcribe, asr_name = (asr_mod.load_asr(asr_model, device) if asr_model is not None else (None, None))
    t = lap("resolve", started)

    load_side(pkg, device)  # first, so its load memory is measured without the reference resident
    t = lap("load_package", t)
    load_side(ref, device)
    t = lap("load_reference", t)
    judge = audio.SpeakerJudge(ref.tts)
    voice_emb = [judge.embed(wav, sr) for wav, sr in voice_audio]
    vocab = teacher.Vocab.of(ref.tts)
    t = lap("load_judges", t)

    entries: list[dict[str, Any]] = []
    teacher_entries: list[dict[str, Any]] = []
    stop_entries: list[dict[str, Any]] = []
    free_entries: list[dict[str, Any]] = []
    spectral: list[dict[str, Any]] = []
    speaker: list[dict[str, Any]] = []
    asr_entries: list[dict[str, Any]] = []
    kl_values: list[np.ndarray] = []
    hits: np.ndarray | None = None
    cp_frames = 0
    held_rows: list[torch.Tensor] = []
    held_tokens = 0
    mel_pair: tuple[np.ndarray, np.ndarray, str] | None = None
    jobs = [Job(prompt=p, index=i, seed=s, voice=voices[i % len(voices)], icl=i % 2 == 1)
            for i, p in enumerate(prompts) for s in seed_values]
    for number, job in enumerate(jobs, 1):
        log.info("validate-awq: %d/%d %s (seed %d, %s)", number, len(jobs), job.prompt.id, job.seed,
                 "ICL" if job.icl else "x-vector")
        v_audio = voice_audio[job.index % len(voices)]
        tj = time.perf_counter()
        g_ref = generate(ref.tts, job, v_audio, max_new_tokens, capture=True)
        g_pkg = generate(pkg.tts, job, v_audio, max_new_tokens)
        tj = lap("generate", tj)
        tf_ref = teacher.teacher_force(ref.tts, g_ref, vocab)
        tf_pkg = teacher.teacher_force(pkg.tts, g_ref, vocab, ref_hidden=tf_ref.hidden)
        t_entry, kl = teacher.compare(tf_ref, tf_pkg, g_ref, vocab)
        s_entry = stop.compare(tf_ref, tf_pkg, g_ref, vocab)
        f_entry = freerun.pair(job, g_ref, g_pkg)
        job_hits = teacher.codebook_hits(tf_ref, tf_pkg)
        hits = job_hits if hits is None else hits + job_hits
        cp_frames += g_ref.frames
        kl_values.append(kl)
        tj = lap("teacher_forcing", tj)

        wav_tf_ref, sr = decode(ref.tts, tf_ref.greedy_codes, g_ref.ref_code)
        wav_tf_pkg, _ = decode(pkg.tts, tf_pkg.greedy_codes, g_ref.ref_code)
        dist = audio.spectral_distance(wav_tf_ref, wav_tf_pkg, sr)
        if mel_pair is None:
            mel_pair = (audio.log_mel(wav_tf_ref, sr), audio.log_mel(wav_tf_pkg, sr), job.key)
        wav_ref, sr_ref = decode(ref.tts, g_ref.codes, g_ref.ref_code)
        wav_pkg, sr_pkg = decode(pkg.tts, g_pkg.codes, g_pkg.ref_code)
        target = voice_emb[job.index % len(voices)]
        sim_ref = judge.similarity(judge.embed(wav_ref, sr_ref), target)
        sim_pkg = judge.similarity(judge.embed(wav_pkg, sr_pkg), target)
        a_entry: dict[str, Any] = {
            **dist,
            "sim_reference": sim_ref["model"],
            "sim_package": sim_pkg["model"],
            "resemblyzer_sim_reference": sim_ref["resemblyzer"],
            "resemblyzer_sim_package": sim_pkg["resemblyzer"],
        }
        if transcribe is not None:
            text_ref, text_pkg = transcribe(wav_ref, sr_ref), transcribe(wav_pkg, sr_pkg)
            counts = {f"reference_{k}": v for k, v in asr_mod.error_counts(job.prompt.text, text_ref).items()}
            counts.update({f"package_{k}": v for k, v in asr_mod.error_counts(job.prompt.text, text_pkg).items()})
            asr_entries.append(counts)
            a_entry.update({"transcript_reference": text_ref, "transcript_package": text_pkg, **counts})
        spectral.append(dist)
        speaker.append(a_entry)
        lap("audio", tj)

        if g_ref.rows is not None and held_tokens < layers.MAX_TOKENS:
            held_rows.append(g_ref.rows)
            held_tokens += int(g_ref.rows.shape[0])
        teacher_entries.append(t_entry)
        stop_entries.append(s_entry)
        free_entries.append(f_entry)
        entries.append({
            "id": job.prompt.id, "lang": job.prompt.lang, "kind": job.prompt.kind, "seed": job.seed,
            "voice": job.voice.name, "mode": "icl" if job.icl else "x-vector", "text_chars": len(job.prompt.text),
            "teacher": t_entry, "stop": s_entry, "freerun": f_entry, "audio": a_entry,
        })

    package_load = dict(pkg.load)
    reference_load = dict(ref.load)
    _free(pkg, ref)
    t = time.perf_counter()
    qconfig = dict(pkg.layout.config["quantization_config"])
    group_size = int(qconfig["group_size"])  # checked against the stored tensors by load_quantized (no default)
    bits = int(qconfig.get("bits", qconfig.get("w_bit", 4)))
    pkg_store, ref_store = pkg.store(), ref.store()
    layer_report = layers.layer_errors(ref_store, pkg_store, pkg.layout.decoder, layers.held_out(held_rows), bits,
                                       group_size, device)
    t = lap("layers", t)
    facts = package_mod.facts(pkg.root, ref.root, pkg_store, ref_store, qconfig, package_load)
    facts["reference_load"] = reference_load
    identities = {"package_dir": _identity(pkg), "reference": _identity(ref)}
    t = lap("package_facts", t)

    metrics: dict[str, Any] = {
        "teacher": teacher.summarize(teacher_entries, kl_values, hits, cp_frames),
        "stop": stop.summarize(stop_entries),
        "freerun": freerun.summarize(free_entries, max_new_tokens),
        "audio": {
            "teacher_forced": audio.summarize_spectral(spectral),
            "speaker_similarity": audio.summarize_speaker(speaker, judge.resemblyzer_note),
            "asr": asr_mod.summarize(asr_entries, asr_name),
        },
        "layers": layer_report,
    }
    gate_results = gates_mod.evaluate_gates(specs, metrics)
    failed = [name for name, g in gate_results.items() if not g["passed"]]
    created = int(time.time())
    data: dict[str, Any] = {
        "schema": report.SCHEMA,
        "passed": not failed,
        "failed_gates": failed,
        "gates": gate_results,
        "disabled_gates": gates_mod.disabled_gates(specs),
        **identities,
        "eval": {
            "source": str(eval) if eval is not None else "builtin:calib_data/eval.jsonl",
            "sha256": eval_sha,
            "n_prompts": len(prompts),
            "n_available": len(all_prompts),
            "prompt_ids": [p.id for p in prompts],
            "seeds": seed_values,
            "max_new_tokens": max_new_tokens,
            "voices": [v.name for v in voices],
            "modes": "prompts alternate x-vector-only (even index) and ICL (odd index) voice cloning",
        },
        "settings": {
            "device": device,
            "dtype": str(compute_dtype(device)).removeprefix("torch."),
            "asr_model": str(asr_model) if asr_model is not None else None,
            "sampling": "qwen-tts generation defaults of the package's generation_config.json",
        },
        "metrics": metrics,
        "package": facts,
        "prompts": entries,
        "tool": {"name": "tts-awq", "version": __version__, "git_commit": git_commit()},
        "libraries": library_versions(),
        "created_unix": created,
    }
    with atomic_output_dir(pkg.root / VALIDATION_DIR, overwrite=True) as tmp:
        plot_files = {
            "Per-linear relative error, AWQ vs RTN": plots.LAYER_ERRORS,
            "Duration ratio per prompt": plots.DURATION_RATIO,
            "Teacher-forced KL per frame": plots.KL_HISTOGRAM,
            "Reference vs package mel spectrogram": plots.MEL_COMPARISON,
        }
        plots.layer_errors(layer_report["per_linear"], tmp / plots.LAYER_ERRORS)
        plots.duration_ratio(free_entries, tmp / plots.DURATION_RATIO)
        plots.kl_histogram(np.concatenate(kl_values) if kl_values else np.zeros(0), tmp / plots.KL_HISTOGRAM)
        if mel_pair is not None:
            plots.mel_comparison(mel_pair[0], mel_pair[1], f"teacher-forced audio, {mel_pair[2]}",
                                 tmp / plots.MEL_COMPARISON)
        data["plots"] = plot_files
        timings["plots"] = round(time.perf_counter() - t, 3)
        timings["total"] = round(time.perf_counter() - started, 3)
        data["timings_s"] = timings  # machine-dependent, not deterministic
        sha = report.write_json_report(data, tmp / report.REPORT_JSON)
        (tmp / report.REPORT_MD).write_text(report.markdown(data), encoding="utf-8")
    report.record_in_provenance(pkg.root, {
        "report_sha256": sha,
        "files": hash_tree(pkg.root, [r for r in list_files(pkg.root) if r.startswith(f"{VALIDATION_DIR}/")]),
        "passed": not failed,
        "failed_gates": failed,
        "created_unix": created,
        "report": f"{VALIDATION_DIR}/{report.REPORT_JSON}",
        "reference": identities["reference"]["spec"],
    })
    log.info("validate-awq: %s%s -> %s", "PASS" if not failed else "FAIL",
             f" ({', '.join(failed)})" if failed else "", pkg.root / VALIDATION_DIR / report.REPORT_MD)
    return Report(data=report.clean(data), directory=pkg.root / VALIDATION_DIR, report_sha256=sha)
