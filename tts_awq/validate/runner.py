"""``validate_package``: prepare -> collect (cached, shardable) -> summarize -> gates -> report.

Each stage lives in its own module: :mod:`.plan` (what to measure), :mod:`.collect` (one batch of jobs -> typed
records), :mod:`.jobcache` / :mod:`.workers` (resume and scale-out), :mod:`.summarize` (records -> metrics),
:mod:`.gates` and :mod:`.report` (JSON, Markdown, plots, provenance record). This module only wires them.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tts_awq import __version__
from tts_awq.checkpoint.files import list_files, sha256_file
from tts_awq.errors import UserError
from tts_awq.prompts import Prompt, VoiceClip, load_prompts, load_voice_clips, read_voice
from tts_awq.provenance import PROVENANCE_NAME, read_provenance, verify_outputs
from tts_awq.qwen_tts import default_dtype, resolve_device
from tts_awq.validate import asr as asr_mod
from tts_awq.validate import audio, jobcache, layers, plan, reach, report, summarize, teacher
from tts_awq.validate import gates as gates_mod
from tts_awq.validate import package as package_mod
from tts_awq.validate.collect import Context, JobRecord, collect_batch
from tts_awq.validate.models import (
    Side,
    check_same_architecture,
    load_side,
    resolve_package,
    resolve_reference,
)
from tts_awq.validate.report import Report
from tts_awq.validate.workers import World, run_batches

log = logging.getLogger(__name__)

VALIDATION_DIR = package_mod.VALIDATION_DIR
select_prompts = plan.select_prompts  # public helper, kept importable from here


@dataclass
class Run:
    """Everything decided before measuring: inputs, sizes, gates, jobs and where their records are cached."""

    settings: plan.Settings
    gates: dict[str, gates_mod.GateSpec]
    package: Side
    reference: Side
    prompts: list[Prompt]
    eval_info: dict[str, Any]
    voices: list[VoiceClip]
    jobs: list[plan.Job]
    identities: dict[str, Any]
    asr_model: str | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def cache(self) -> Path:
        return self.package.root / VALIDATION_DIR / jobcache.JOBS_DIR

    def lap(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[name] = round(self.timings.get(name, 0.0) + now - since, 3)
        return now


def _gate_specs(gates: Any, profile: plan.Profile) -> dict[str, gates_mod.GateSpec]:
    defaults = gates_mod.default_gates(runaway_excess=profile.runaway_excess_upper95)
    if gates is None:
        return defaults
    if isinstance(gates, str | Path):
        return gates_mod.load_gates(gates, defaults)
    if isinstance(gates, Mapping):
        if gates and all(isinstance(v, gates_mod.GateSpec) for v in gates.values()):
            return {**defaults, **gates}
        return gates_mod.parse_overrides(gates, where="gates", defaults=defaults)
    raise UserError(f"gates: expected a file path or a mapping, got {type(gates).__name__}")


def _identity(side: Side) -> dict[str, Any]:
    entry: dict[str, Any] = side.source.describe()
    entry["kind"] = "tts-awq INT4 package" if side.quantized else "dense checkpoint"
    entry["config_sha256"] = sha256_file(side.root / "config.json")
    entry["weights_sha256"] = {rel: sha256_file(side.root / rel) for rel in list_files(side.root)
                               if rel.endswith(".safetensors") and not rel.startswith(f"{VALIDATION_DIR}/")}
    return entry


def _check_package_integrity(root: Path) -> None:
    """A package edited after quantize-talker must never get ``passed: true``: its files must match
    ``provenance.json -> outputs_sha256`` before anything is measured."""
    prov = read_provenance(root)
    if prov is None:
        raise UserError(f"{root / PROVENANCE_NAME}: not found; validate-awq checks packages written by quantize-talker")
    if "unreadable" in prov and len(prov) == 1:
        raise UserError(f"{root / PROVENANCE_NAME}: not valid JSON; restore it or re-run quantize-talker")
    verify_outputs(root, prov)


def prepare(out: str | Path, reference: str | Path, eval: str | Path | None, settings: plan.Settings, gates: Any,
            asr_model: str | Path | None) -> Run:
    """Resolve and check every input (one-line errors before anything heavy runs) and plan the jobs."""
    specs = _gate_specs(gates, plan.PROFILES[settings.profile])
    pkg = resolve_package(out)
    _check_package_integrity(pkg.root)
    spec = pkg.layout.decoder
    pkg.store().require_finite((spec.layer_prefix, spec.final_norm))  # before anything is generated
    ref = resolve_reference(reference)
    check_same_architecture(pkg, ref)
    report.check_provenance_writable(pkg.root)
    enabled_asr = [g for g in gates_mod.ASR_GATES if specs[g].enabled]
    if enabled_asr and asr_model is None:
        raise UserError(f"gate {enabled_asr[0]} needs --asr-model DIR (a local ASR model); pass one or switch it off")
    all_prompts, eval_sha = load_prompts(eval, split="eval")
    prompts = select_prompts(all_prompts, settings.n_prompts)
    if len(prompts) < settings.n_prompts:  # the report records what ran, never what was asked for
        log.warning("--n-prompts %d: the eval file holds %d prompts; running (and recording) all %d",
                    settings.n_prompts, len(prompts), len(prompts))
        settings = dataclasses.replace(settings, n_prompts=len(prompts))
    reach.check_reachable(specs, settings, prompts, all_prompts)
    voices = load_voice_clips()
    eval_info = {
        "source": str(eval) if eval is not None else "builtin:calib_data/eval.jsonl", "sha256": eval_sha,
        "n_prompts": len(prompts), "n_available": len(all_prompts), "prompt_ids": [p.id for p in prompts],
        "seeds": settings.seed_values, "max_new_tokens": settings.max_new_tokens,
        "voices": [v.name for v in voices],
        "modes": "prompts alternate x-vector-only (even index) and ICL (odd index) voice cloning",
    }
    jobs = plan.build_jobs(prompts, voices, settings.seed_values)
    identities = {"package_dir": _identity(pkg), "reference": _identity(ref)}
    return Run(settings=settings, gates=specs, package=pkg, reference=ref, prompts=prompts, eval_info=eval_info,
               voices=voices, jobs=jobs, identities=identities, asr_model=str(asr_model) if asr_model else None)


def _run_identity(run: Run) -> dict[str, Any]:
    """What a cached record depends on (see :func:`plan.batch_key`), the decode engine included (the "fast"
    engine's per-item draws give other codes than qwen-tts's batch-wide ones)."""
    prov = read_provenance(run.package.root) or {}
    outputs = json.dumps(prov.get("outputs_sha256", {}), sort_keys=True).encode()
    return {"tool": __version__, "package": hashlib.sha256(outputs).hexdigest(),
            "reference": run.identities["reference"]["weights_sha256"],
            "reference_config": run.identities["reference"]["config_sha256"],
            "eval": run.eval_info["sha256"], "max_new_tokens": run.settings.max_new_tokens,
            "batch_size": run.settings.batch_size, "engine": run.settings.engine, "dtype": str(default_dtype(run.settings.device)),
            "device_type": run.settings.device.split(":")[0], "asr_model": run.asr_model,
            "voices": {v.name: sha256_file(v.path) for v in run.voices}}


def _context(run: Run, device: str) -> Context:
    t = time.perf_counter()
    load_side(run.package, device)  # first, so its load memory is measured without the reference resident
    t = run.lap("load_package", t)
    load_side(run.reference, device)
    t = run.lap("load_reference", t)
    judge = audio.SpeakerJudge(run.reference.tts)
    voice_audio = {v.name: read_voice(v) for v in run.voices}
    transcribe, asr_name = asr_mod.load_asr(run.asr_model, device) if run.asr_model else (None, None)
    ctx = Context(package=run.package.tts, reference=run.reference.tts, judge=judge,
                  vocab=teacher.Vocab.of(run.reference.tts), voice_audio=voice_audio,
                  voice_embedding={name: judge.embed(*clip) for name, clip in voice_audio.items()},
                  max_new_tokens=run.settings.max_new_tokens, transcribe=transcribe, asr_name=asr_name,
                  engine=run.settings.engine, slots=run.settings.batch_size)
    run.lap("load_judges", t)
    return ctx


def collect(run: Run, world: World, device: str) -> tuple[list[JobRecord] | None, Context]:
    """Compute this worker's share of the batches (reusing cached ones); the main worker returns all records."""
    from tqdm.auto import tqdm

    identity = _run_identity(run)
    groups = plan.batches(run.jobs, run.settings.group_size, run.settings.batch_size)
    keyed, first = [], 0
    for batch in groups:
        keyed.append((plan.batch_key(batch, identity), batch, first))
        first += len(batch)
    ctx = _context(run, device)
    t = time.perf_counter()
    with tqdm(total=len(run.jobs), desc=f"validate-awq jobs (worker {world.rank})", unit="job",
              disable=world.helper) as bar:
        computed = run_batches(run.cache, keyed, world, lambda b, n: collect_batch(ctx, b, n), bar.update)
    run.lap("collect", t)
    run.timings["jobs_computed_here"] = computed
    world.barrier()
    if not world.main:
        return None, ctx
    records: list[JobRecord] = []
    for key, _batch, _first in keyed:
        loaded = jobcache.load_records(run.cache, key)
        if loaded is None:
            raise RuntimeError(f"{jobcache.record_path(run.cache, key)}: a batch record is missing after all "
                               "workers finished")
        records.extend(loaded)
    jobcache.clear_claims(run.cache)
    return records, ctx


