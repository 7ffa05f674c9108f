"""tts-awq teacher on the tiny checkpoint: the stored top-k are the teacher's own distributions, the dataset
round-trips through ``datasets``, runs resume and shard over processes to the same bytes, the runaway guard
resamples and flags, unvalidated packages are refused, bad input is one line.

The teacher here is the tiny Darwin blend with its EOS row boosted (x3) so that it stops by itself, as in
tests/test_validate.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tts_awq.cli import main
from tts_awq.testing.damage import edit_weights, scale_eos_row

VOICES = Path(__file__).resolve().parent.parent / "calib_data" / "voices"
REF_TEXT = "The morning train was late again, so I walked to work."
MAX_NEW = "40"
SMALL = ["--device", "cpu", "--max-new-tokens", MAX_NEW, "--batch-size", "2", "--k", "8", "--k-cp", "4"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher(tiny_stops: Path) -> Path:
    return tiny_stops


def write_rows(path: Path, n: int, **extra: Any) -> Path:
    """``n`` rows alternating x-vector-only (no ref_text) and ICL voices, one row with a relative voice path."""
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"id": f"utt{i}", "text": f"Line number {i} of the corpus is read aloud.",
                               "lang": "english", "ref_audio": str(VOICES / ("en_male.wav" if i % 2 else
                                                                              "en_female.wav"))}
        if i % 2:
            row["ref_text"] = REF_TEXT
        rows.append({**row, **extra})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_teacher(pkg: Path, data: Path, out: Path, *extra: str) -> int:
    return main(["teacher", str(pkg), "--data", str(data), "--out", str(out), *SMALL, *extra])


def shard_bytes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "data").glob("*.parquet"))}


def load(out: Path, tmp_path: Path) -> Any:
    import datasets

    return datasets.load_dataset("parquet", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf-cache"))


@pytest.fixture(scope="module")
def dataset(teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("kd")
    data = write_rows(work / "rows.jsonl", 5)
    assert run_teacher(teacher, data, work / "out", "--rows-per-shard", "2", "--hidden") == 0
    return work / "out"


# ------------------------------------------------------------------------------------------- numbers


def test_stored_topk_are_the_teachers_own_distributions(teacher: Path, dataset: Path, tmp_path: Path) -> None:
    """Independent recomputation per row: generate the row alone with its stored seed (the codes must be the stored
    ones), teacher-force the talker unbatched on those rows and compare the top-k with what the shards hold."""
    from tts_awq.prompts import VoiceClip, read_voice
    from tts_awq.qwen_tts import (
        VoiceClone,
        allowed_ids,
        codec_logits,
        generate_voice_clone,
        load_tts_model,
        sub_talker_logits,
        talker_hidden,
    )

    ds = load(dataset, tmp_path)
    rows = [json.loads(line) for line in (dataset.parent / "rows.jsonl").read_text().splitlines()]
    tts = load_tts_model(teacher, "cpu", torch.float32)
    allowed = torch.tensor(allowed_ids(tts))
    for stored, row in zip(ds, rows, strict=True):
        assert stored["id"] == row["id"] and stored["source"] == "sampled" and stored["tries"] == 1
        clip = read_voice(VoiceClip("v", Path(row["ref_audio"]), "english", ""))
        req = VoiceClone(text=row["text"], lang="english", ref_audio=clip, ref_text=row.get("ref_text", ""),
                         icl="ref_text" in row, seed=stored["seed"], voice=stored["voice"])
        gen = generate_voice_clone(tts, [req], int(MAX_NEW), capture=True, engine="fast")[0]
        codes = np.array(stored["codes"]).T
        assert np.array_equal(gen.codes.numpy(), codes) and gen.stopped == stored["stopped"]
        hidden = talker_hidden(tts, gen.rows)
        n = stored["frames"] + int(stored["stopped"])
        pred = hidden[gen.prefill - 1 : gen.prefill - 1 + n]
        logprobs = torch.log_softmax(codec_logits(tts, pred)[:, allowed], dim=-1)
        values, index = logprobs.topk(8, dim=-1)
        assert np.array_equal(np.array(stored["c0_topk_ids"]), allowed[index].numpy())
        np.testing.assert_allclose(np.array(stored["c0_topk_logprobs"], dtype=np.float64), values.numpy(),
                                   rtol=1e-3, atol=1e-3)  # float16: 11-bit mantissa
        rest = torch.log1p(-values.exp().sum(-1).clamp(max=1 - 1e-12))
        np.testing.assert_allclose(np.array(stored["c0_rest_logprob"], dtype=np.float64), rest.numpy(),
                                   rtol=1e-3, atol=1e-3)
        cp = torch.log_softmax(sub_talker_logits(tts, gen.codes, pred[: stored["frames"]]).double(), dim=-1)
        cp_values, cp_index = cp.topk(4, dim=-1)
        assert np.array_equal(np.array(stored["cp_topk_ids"]), cp_index.numpy())
        np.testing.assert_allclose(np.array(stored["cp_topk_logprobs"], dtype=np.float64), cp_values.numpy(),
                                   rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(np.array(stored["hidden"], dtype=np.float32), pred[: stored["frames"]].numpy(),
                                   rtol=2e-3, atol=2e-3)


def test_given_codes_are_teacher_forced_to_the_same_targets(teacher: Path, dataset: Path, tmp_path: Path) -> None:
    """Feeding the stored codes back as the ``codes`` column (16 x T) reproduces every stored target exactly."""
    ds = load(dataset, tmp_path)
    rows = [json.loads(line) for line in (dataset.parent / "rows.jsonl").read_text().splitlines()]
    data = tmp_path / "given.jsonl"
    data.write_text("".join(json.dumps({**r, "codes": s["codes"], "seed": s["seed"]}) + "\n"
                            for r, s in zip(rows, ds, strict=True)))
    assert run_teacher(teacher, data, tmp_path / "given", "--hidden") == 0
    forced = load(tmp_path / "given", tmp_path / "b")
    for a, b in zip(ds, forced, strict=True):
        assert b["source"] == "given" and b["stopped"] and b["tries"] == 0
        for column in ("codes", "c0_topk_ids", "c0_topk_logprobs", "c0_rest_logprob", "cp_topk_ids",
                       "cp_topk_logprobs", "cp_rest_logprob", "hidden"):
            assert a[column] == b[column], column


def test_dataset_round_trips_through_datasets(dataset: Path, tmp_path: Path) -> None:
    import datasets

    ds = load(dataset, tmp_path)
    assert ds.num_rows == 5 and [r["id"] for r in ds] == [f"utt{i}" for i in range(5)]
    features = ds.features
    assert features["c0_topk_logprobs"].feature.feature.dtype == "float16"
    assert features["c0_topk_ids"].feature.feature.dtype == "int16"
    assert features["hidden"].feature.feature.dtype == "float16"
    for r in ds:
        frames, targets = r["frames"], r["frames"] + int(r["stopped"])
        assert np.array(r["codes"]).shape == (16, frames)
        assert np.array(r["c0_topk_ids"]).shape == (targets, 8) and len(r["c0_rest_logprob"]) == targets
        assert np.array(r["cp_topk_ids"]).shape == (frames, 15, 4)
        assert np.array(r["cp_rest_logprob"]).shape == (frames, 15)
        assert np.array(r["hidden"]).shape[0] == frames
        lp = np.array(r["c0_topk_logprobs"], dtype=np.float64)
        assert (np.diff(lp, axis=1) <= 0).all()  # best first
        mass = np.exp(lp).sum(1) + np.exp(np.array(r["c0_rest_logprob"], dtype=np.float64))
        np.testing.assert_allclose(mass, 1.0, atol=5e-3)
        assert r["stopped"] == (np.array(r["c0_topk_ids"]).shape[0] == frames + 1)
        assert abs(r["seconds"] - frames / 12.5) < 1e-6
    # the card: every column described, the dataset_info features readable by datasets itself
    readme = (dataset / "README.md").read_text()
    for name in ds.column_names:
        assert f"| `{name}` |" in readme
    assert datasets.load_dataset(str(dataset), split="train", cache_dir=str(tmp_path / "c2")).num_rows == 5
    prov = json.loads((dataset / "provenance.json").read_text())
    assert prov["stage"] == "teacher" and prov["rows"] == 5 and prov["frames"] == sum(ds["frames"])
    assert prov["teacher"]["kind"] == "dense checkpoint" and len(prov["teacher"]["sha256"]) == 64
    assert prov["data"]["sha256"] == hashlib.sha256((dataset.parent / "rows.jsonl").read_bytes()).hexdigest()
    assert prov["options"]["k"] == 8 and prov["options"]["k_cp"] == 4 and prov["options"]["engine"] == "fast"
    assert prov["tool"]["version"] and prov["options"]["budget"]["frames_per_unit"] > 0
    assert prov["shards"] == {f"data/{k}": v for k, v in shard_bytes(dataset).items()}
    assert set(prov["data"]["voices"]) == set(ds["voice"])


# ------------------------------------------------------------------------------------------- resume / scale-out


def test_rerun_computes_nothing(teacher: Path, dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = shutil.copytree(dataset, tmp_path / "copy")
    before = shard_bytes(out)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "data").iterdir()}
    caplog.set_level("INFO", logger="tts_awq")
    assert run_teacher(teacher, dataset.parent / "rows.jsonl", out, "--rows-per-shard", "2", "--hidden") == 0
    assert "computed 0 rows" in caplog.text
    assert shard_bytes(out) == before and {p: p.stat().st_mtime_ns for p in (out / "data").iterdir()} == stamps


def test_a_torn_shard_is_recomputed_with_one_log_line(teacher: Path, dataset: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    out = shutil.copytree(dataset, tmp_path / "copy")
    before = shard_bytes(out)
    torn = out / "data" / "train-00001-of-00003.parquet"
    torn.write_bytes(torn.read_bytes()[:100])
    leftover = out / "data" / ".train-00001-of-00003.parquet.tmp-99999"  # a writer SIGKILLed mid-write
    leftover.write_bytes(b"PAR1")
    caplog.set_level("INFO", logger="tts_awq")
    assert run_teacher(teacher, dataset.parent / "rows.jsonl", out, "--rows-per-shard", "2", "--hidden") == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "train-00001-of-00003.parquet" in warnings[0] and "recomputing" in warnings[0]
    assert "computed 2 rows" in caplog.text
    assert shard_bytes(out) == before and not leftover.exists()


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


def test_a_killed_run_resumes_to_the_same_shards(teacher: Path, six_rows: tuple[Path, Path], tmp_path: Path) -> None:
    data, clean = six_rows
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "tts_awq.cli", "teacher", str(teacher), "--data", str(data), "--out", str(out),
           *SMALL, "--rows-per-shard", "1"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not list((out / ".teacher").glob("*.json")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(list((out / ".teacher").glob("*.json")))
    assert 1 <= finished < 6 and not (out / "provenance.json").exists()  # killed mid-run: unfinished
    assert run_teacher(teacher, data, out, "--rows-per-shard", "1") == 0
    assert shard_bytes(out) == shard_bytes(clean)
    assert (out / "provenance.json").is_file() and not list(out.rglob("*.tmp-*")) and not list(out.rglob("*.claim"))


@pytest.fixture(scope="module")
def six_rows(teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Six rows, one per shard, written by one process: (data, out)."""
    work = tmp_path_factory.mktemp("six")
    data = write_rows(work / "rows.jsonl", 6)
    assert run_teacher(teacher, data, work / "one", "--rows-per-shard", "1") == 0
    return data, work / "one"


