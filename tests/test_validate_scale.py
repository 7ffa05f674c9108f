"""validate-awq at scale: batched generation, the resumable job cache, two worker processes (gloo), profiles,
the runaway statistics and gate, and keep_bf16.txt."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tts_awq.quantize.pipeline import QuantizeOptions, quantize_talker
from tts_awq.testing.damage import copy_package, edit_weights, scale_eos_row
from tts_awq.validate import collect, plan
from tts_awq.validate.runner import validate_package

#: Only the gates under test: the tiny random talker's fidelity numbers are checked in test_validate.py.
NO_GATES = {name: None for name in ("median_duration_ratio", "teacher_top1", "kl_mean", "speaker_similarity_drop",
                                    "stop_signal_ratio", "runaway_excess_upper95")}
SMALL = {"n_prompts": 8, "seeds": 1, "max_new_tokens": 48, "device": "cpu", "gates": NO_GATES}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def package(tiny_root: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """AWQ package of the tiny Darwin blend with its EOS row boosted (it stops by itself after ~10 frames)."""
    ref = shutil.copytree(tiny_root["tiny-darwin"], tmp_path_factory.mktemp("scale") / "ref")
    edit_weights(ref, scale_eos_row(3.0))
    out = tmp_path_factory.mktemp("scale-pkg") / "awq"
    return quantize_talker(QuantizeOptions(src=str(ref), out=out, n_samples=4, seq_len=32, calib_batch_size=4,
                                           device="cpu", progress=False))


def _stable_prompts(data: dict[str, Any]) -> list[dict[str, Any]]:
    return list(data["prompts"])


def test_batched_run_is_deterministic_and_the_cache_is_reused(package: Path, tmp_path: Path) -> None:
    pkg = copy_package(package, tmp_path / "pkg")
    first = validate_package(pkg, package, batch_size=2, **SMALL)
    assert first is not None
    assert first.data["timings_s"]["jobs_computed_here"] == 8
    assert first.data["settings"]["batch_size"] == 2 and first.data["settings"]["engine"] == "fast"
    jobs = sorted((pkg / "validation" / "jobs").glob("*.safetensors"))
    assert plan.REFILL_GROUPS == 2 and len(jobs) == 2  # one record file per group of 2 x REFILL_GROUPS = 4 jobs
    assert not list((pkg / "validation" / "jobs").glob("*.claim"))
    again = validate_package(pkg, package, batch_size=2, **SMALL)  # everything cached: nothing recomputed
    assert again is not None and again.data["timings_s"]["jobs_computed_here"] == 0
    assert _stable_prompts(again.data) == _stable_prompts(first.data)
    shutil.rmtree(pkg / "validation")
    fresh = validate_package(pkg, package, batch_size=2, **SMALL)  # recomputed: same numbers
    assert fresh is not None and fresh.data["timings_s"]["jobs_computed_here"] == 8
    assert _stable_prompts(fresh.data) == _stable_prompts(first.data)
    # another batch size is another cache entry, but the fast engine's codes do not depend on the batch: the
    # free-running results are the same, teacher forcing (a padded batch forward) within float rounding
    other = validate_package(pkg, package, batch_size=1, **SMALL)
    assert other is not None and other.data["timings_s"]["jobs_computed_here"] == 8
    for a, b in zip(_stable_prompts(other.data), _stable_prompts(first.data), strict=True):
        assert a["freerun"] == b["freerun"]
        assert a["teacher"]["kl_mean"] == pytest.approx(b["teacher"]["kl_mean"], rel=1e-3, abs=1e-7)
    # the exact engine decodes each group of --batch-size jobs as one padded batch: a group per batch
    exact = validate_package(copy_package(package, tmp_path / "exact"), package, batch_size=4, engine="exact",
                             **SMALL)
    assert exact is not None and exact.data["settings"]["engine"] == "exact"
    assert len(list((tmp_path / "exact" / "validation" / "jobs").glob("*.safetensors"))) == 2
    assert [p["freerun"] for p in _stable_prompts(exact.data)] != [p["freerun"] for p in _stable_prompts(first.data)]


def test_a_crashed_run_resumes_from_its_finished_batches(package: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = copy_package(package, tmp_path / "pkg")
    real = collect.collect_batch
    calls: list[int] = []

    def crash_on_third(ctx: Any, batch: Any, first: int) -> Any:
        calls.append(first)
        if len(calls) == 3:
            raise RuntimeError("worker died")
        return real(ctx, batch, first)

    from tts_awq.validate import runner

    monkeypatch.setattr(runner, "collect_batch", crash_on_third)
    with pytest.raises(RuntimeError, match="worker died"):
        validate_package(pkg, package, batch_size=1, **SMALL)  # groups of 1 x REFILL_GROUPS = 2 jobs
    assert not (pkg / "validation" / "report.json").exists()
    assert len(list((pkg / "validation" / "jobs").glob("*.safetensors"))) == 2
    monkeypatch.setattr(runner, "collect_batch", real)
    resumed = validate_package(pkg, package, batch_size=1, **SMALL)
    assert resumed is not None and resumed.data["timings_s"]["jobs_computed_here"] == 4  # 2 of 4 groups left
    shutil.rmtree(pkg / "validation")
    clean = validate_package(pkg, package, batch_size=1, **SMALL)
    assert clean is not None and _stable_prompts(clean.data) == _stable_prompts(resumed.data)


def test_two_worker_processes_share_the_jobs_and_write_one_report(package: Path, tmp_path: Path) -> None:
    single = copy_package(package, tmp_path / "single")
    one = validate_package(single, package, batch_size=1, **SMALL)
    assert one is not None
    pkg = copy_package(package, tmp_path / "pkg")
    gates = tmp_path / "gates.json"
    gates.write_text(json.dumps(NO_GATES))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "tts_awq.validate", str(pkg), "--reference", str(package), "--n-prompts", "8", "--seeds", "1",
           "--max-new-tokens", "48", "--device", "cpu", "--batch-size", "1", "--gates", str(gates)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((pkg / "validation" / "report.json").read_text())
    assert data["timings_s"]["jobs_computed_here"] < 8  # rank 0 did not compute everything itself
    assert _stable_prompts(data) == json.loads(json.dumps(_stable_prompts(one.data)))


def test_workers_flag_starts_helpers_that_share_the_jobs(package: Path, tmp_path: Path) -> None:
    """``--workers 2``: the command is worker 0 and starts one helper process; both take batches from the cache."""
    one = validate_package(copy_package(package, tmp_path / "single"), package, batch_size=1, **SMALL)
    assert one is not None
    pkg = copy_package(package, tmp_path / "pkg")
    gates = tmp_path / "gates.json"
    gates.write_text(json.dumps(NO_GATES))
    cmd = [sys.executable, "-m", "tts_awq.validate", str(pkg), "--reference", str(package), "--n-prompts", "8",
           "--seeds", "1", "--max-new-tokens", "48", "--device", "cpu", "--batch-size", "1", "--gates", str(gates),
           "--workers", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "helper worker" not in proc.stderr  # the helper ended cleanly
    assert proc.stderr.count("validate-awq jobs (worker 0)") >= 1 and "(worker 1)" not in proc.stderr
    data = json.loads((pkg / "validation" / "report.json").read_text())
    assert 0 < data["timings_s"]["jobs_computed_here"] < 8  # the helper computed the rest
    assert _stable_prompts(data) == json.loads(json.dumps(_stable_prompts(one.data)))


def test_a_failed_helper_is_reported_and_a_running_one_stopped(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    import argparse
    import time

    from tts_awq.validate.cli import add_validate
    from tts_awq.validate.spawn import Helpers

    parser = argparse.ArgumentParser()
    add_validate(parser)
    args = parser.parse_args([str(tmp_path / "no-such-package"), "--reference", str(tmp_path), "--workers", "2"])
    failed = Helpers.start(args, 2)
    failed.procs[0].wait(120)
    with caplog.at_level("WARNING"):
        failed.finish()
    messages = [r.getMessage() for r in caplog.records]
    assert any("helper worker 1 exited with code 2" in m and "no-such-package" in m for m in messages), messages
    running = Helpers.start(args, 2)
    time.sleep(0.2)
    running.stop()
    assert running.procs[0].returncode is not None


def test_profiles_size_the_run() -> None:
    quick = plan.resolve_settings("quick", None, None, None, 1, "cpu")
    assert (quick.n_prompts * quick.seeds, quick.max_new_tokens) == (20, 512)
    standard = plan.resolve_settings(None, None, None, None, 8, "cpu")
    assert standard.profile == "standard" and standard.n_prompts * standard.seeds == 200
    release = plan.resolve_settings("release", None, 3, 1024, 8, "cpu")
    assert (release.n_prompts, release.seeds, release.max_new_tokens) == (500, 3, 1024)
    assert plan.PROFILES["release"].n_prompts * plan.PROFILES["release"].seeds == 2000


def test_groups_end_with_batch_sized_units() -> None:
    """A standard run at batch 8 (fast engine: groups of 16): 10 groups of 16, then the last 40 jobs in groups of
    8, every job once and in order; small runs and the plain grouping are unchanged."""
    jobs = list(range(200))
    standard = plan.resolve_settings(None, None, None, None, 8, "cpu")
    groups = plan.batches(jobs, standard.group_size, standard.batch_size)  # type: ignore[arg-type]
    assert [len(g) for g in groups] == [16] * 10 + [8] * 5
    assert [j for g in groups for j in g] == jobs
    assert [len(g) for g in plan.batches(jobs, 16)] == [16] * 12 + [8]  # type: ignore[arg-type]
    assert [len(g) for g in plan.batches(jobs[:64], 16, 8)] == [16] * 4  # type: ignore[arg-type]
    assert [len(g) for g in plan.batches(jobs[:70], 16, 8)] == [16] * 2 + [8] * 4 + [6]  # type: ignore[arg-type]
    assert [len(g) for g in plan.batches(jobs, 8, 8)] == [8] * 25  # type: ignore[arg-type]


@pytest.mark.parametrize("eos_factor, passes", [(1.0, True), (0.4, False)])
def test_runaway_gate_under_standard(package: Path, tmp_path: Path, eos_factor: float, passes: bool) -> None:
    """A package whose runaway rate is raised from 0 to several percent (a shrunk EOS row) fails the runaway
    bound under the standard profile's 200 generations; an unmodified copy of the reference passes it."""
    pkg = copy_package(package, tmp_path / "pkg")
    if eos_factor != 1.0:
        edit_weights(pkg, scale_eos_row(eos_factor))
    gates = {**NO_GATES, "runaway_excess_upper95": {"op": "<=", "threshold": 0.03}}
    rep = validate_package(pkg, package, profile="standard", max_new_tokens=96, batch_size=8, device="cpu",
                           gates=gates)
    assert rep is not None
    runaway = rep.data["metrics"]["runaway"]
    assert runaway["generations"] == 200 and runaway["reference"]["k"] == 0
    gate = rep.data["gates"]["runaway_excess_upper95"]
    assert gate["passed"] is passes and rep.passed is passes
    if passes:
        assert runaway["package"]["k"] == 0 and gate["value"] == pytest.approx(1.645**2 / (200 + 1.645**2), rel=1e-3)
    else:
        assert runaway["package"]["k"] >= 3 and runaway["excess_p_value_fisher"] < 0.25
        assert runaway["paired"]["package_only"] == runaway["package"]["k"]
    lo, hi = runaway["package"]["lo"], runaway["package"]["hi"]
    assert lo <= runaway["package"]["rate"] <= hi
    assert runaway["resolution"]["generations_needed"]["0.01"] > 200
    md = (pkg / "validation" / "report.md").read_text()
    assert "## Runaways" in md and "Clopper-Pearson" in md