def _free(*sides: Side) -> None:
    for side in sides:
        side.tts = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _layer_report(run: Run, records: list[JobRecord], device: str) -> dict[str, Any]:
    qconfig = dict(run.package.layout.config["quantization_config"])
    rows = [torch.from_numpy(r.arrays["reference_rows"]) for r in records if "reference_rows" in r.arrays]
    return layers.layer_errors(run.reference.store(), run.package.store(), run.package.layout.decoder,
                               layers.held_out(rows), int(qconfig.get("bits", qconfig.get("w_bit", 4))),
                               int(qconfig["group_size"]), device)  # group size checked by load_quantized


def validate_package(out: str | Path, reference: str | Path, eval: str | Path | None = None,
                     seeds: int | None = None, max_new_tokens: int | None = None, gates: Any = None,
                     device: str = "auto", asr_model: str | Path | None = None, n_prompts: int | None = None,
                     profile: str | None = None, batch_size: int = 1, engine: str = "fast",
                     workers: int = 1) -> Report | None:
    """Compare the INT4 package in ``out`` with ``reference`` and write ``out/validation/report.{json,md}``.

    Returns the report (None on the non-main workers of an ``accelerate launch`` run). ``workers``: how many
    processes share the run when the caller started the others (``validate-awq --workers N`` does, see
    :mod:`tts_awq.validate.spawn`); it only orders this worker's batches, it never waits for absent helpers.
    Example::

        from tts_awq.validate import validate_package
        rep = validate_package("darwin-awq", "FINAL-Bench/Darwin-TTS-1.7B-Cross", profile="standard", batch_size=8)
        print(rep.passed, rep.failed_gates)
    """
    started = time.perf_counter()
    world = World.from_env()
    if workers > 1 and world.size == 1:
        world = World(size=workers)  # the main worker of a --workers run
    device = world.device(resolve_device(device))
    settings = plan.resolve_settings(profile, n_prompts, seeds, max_new_tokens, batch_size, device, engine)
    run = prepare(out, reference, eval, settings, gates, asr_model)
    t = run.lap("resolve", started)
    records, ctx = collect(run, world, device)
    if records is None:
        return None
    metrics = summarize.summarize(records, run.settings, run.gates["runaway_excess_upper95"].threshold or 0.0,
                                  ctx.judge.resemblyzer_note, ctx.asr_name)
    package_load, reference_load = dict(run.package.load), dict(run.reference.load)
    _free(run.package, run.reference)
    t = time.perf_counter()
    metrics["layers"] = _layer_report(run, records, device)
    t = run.lap("layers", t)
    facts = package_mod.facts(run.package.root, run.reference.root, run.package.store(), run.reference.store(),
                              dict(run.package.layout.config["quantization_config"]), package_load)
    facts["reference_load"] = reference_load
    run.lap("package_facts", t)
    results = gates_mod.evaluate_gates(run.gates, metrics)
    reach.explain_failures(results, metrics)
    data = report.assemble(run, metrics, facts, results)
    kl = np.concatenate([r.arrays["kl"] for r in records]) if records else np.zeros(0)
    return report.write(run, data, records, kl, started)