def test_two_launcher_processes_write_the_same_dataset_as_one(teacher: Path, six_rows: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2``: both ranks take shards (rank 0 does not compute all of them); same bytes."""
    data, one = six_rows
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "tts_awq.cli", "teacher", str(teacher), "--data", str(data), "--out", str(two), *SMALL,
           "--rows-per-shard", "1"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    computed = {int(part.split()[0]): int(part.split()[2]) for part in proc.stderr.split("teacher: worker ")[1:]}
    assert set(computed) == {0, 1} and sum(computed.values()) == 6 and 0 < computed[0] < 6, computed
    assert shard_bytes(two) == shard_bytes(one)
    assert json.loads((two / "provenance.json").read_text())["shards"] == \
        json.loads((one / "provenance.json").read_text())["shards"]


def test_workers_flag_writes_the_same_dataset_as_one(teacher: Path, six_rows: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    """``--workers 2`` (a helper process, no launcher): same bytes; the helper ends cleanly."""
    data, one = six_rows
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "tts_awq.cli", "teacher", str(teacher), "--data", str(data), "--out", str(two),
           *SMALL, "--rows-per-shard", "1", "--workers", "2"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "helper worker" not in proc.stderr and "(worker 1)" not in proc.stderr
    assert shard_bytes(two) == shard_bytes(one)


# ------------------------------------------------------------------------------------------- runaway guard


def test_a_runaway_on_the_first_seed_is_resampled_with_the_next(teacher: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """EOS is suppressed (logit -inf at the codec head) during the first try of row utt1 only: it runs into its
    budget, is resampled with seed + 1 and kept from that try, equal to a plain generation with seed + 1."""
    from tts_awq import guard
    from tts_awq.qwen_tts import eos_id

    real = guard.generate_voice_clone
    first_seed = 1729 + 1

    def suppressed(tts: Any, requests: list[Any], *args: Any, **kw: Any) -> Any:
        if not any(r.seed == first_seed and r.text.startswith("Line number 1 ") for r in requests):
            return real(tts, requests, *args, **kw)
        assert len(requests) == 1
        eos = eos_id(tts)
        handle = tts.model.talker.codec_head.register_forward_hook(
            lambda _m, _i, out: out.index_fill(-1, torch.tensor([eos]), float("-inf")))
        try:
            return real(tts, requests, *args, **kw)
        finally:
            handle.remove()

    data = write_rows(tmp_path / "rows.jsonl", 2)
    monkeypatch.setattr(guard, "generate_voice_clone", suppressed)
    assert run_teacher(teacher, data, tmp_path / "out", "--rows-per-shard", "1") == 0  # one row per generate call
    ds = load(tmp_path / "out", tmp_path)
    row = ds[1]
    assert row["tries"] == 2 and row["stopped"] and row["seed"] == first_seed + 1
    assert ds[0]["tries"] == 1
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["resampled"] == {"utt1": 2} and prov["runaways"] == 0
    monkeypatch.setattr(guard, "generate_voice_clone", real)
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({**json.loads(data.read_text().splitlines()[1]), "seed": first_seed + 1}) + "\n")
    assert run_teacher(teacher, plain, tmp_path / "plain") == 0
    again = load(tmp_path / "plain", tmp_path / "p")[0]
    assert again["tries"] == 1 and again["codes"] == row["codes"] and again["c0_topk_ids"] == row["c0_topk_ids"]


def test_a_damaged_teacher_is_flagged_after_every_retry(teacher: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A teacher whose EOS row is zeroed (tts_awq.testing.damage) never stops within the budget: each row is tried
    1 + --retries times, kept with stopped=false, codes cut at the budget, no EOS target, counted in provenance."""
    damaged = shutil.copytree(teacher, tmp_path / "no-eos")
    edit_weights(damaged, scale_eos_row(0.0))
    data = write_rows(tmp_path / "rows.jsonl", 2)
    caplog.set_level("INFO", logger="tts_awq")
    assert run_teacher(damaged, data, tmp_path / "out", "--retries", "1", "--max-new-tokens", "12") == 0
    ds = load(tmp_path / "out", tmp_path)
    for r in ds:
        assert not r["stopped"] and r["tries"] == 2 and r["frames"] == 12
        assert np.array(r["c0_topk_ids"]).shape[0] == 12
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["runaways"] == 2 and prov["runaway_ids"] == ["utt0", "utt1"]
    assert sum("kept with stopped=false" in r.getMessage() for r in caplog.records) == 2


# ------------------------------------------------------------------------------------------- trust and input


@pytest.fixture(scope="module")
def package(teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tts_awq.quantize.pipeline import QuantizeOptions, quantize_talker

    out = tmp_path_factory.mktemp("teacher-pkg") / "awq"
    return quantize_talker(QuantizeOptions(src=str(teacher), out=out, n_samples=2, seq_len=24, calib_batch_size=2,
                                           device="cpu", progress=False))


def test_unvalidated_package_is_refused_then_allowed(package: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = write_rows(tmp_path / "rows.jsonl", 1)
    assert run_teacher(package, data, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no validation report" in err and "--allow-unvalidated" in err
    assert not (tmp_path / "out" / "data").exists()
    assert run_teacher(package, data, tmp_path / "out", "--allow-unvalidated") == 0
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["teacher"]["kind"] == "tts-awq INT4 package"
    assert prov["teacher"]["validation"]["status"].startswith("NOT VALIDATED")


def test_validated_package_is_taken(package: Path, teacher: Path, tmp_path: Path) -> None:
    from tts_awq.testing.damage import copy_package
    from tts_awq.validate.runner import validate_package

    pkg = copy_package(package, tmp_path / "pkg")
    report = validate_package(pkg, teacher, gates={"teacher_top1": 0.0, "kl_mean": 1.0, **{
        g: None for g in ("runaway_count", "runaway_excess_upper95", "median_duration_ratio", "speaker_similarity_drop",
                          "stop_signal_ratio")}}, seeds=1, max_new_tokens=16, n_prompts=1, device="cpu")
    assert report is not None and report.passed
    data = write_rows(tmp_path / "rows.jsonl", 1)
    assert run_teacher(pkg, data, tmp_path / "out") == 0
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    validation = prov["teacher"]["validation"]
    assert validation["status"] == "passed" and validation["passed"] is True
    assert validation["report_sha256"] == report.report_sha256


@pytest.mark.parametrize(("content", "message"), [
    ('{"id": "a", "lang": "english"}\n', "no rows with a non-empty 'text'"),
    ('{"text": "hi", "ref_audio": "missing.wav"}\n', "voice clip"),
    ('{"text": "hi", "lang": "klingon", "ref_audio": "x.wav"}\n', "unknown language"),
    ('{"text": "hi", "ref_audio": "VOICE", "codes": [[1, 2]]}\n', "expected 16 x T"),
    ('{"text": "hi"}\n', "has no voice"),
    ('{"text": "a", "id": "x", "ref_audio": "VOICE"}\n{"text": "b", "id": "x", "ref_audio": "VOICE"}\n',
     "duplicate id"),
    ('{"text": "a", "ref_audio": "VOICE", "codes": ' + json.dumps([[5000] * 3] * 16) + "}\n",
     "outside the codec's range"),
])
def test_bad_input_is_one_line(teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str,
                               message: str) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text(content.replace("VOICE", str(VOICES / "en_male.wav")))
    assert run_teacher(teacher, data, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.count("\n") == 0 and message in err, err


def test_a_foreign_out_directory_is_refused(teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert run_teacher(teacher, write_rows(tmp_path / "rows.jsonl", 1), out) == 2
    assert "did not write" in capsys.readouterr().err and (out / "notes.txt").read_text() == "keep me"


def test_csv_and_parquet_inputs_match_jsonl(teacher: Path, dataset: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (dataset.parent / "rows.jsonl").read_text().splitlines()][:2]
    for row in rows:
        row.setdefault("ref_text", "")
    csv_path = tmp_path / "rows.csv"
    import csv

    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "text", "lang", "ref_audio", "ref_text"])
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    expected = load(dataset, tmp_path / "e").select(range(2))
    for name in ("rows.csv", "rows.parquet"):
        out = tmp_path / f"out-{name}"
        assert run_teacher(teacher, tmp_path / name, out, "--hidden") == 0
        got = load(out, tmp_path / f"cache-{name}")
        assert got["codes"] == expected["codes"] and got["c0_topk_ids"] == expected["c0_topk_ids"]


def test_a_datasets_folder_with_an_audio_column(teacher: Path, dataset: Path, tmp_path: Path) -> None:
    """DATA read with ``datasets`` (a folder here; a Hub id takes the same path): the voice comes from an ``audio``
    column ({array, sampling_rate}) and gives the same targets as the same clip given by path."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import soundfile as sf

    rows = [json.loads(line) for line in (dataset.parent / "rows.jsonl").read_text().splitlines()][:2]
    table = []
    for row in rows:
        samples, rate = sf.read(row.pop("ref_audio"), dtype="float32")
        table.append({**row, "ref_text": row.get("ref_text", ""),
                      "audio": {"array": samples.tolist(), "sampling_rate": rate}})
    folder = tmp_path / "hub-like"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(table), folder / "data" / "train-00000-of-00001.parquet")
    assert run_teacher(teacher, folder, tmp_path / "out", "--hidden") == 0
    got = load(tmp_path / "out", tmp_path / "c")
    expected = load(dataset, tmp_path / "e").select(range(2))
    assert got["voice"] == expected["voice"] and got["c0_topk_ids"] == expected["c0_topk_ids"]
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["data"]["source"] == str(folder) and prov["data"]["split"] == "train" and len(prov["data"]["sha256"]) == 64