def test_keep_bf16_file_is_written_and_recorded(package: Path, tmp_path: Path) -> None:
    pkg = copy_package(package, tmp_path / "pkg")
    rep = validate_package(pkg, package, batch_size=4, **SMALL)
    assert rep is not None
    keep = (pkg / "validation" / "keep_bf16.txt").read_text().split()
    assert keep == rep.data["metrics"]["layers"]["keep_in_bf16"]
    assert all(name.startswith("talker.model.layers.") for name in keep)
    record = json.loads((pkg / "provenance.json").read_text())["validation"]
    assert "validation/keep_bf16.txt" in record["files"]
    assert not any(rel.startswith("validation/jobs/") for rel in record["files"])


def test_mixed_package_is_validated_and_carded(package: Path, tmp_path: Path) -> None:
    """A package with linears kept dense (--keep-bf16) loads, is validated (its kept linears marked, not
    suggested again) and the card names what was kept."""
    source = Path(json.loads((package / "provenance.json").read_text())["inputs"][0]["path"])
    mixed = quantize_talker(QuantizeOptions(src=str(source), out=tmp_path / "mixed", n_samples=4, seq_len=32,
                                            calib_batch_size=4, device="cpu", progress=False,
                                            keep_bf16=("*.layers.0.mlp.*",)))
    rep = validate_package(mixed, source, batch_size=4, **SMALL)
    assert rep is not None
    layers = rep.data["metrics"]["layers"]
    kept = [f"talker.model.layers.0.mlp.{n}" for n in ("down_proj", "gate_proj", "up_proj")]
    assert sorted(layers["kept_bf16_in_package"]) == kept
    assert not set(kept) & set(layers["keep_in_bf16"])
    assert rep.data["package"]["weights"]["quantized_linears"] == 4 * 7 - 3
    from tts_awq.publish import PushOptions, plan_push

    card = plan_push(PushOptions(package=mixed, repo_id="you/mixed", dry_run=True, allow_unvalidated=True)).card_text
    assert "decoder linears kept in BF16" in card and "talker.model.layers.0.mlp.down_proj" in card


def test_workers_flag_is_refused_under_a_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from tts_awq.cli import validate_awq_main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert validate_awq_main([str(tmp_path), "--reference", str(tmp_path), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "--workers starts its own processes" in err and err.count("\n") == 1


def test_workers_on_cuda_need_a_gpu_each() -> None:
    import torch

    from tts_awq.errors import UserError
    from tts_awq.validate.workers import World

    assert World().device("cuda") == "cuda" and World(rank=1, size=2, local_rank=1).device("cpu") == "cpu"
    count = torch.cuda.device_count()
    with pytest.raises(UserError, match=f"2 workers with --device cuda need a GPU each, this machine has {count}"):
        World(rank=0, size=2, local_rank=count).device("cuda")
