"""The fault catalogue: what a hostile but fair user meets, for every command (quantize-talker, validate-awq,
blend, repack, merge, push) and load_quantized: racing runs, --overwrite limits, OS errors, signals, crashes, bad
options, integrity, crash resume, non-finite values, refusals of the upstream stages and of push, and the trust
boundaries (links and index entries leaving a root, the HF cache layout, pickles, the staged upload, checksummed
resume/cache/search-state records, non-finite package tensors, disk full in validate-awq, unreachable gates).

Each CLI case asserts the documented exit code, exactly one ``error:`` line on stderr, no traceback, the source
unchanged and no OUT or temp dir left behind; each load_quantized case a one-line UserError.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import tts_awq
from tts_awq.checkpoint.files import hash_tree
from tts_awq.cli import main, quantize_talker_main, validate_awq_main
from tts_awq.errors import EXIT_INTERNAL, EXIT_OS, EXIT_TERMINATED, EXIT_USER, UserError
from tts_awq.quantize.resume import peek_next_layer

QUICK = ["--n-samples", "2", "--seq-len", "24", "--calib-batch-size", "2", "--device", "cpu"]


@pytest.fixture()
def src(tiny_root: dict[str, Path], tmp_path: Path) -> Path:
    path = tmp_path / "src"
    shutil.copytree(tiny_root["tiny-darwin"], path)
    return path


def _expect(code: int, want: int, capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == want, err[-2000:]
    assert len(lines) == 1, err[-2000:]
    assert err.strip().splitlines()[-1] == lines[0], err[-2000:]  # stderr ends with it
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _no_leftovers(parent: Path, name: str) -> None:
    left = [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]
    assert not left, left


# ------------------------------------------------------------------------------------------- racing runs


def test_a_run_holding_the_lock_makes_the_second_exit_2(src: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pkg"
    with open(tmp_path / ".pkg.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("4242")
        lock.flush()
        code = quantize_talker_main([str(src), str(out), *QUICK])
    _expect(code, EXIT_USER, capsys, "being written by another run", "4242")
    assert not out.exists()


def test_out_appearing_meanwhile_is_never_replaced(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from tts_awq.quantize import pipeline

    out = tmp_path / "pkg"
    real = pipeline.build_calibration

    def winner_finishes_first(*args, **kwargs):  # type: ignore[no-untyped-def]
        out.mkdir()
        (out / "theirs.txt").write_text("the other run's package")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "build_calibration", winner_finishes_first)
    code = quantize_talker_main([str(src), str(out), *QUICK])
    _expect(code, EXIT_USER, capsys, "appeared while this run was writing")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    _no_leftovers(tmp_path, "pkg")


def test_two_concurrent_processes_exactly_one_wins(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    argv = [sys.executable, "-m", "tts_awq.cli", "quantize-talker", str(src), str(out), *QUICK]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(code for code, _ in results)
    assert codes == [0, EXIT_USER], results
    loser = next(err for code, err in results if code == EXIT_USER)
    assert "being written by another run" in loser or "already exists" in loser or "appeared" in loser
    assert (out / "provenance.json").is_file()
    _no_leftovers(tmp_path, "pkg")


# --------------------------------------------------------------------------------------------- --overwrite


@pytest.fixture(scope="module")
def rtn_package(tiny_root: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tts_awq.quantize.pipeline import QuantizeOptions, quantize_talker

    out = tmp_path_factory.mktemp("rtn") / "pkg"
    return quantize_talker(QuantizeOptions(src=str(tiny_root["tiny-darwin"]), out=out, method="rtn",
                                           progress=False, device="cpu"))


def test_overwrite_replaces_a_package_of_the_same_stage(src: Path, rtn_package: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    shutil.copytree(rtn_package, out)
    assert quantize_talker_main([str(src), str(out), "--method", "rtn", "--overwrite"]) == 0
    assert json.loads((out / "provenance.json").read_text())["stage"] == "quantize-talker"


@pytest.mark.parametrize("what", ["plain_dir", "blend_output", "file"])
def test_overwrite_refuses_what_tts_awq_did_not_write_for_this_stage(
        src: Path, rtn_package: Path, tmp_path: Path, what: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "victim"
    if what == "file":
        out.write_text("precious")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("precious")
        if what == "blend_output":
            prov = json.loads((rtn_package / "provenance.json").read_text())
            prov["stage"] = "blend"
            (out / "provenance.json").write_text(json.dumps(prov))
    before = hash_tree(out) if out.is_dir() else out.read_bytes()
    code = quantize_talker_main([str(src), str(out), "--method", "rtn", "--overwrite"])
    _expect(code, EXIT_USER, capsys, str(out))
    assert (hash_tree(out) if out.is_dir() else out.read_bytes()) == before


def test_overwrite_refuses_the_working_and_home_directories(src: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code = quantize_talker_main([str(src), ".", "--method", "rtn", "--overwrite"])
    _expect(code, EXIT_USER, capsys, "refusing to --overwrite the working, home or root directory")
    monkeypatch.setenv("HOME", str(work))
    code = quantize_talker_main([str(src), str(work), "--method", "rtn", "--overwrite"])
    _expect(code, EXIT_USER, capsys, "refusing")
    code = quantize_talker_main([str(src), str(tmp_path), "--method", "rtn", "--overwrite"])
    _expect(code, EXIT_USER, capsys)  # a parent of the source (and of the working directory)


# ------------------------------------------------------------------------------------------------ OS errors


def test_out_parent_is_a_file(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    code = quantize_talker_main([str(src), str(tmp_path / "afile" / "pkg"), "--method", "rtn"])
    _expect(code, EXIT_USER, capsys, "is a file")


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_disk_full_read_only_and_permission_denied_while_writing(
        src: Path, tmp_path: Path, err: int, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer hits an OS error mid-package (as root, chmod cannot provoke these, so the write call fails)."""
    from tts_awq.checkpoint import writer

    real_write = writer.ShardedWriter.write

    def failing(self, name, tensor):  # type: ignore[no-untyped-def]
        if "layers.2." in name:
            raise OSError(err, os.strerror(err), str(self.out_dir / "model.safetensors"))
        return real_write(self, name, tensor)

    monkeypatch.setattr(writer.ShardedWriter, "write", failing)
    before = hash_tree(src)
    out = tmp_path / "pkg"
    code = quantize_talker_main([str(src), str(out), "--method", "rtn"])
    hint = {errno.ENOSPC: "free space", errno.EROFS: "read-only", errno.EACCES: "permission"}[err]
    _expect(code, EXIT_OS, capsys, "model.safetensors", hint)
    assert not out.exists() and hash_tree(src) == before
    _no_leftovers(tmp_path, "pkg")


def test_source_deleted_mid_run(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    from tts_awq.quantize import pipeline

    real = pipeline.run_awq

    def delete_then_run(store, *args, **kwargs):  # type: ignore[no-untyped-def]
        (src / "model.safetensors").unlink()
        yield from real(store, *args, **kwargs)

    monkeypatch.setattr(pipeline, "run_awq", delete_then_run)
    out = tmp_path / "pkg"
    code = quantize_talker_main([str(src), str(out), "--method", "rtn"])
    _expect(code, EXIT_OS, capsys, "model.safetensors", "deleted while running")
    assert not out.exists()
    _no_leftovers(tmp_path, "pkg")


def test_internal_error_is_one_line_and_debug_shows_the_traceback(
        src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from tts_awq.quantize import pipeline

    def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("simulated crash inside a model\nsecond line")

    monkeypatch.setattr(pipeline, "run_awq", boom)
    out = tmp_path / "pkg"
    code = quantize_talker_main([str(src), str(out), "--method", "rtn"])
    line = _expect(code, EXIT_INTERNAL, capsys, "internal error: RuntimeError", "simulated crash", "--debug")
    assert "second line" not in line
    _no_leftovers(tmp_path, "pkg")
    with pytest.raises(RuntimeError, match="simulated crash"):
        quantize_talker_main([str(src), str(out), "--method", "rtn", "--debug"])
    monkeypatch.setenv("TTS_AWQ_DEBUG", "1")
    with pytest.raises(RuntimeError):
        quantize_talker_main([str(src), str(out), "--method", "rtn"])
    assert not out.exists()


def test_sigterm_removes_the_temp_dir_and_exits_143(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    argv = [sys.executable, "-m", "tts_awq.cli", "quantize-talker", str(src), str(out), *QUICK]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and not any(p.name.startswith((".pkg.tmp-", ".pkg.partial-"))
                                             for p in tmp_path.iterdir()):
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be terminated"
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=300)
    err = proc.stderr.read()  # type: ignore[union-attr]
    assert code == EXIT_TERMINATED, err[-2000:]
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: terminated (SIGTERM); no output was written (temporary files removed)"]
    assert "Traceback" not in err and not out.exists()
    _no_leftovers(tmp_path, "pkg")


# ------------------------------------------------------------------------------------- options at parse time


@pytest.mark.parametrize(("argv", "needle"), [
    (["--seq-len", "1"], "--seq-len: 1 is below 2"),
    (["--seq-len", "x"], "not an integer"),
    (["--n-samples", "0"], "--n-samples: 0 is below 1"),
    (["--calib-batch-size", "0"], "--calib-batch-size"),
    (["--group-size", "1"], "--group-size"),
    (["--w-bit", "3"], "--w-bit"),
    (["--max-shard-size", "0"], "--max-shard-size"),
    (["--max-shard-size", "nan"], "--max-shard-size"),
    (["--method", "gptq-act-order"], "--method"),
])
def test_quantize_options_are_checked_at_parse_time(src: Path, tmp_path: Path, argv: list[str], needle: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        quantize_talker_main([str(src), str(tmp_path / "pkg"), *argv])
    _expect(int(info.value.code), EXIT_USER, capsys, needle)
    assert not (tmp_path / "pkg").exists()


@pytest.mark.parametrize(("argv", "needle"), [
    (["--seeds", "0"], "--seeds"), (["--max-new-tokens", "1"], "--max-new-tokens"), (["--n-prompts", "0"], "--n-prompts"),
])
def test_validate_options_are_checked_at_parse_time(tmp_path: Path, argv: list[str], needle: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        validate_awq_main([str(tmp_path / "pkg"), "--reference", str(tmp_path), *argv])
    _expect(int(info.value.code), EXIT_USER, capsys, needle)


@pytest.mark.parametrize("argv", [["merge", "--base", "a", "--model", "b:0.5", "c", "--density", "2"],
                                  ["blend", "--tts", "a", "--llm", "b"], ["bogus-command"]])
def test_other_commands_parse_errors_are_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    _expect(int(info.value.code), EXIT_USER, capsys)


# ------------------------------------------------------------------------------------------------- integrity


def _tampered(rtn_package: Path, tmp_path: Path, how: str) -> Path:
    pkg = tmp_path / "tampered"
    shutil.copytree(rtn_package, pkg)
    if how == "edited":
        data = bytearray((pkg / "model.safetensors").read_bytes())
        data[-7] ^= 0x01  # one bit of the last tensor
        (pkg / "model.safetensors").write_bytes(bytes(data))
    else:
        (pkg / "extra.bin").write_bytes(b"added later")
    return pkg


@pytest.mark.parametrize("how", ["edited", "added"])
def test_validate_awq_refuses_a_tampered_package_before_measuring(
        rtn_package: Path, tiny_root: dict[str, Path], tmp_path: Path, how: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    pkg = _tampered(rtn_package, tmp_path, how)
    code = validate_awq_main([str(pkg), "--reference", str(tiny_root["tiny-darwin"]), "--n-prompts", "1",
                              "--seeds", "1", "--max-new-tokens", "8", "--device", "cpu"])
    _expect(code, EXIT_USER, capsys, "model.safetensors: changed" if how == "edited" else "extra.bin")
    assert not (pkg / "validation").exists()
    assert "validation" not in json.loads((pkg / "provenance.json").read_text())


@pytest.mark.parametrize("how", ["edited", "added"])
def test_load_quantized_verify_checks_sha256(rtn_package: Path, tmp_path: Path, how: str) -> None:
    import tts_awq
    from tts_awq.errors import UserError

    pkg = _tampered(rtn_package, tmp_path, how)
    with pytest.raises(UserError, match="changed since quantize-talker" if how == "edited" else "extra.bin"):
        tts_awq.load_quantized(pkg, verify=True)
    if how == "added":
        assert tts_awq.load_quantized(pkg, kernel="dequant") is not None  # without verify only cheap checks


# -------------------------------------------------------------------------------------------- crash resume


def _kill_after_layer(argv: list[str], tmp_path: Path, out_name: str, layer: int) -> None:
    """Start quantize-talker and SIGKILL it as soon as layer ``layer`` is committed to its resume state."""
    proc = subprocess.Popen([sys.executable, "-m", "tts_awq.cli", "quantize-talker", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            for partial in tmp_path.glob(f".{out_name}.partial-*"):
                if peek_next_layer(partial) > layer:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=60)
                    return
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
    raise AssertionError("the run ended before it could be killed")


def test_resume_after_kill_9_is_byte_identical_to_an_uninterrupted_run(
        src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calib = ["--n-samples", "6", "--seq-len", "40", "--calib-batch-size", "6", "--device", "cpu"]
    whole = tmp_path / "whole"
    assert subprocess.run([sys.executable, "-m", "tts_awq.cli", "quantize-talker", str(src), str(whole), *calib],
                          capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode == 0
    out = tmp_path / "pkg"
    _kill_after_layer([str(src), str(out), *calib], tmp_path, "pkg", layer=1)
    partial = next(tmp_path.glob(".pkg.partial-*"))
    assert not out.exists() and peek_next_layer(partial) == 2
    # without --resume: refused, the state is kept
    code = quantize_talker_main([str(src), str(out), *calib])
    _expect(code, EXIT_USER, capsys, "stale partial run", "--resume")
    assert partial.is_dir()
    # with --resume: continues after layer 1, same bytes as the uninterrupted run
    assert quantize_talker_main([str(src), str(out), *calib, "--resume"]) == 0
    files = [f for f in sorted(p.relative_to(whole).as_posix() for p in whole.rglob("*") if p.is_file())
             if f != "provenance.json"]
    assert hash_tree(out, files) == hash_tree(whole, files)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [*files, "provenance.json"])  # no resume state left in the package
    assert json.loads((out / "provenance.json").read_text())["resumed_after_layers"] == 2
    _no_leftovers(tmp_path, "pkg")


def test_resume_refuses_a_partial_run_of_other_options(src: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    calib = ["--n-samples", "6", "--seq-len", "40", "--calib-batch-size", "6", "--device", "cpu"]
    out = tmp_path / "pkg"
    _kill_after_layer([str(src), str(out), *calib], tmp_path, "pkg", layer=0)
    code = quantize_talker_main([str(src), str(out), *calib, "--seed", "7", "--resume"])
    _expect(code, EXIT_USER, capsys, "stale partial run of this OUT with other sources or options", "remove it")
    assert len(list(tmp_path.glob(".pkg.partial-*"))) == 1 and not out.exists()


# ----------------------------------------------------------------------------- non-finite values, edited packages

LAYER_TENSOR = "talker.model.layers.1.mlp.up_proj.weight"


def _poison(root: Path, name: str, value: float = float("nan"), file: str = "model.safetensors") -> None:
    tensors = load_file(str(root / file))
    tensor = tensors[name].clone()
    tensor.view(-1)[3] = value
    tensors[name] = tensor
    save_file(tensors, str(root / file), metadata={"format": "pt"})


def _refused(code: int, want: int, capsys: pytest.CaptureFixture[str], sources: dict[Path, object], out: Path,
             *needles: str) -> str:
    """The documented exit code and one error line, every source unchanged, no OUT and no temp dir beside it."""
    line = _expect(code, want, capsys, *needles)
    for path, before in sources.items():
        assert _snapshot(path) == before, f"{path} was modified"
    assert not out.exists(), out
    if out.parent.is_dir():
        _no_leftovers(out.parent, out.name)
    return line


def _snapshot(path: Path) -> object:
    """Every entry under ``path`` as it is on disk (a link as its target text, a file as its bytes' sha256),
    walked without following links: independent of the checkpoint layer, which refuses links out."""
    if not path.is_dir():
        return path.read_bytes()
    entries: dict[str, object] = {}
    for directory, dirs, files in os.walk(path):
        for name in dirs + files:
            entry = Path(directory) / name
            rel = entry.relative_to(path).as_posix()
            if entry.is_symlink():
                entries[rel] = ("link", os.readlink(entry))
            elif entry.is_file():
                entries[rel] = hashlib.sha256(entry.read_bytes()).hexdigest()
    return entries


def _state(*paths: Path) -> dict[Path, object]:
    return {p: _snapshot(p) for p in paths}


@pytest.mark.parametrize("method", ["awq", "rtn"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_quantize_refuses_a_non_finite_source_tensor(src: Path, tmp_path: Path, method: str, value: float,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _poison(src, LAYER_TENSOR, value)
    before = _state(src)
    out = tmp_path / "out"
    code = quantize_talker_main([str(src), str(out), "--method", method, *QUICK])
    _refused(code, EXIT_USER, capsys, before, out, LAYER_TENSOR, "model.safetensors", "non-finite")


def test_quantize_refuses_a_non_finite_embedding_before_calibration(src: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _poison(src, "talker.model.text_embedding.weight")
    before = _state(src)
    out = tmp_path / "out"
    code = quantize_talker_main([str(src), str(out), *QUICK])
    _refused(code, EXIT_USER, capsys, before, out, "talker.model.text_embedding.weight")


def test_blend_refuses_a_non_finite_llm_ffn(tiny_root: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    llm = tmp_path / "llm"
    shutil.copytree(tiny_root["tiny-qwen3-lm"], llm)
    _poison(llm, "model.layers.0.mlp.down_proj.weight", float("-inf"))
    before = _state(llm, tiny_root["tiny-tts-base"])
    out = tmp_path / "out"
    code = main(["blend", "--tts", str(tiny_root["tiny-tts-base"]), "--llm", str(llm), "--alpha", "0.03", str(out)])
    _refused(code, EXIT_USER, capsys, before, out, "model.layers.0.mlp.down_proj.weight")


@pytest.mark.parametrize("alpha", ["nan", "inf"])
def test_blend_refuses_a_non_finite_alpha(tiny_root: dict[str, Path], tmp_path: Path, alpha: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["blend", "--tts", str(tiny_root["tiny-tts-base"]), "--llm", str(tiny_root["tiny-qwen3-lm"]),
                 "--alpha", alpha, str(out)])
    _refused(code, EXIT_USER, capsys, {}, out, "alpha")


def test_merge_refuses_non_finite_weights_and_tensors(tiny_root: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    base = tiny_root["tiny-tts-base"]
    code = main(["merge", "--base", str(base), "--model", f"{tiny_root['tiny-darwin']}:nan", str(tmp_path / "m1")])
    _refused(code, EXIT_USER, capsys, {}, tmp_path / "m1", "not finite")
    model = tmp_path / "ft"
    shutil.copytree(tiny_root["tiny-darwin"], model)
    _poison(model, LAYER_TENSOR)
    before = _state(model)
    code = main(["merge", "--base", str(base), "--model", f"{model}:0.5", str(tmp_path / "m2")])
    _refused(code, EXIT_USER, capsys, before, tmp_path / "m2", LAYER_TENSOR, "non-finite")


def _copy(package: Path, tmp_path: Path) -> Path:
    return shutil.copytree(package, tmp_path / "bad")


def test_load_refuses_non_finite_scales(rtn_package: Path, tmp_path: Path) -> None:
    bad = _copy(rtn_package, tmp_path)
    _poison(bad, "talker.model.layers.2.self_attn.o_proj.scales", float("inf"))
    with pytest.raises(UserError, match=r"layers\.2\.self_attn\.o_proj\.scales holds 1 non-finite") as info:
        tts_awq.load_quantized(bad)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("group_size", [64, 32, 100, "128", 0])
def test_load_refuses_an_edited_group_size_in_one_line(rtn_package: Path, tmp_path: Path, group_size: object) -> None:
    bad = _copy(rtn_package, tmp_path)
    config = json.loads((bad / "config.json").read_text())
    config["quantization_config"]["group_size"] = group_size
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError) as info:
        tts_awq.load_quantized(bad)
    assert "group_size" in str(info.value) and "\n" not in str(info.value)


def test_load_refuses_a_swapped_tensor_shape(rtn_package: Path, tmp_path: Path) -> None:
    bad = _copy(rtn_package, tmp_path)
    tensors = load_file(str(bad / "model.safetensors"))
    name = "talker.model.layers.0.mlp.gate_proj.qzeros"
    tensors[name] = torch.zeros(tensors[name].shape[0] * 2, tensors[name].shape[1] // 2, dtype=torch.int32)
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match="gate_proj.qzeros is I32") as info:
        tts_awq.load_quantized(bad)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ tts-awq repack


@pytest.fixture(scope="module")
def no_codec(tiny_root: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-darwin without speech_tokenizer/ (as Darwin-TTS-1.7B-Cross is uploaded). Read-only."""
    return shutil.copytree(tiny_root["tiny-darwin"], tmp_path_factory.mktemp("repack") / "no-codec",
                           ignore=shutil.ignore_patterns("speech_tokenizer"))


def _base_copy(tiny_root: dict[str, Path], tmp_path: Path, how: str) -> Path:
    base = shutil.copytree(tiny_root["tiny-tts-base"], tmp_path / "base")
    if how == "other_arch":
        config = json.loads((base / "config.json").read_text())
        config["talker_config"]["num_hidden_layers"] += 2
        config["talker_config"]["num_code_groups"] = 8
        (base / "config.json").write_text(json.dumps(config))
    elif how == "no_codec":
        shutil.rmtree(base / "speech_tokenizer")
    return base


@pytest.mark.parametrize(("how", "needles"), [
    ("other_arch", ("talker architecture differs", "num_hidden_layers SRC=4 BASE=6", "num_code_groups SRC=16 BASE=8")),
    ("no_codec", ("has no codec",)),
])
def test_repack_refuses_a_base_that_does_not_fit(no_codec: Path, tiny_root: dict[str, Path], tmp_path: Path,
                                                 how: str, needles: tuple[str, ...],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    base = _base_copy(tiny_root, tmp_path, how)
    before = _state(no_codec, base)
    out = tmp_path / "out"
    code = main(["repack", str(no_codec), "--codec-from", str(base), str(out)])
    _refused(code, EXIT_USER, capsys, before, out, *needles)


@pytest.mark.parametrize("what", ["llm", "missing", "file", "other_codec"])
def test_repack_refuses_a_source_it_cannot_repack(no_codec: Path, tiny_root: dict[str, Path], tmp_path: Path,
                                                  what: str, capsys: pytest.CaptureFixture[str]) -> None:
    """SRC without a talker (a plain LLM), a missing SRC, SRC a file, SRC with a codec other than BASE's."""
    needle = {"llm": "not a Qwen3-TTS checkpoint", "missing": "not found", "file": "is a file",
              "other_codec": "already present"}[what]
    if what == "llm":
        src = tiny_root["tiny-qwen3-lm"]
    elif what == "missing":
        src = tmp_path / "nope"
    elif what == "file":
        src = no_codec / "config.json"
    else:
        src = shutil.copytree(no_codec, tmp_path / "src")
        (src / "speech_tokenizer").mkdir()
        (src / "speech_tokenizer" / "config.json").write_text('{"another": "codec"}')
    base = tiny_root["tiny-tts-base"]
    before = _state(base, *([src] if src.exists() else []))
    out = tmp_path / "out"
    code = main(["repack", str(src), "--codec-from", str(base), str(out)])
    _refused(code, EXIT_USER, capsys, before, out, needle)


@pytest.mark.parametrize("what", ["out_exists", "out_parent_is_a_file"])
def test_repack_refuses_an_out_it_may_not_write(no_codec: Path, tiny_root: dict[str, Path], tmp_path: Path,
                                                what: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = tiny_root["tiny-tts-base"]
    before = _state(no_codec, base)
    if what == "out_exists":
        out = tmp_path / "out"
        out.mkdir()
        (out / "mine.txt").write_text("precious")
        code = main(["repack", str(no_codec), "--codec-from", str(base), str(out)])
        _expect(code, EXIT_USER, capsys, "already exists", "--overwrite")
        assert [p.name for p in out.iterdir()] == ["mine.txt"] and _state(no_codec, base) == before
        _no_leftovers(tmp_path, "out")
    else:
        (tmp_path / "afile").write_text("x")
        code = main(["repack", str(no_codec), "--codec-from", str(base), str(tmp_path / "afile" / "out")])
        _refused(code, EXIT_USER, capsys, before, tmp_path / "afile" / "out", "is a file")
        assert (tmp_path / "afile").read_text() == "x"


def test_repack_disk_full_while_copying_the_codec(no_codec: Path, tiny_root: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.copyfile

    def full(src: object, dst: object, *args: object, **kwargs: object) -> object:
        if "speech_tokenizer" in str(dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shutil, "copyfile", full)  # whichever module copies the codec
    base = tiny_root["tiny-tts-base"]
    before = _state(no_codec, base)
    out = tmp_path / "out"
    code = main(["repack", str(no_codec), "--codec-from", str(base), str(out)])
    _refused(code, EXIT_OS, capsys, before, out, "speech_tokenizer", "free space")


# --------------------------------------------------------------------------------------------- blend and merge


def test_blend_refuses_an_llm_of_another_shape_listing_every_mismatch(tiny_root: dict[str, Path], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    llm = shutil.copytree(tiny_root["tiny-qwen3-lm"], tmp_path / "llm")
    config = json.loads((llm / "config.json").read_text())
    config["intermediate_size"] *= 2
    config["num_hidden_layers"] += 1
    (llm / "config.json").write_text(json.dumps(config))
    before = _state(llm, tiny_root["tiny-tts-base"])
    out = tmp_path / "out"
    code = main(["blend", "--tts", str(tiny_root["tiny-tts-base"]), "--llm", str(llm), "--alpha", "0.03", str(out)])
    _refused(code, EXIT_USER, capsys, before, out, "does not match the TTS talker", "intermediate",
             "layers")


def test_merge_refuses_an_existing_out_and_pickled_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"dec": {"w": torch.zeros(2)}}, tmp_path / "base.pth")
    torch.save({"dec": {"w": torch.ones(2)}, "evil": print}, tmp_path / "evil.pth")
    before = _state(tmp_path / "base.pth", tmp_path / "evil.pth")
    out = tmp_path / "merged"
    code = main(["merge", "--base", str(tmp_path / "base.pth"), "--model", f"{tmp_path / 'evil.pth'}:1", str(out)])
    _refused(code, EXIT_USER, capsys, before, out, "evil.pth", "refused to load")
    out.mkdir()
    code = main(["merge", "--base", str(tmp_path / "base.pth"), "--model", f"{tmp_path / 'base.pth'}:1", str(out)])
    _expect(code, EXIT_USER, capsys, "already exists")
    assert list(out.iterdir()) == []
    _no_leftovers(tmp_path, "merged")


# -------------------------------------------------------------------------------------------------- tts-awq push


@pytest.fixture()
def offline_push(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A token, no network object (a refusal must come before any), and a private temp dir to check for leftovers."""
    import huggingface_hub

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("push reached the network although it should have refused")

    monkeypatch.setattr(huggingface_hub.HfApi, "__init__", refuse)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_test_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


@pytest.mark.parametrize(("what", "needles"), [
    ("unvalidated", ("no validation report", "--allow-unvalidated")),
    ("no_provenance", ("provenance.json: not found",)),
    ("bad_repo_id", ("--repo-id", "OWNER/NAME")),
    ("edited", ("model.safetensors",)),
    ("missing", ("package directory not found",)),
])
def test_push_refuses_before_sending_anything(rtn_package: Path, tmp_path: Path, offline_push: Path, what: str,
                                              needles: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    pkg = tmp_path / "pkg"
    if what != "missing":
        shutil.copytree(rtn_package, pkg)
    repo_id = "no-owner" if what == "bad_repo_id" else "you/pkg"
    extra = ["--allow-unvalidated"] if what in ("no_provenance", "edited", "bad_repo_id") else []
    if what == "no_provenance":
        (pkg / "provenance.json").unlink()
    elif what == "edited":
        data = bytearray((pkg / "model.safetensors").read_bytes())
        data[-7] ^= 0x01
        (pkg / "model.safetensors").write_bytes(bytes(data))
    before = _state(pkg) if pkg.exists() else {}
    code = main(["push", str(pkg), "--repo-id", repo_id, *extra])
    _expect(code, EXIT_USER, capsys, *needles)
    assert _state(pkg) == before if pkg.exists() else not pkg.exists()
    assert list(offline_push.iterdir()) == []  # no staging dir left behind


# ------------------------------------------------------------------------------ trust boundaries: links and roots

SECRET = "hf_secret_token_that_must_never_be_published"


def _link_out(root: Path, tmp_path: Path, rel: str = "notes.txt") -> Path:
    """A link inside ``root`` to a file outside it (as a git clone may carry)."""
    secret = tmp_path / "credentials.txt"
    secret.write_text(SECRET)
    (root / rel).symlink_to(secret)
    return secret


@pytest.mark.parametrize("command", ["quantize-talker", "requantize", "blend", "repack", "merge"])
def test_every_stage_refuses_a_source_link_that_leaves_its_root(
        command: str, tiny_root: dict[str, Path], rtn_package: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    src = shutil.copytree(tiny_root["tiny-darwin"], tmp_path / "src")
    secret = _link_out(src, tmp_path)
    base = tiny_root["tiny-tts-base"]
    out = tmp_path / "out"
    argv = {
        "quantize-talker": ["quantize-talker", str(src), str(out), "--method", "rtn"],
        "requantize": ["requantize", str(src), str(rtn_package / "search_state.safetensors"), str(out)],
        "blend": ["blend", "--tts", str(src), "--llm", str(tiny_root["tiny-qwen3-lm"]), "--alpha", "0.03", str(out)],
        "repack": ["repack", str(src), "--codec-from", str(base), str(out)],
        "merge": ["merge", "--base", str(base), "--model", f"{src}:0.5", str(out)],
    }[command]
    before = _state(src, base)
    code = main(argv)
    line = _refused(code, EXIT_USER, capsys, before, out, str(src / "notes.txt"), str(secret), "points outside")
    assert SECRET not in line


def test_codec_from_base_with_a_link_out_is_refused(no_codec: Path, tiny_root: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    base = shutil.copytree(tiny_root["tiny-tts-base"], tmp_path / "base")
    (base / "speech_tokenizer" / "configuration.json").unlink(missing_ok=True)
    secret = _link_out(base, tmp_path, "speech_tokenizer/configuration.json")
    before = _state(no_codec, base)
    out = tmp_path / "out"
    code = main(["repack", str(no_codec), "--codec-from", str(base), str(out)])
    _refused(code, EXIT_USER, capsys, before, out, "speech_tokenizer/configuration.json", str(secret))


def test_validate_and_push_refuse_a_package_holding_a_link_out(rtn_package: Path, tiny_root: dict[str, Path],
                                                               tmp_path: Path, offline_push: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    pkg = shutil.copytree(rtn_package, tmp_path / "pkg")
    secret = _link_out(pkg, tmp_path)
    before = _state(pkg)
    code = validate_awq_main([str(pkg), "--reference", str(tiny_root["tiny-darwin"]), "--device", "cpu"])
    _expect(code, EXIT_USER, capsys, "notes.txt", str(secret))
    code = main(["push", str(pkg), "--repo-id", "you/pkg", "--allow-unvalidated"])
    _expect(code, EXIT_USER, capsys, "notes.txt", str(secret))
    assert _state(pkg) == before and not (pkg / "validation").exists()
    assert list(offline_push.iterdir()) == []
    with pytest.raises(UserError, match="points outside"):
        tts_awq.load_quantized(pkg)


def test_links_inside_src_are_copied_as_regular_files(src: Path, tmp_path: Path) -> None:
    (src / "extra").mkdir()
    shutil.move(src / "tokenizer_config.json", src / "extra" / "tok.json")
    (src / "tokenizer_config.json").symlink_to(Path("extra") / "tok.json")
    (src / "more").symlink_to(src / "extra", target_is_directory=True)  # a link to a directory inside
    out = tmp_path / "pkg"
    assert quantize_talker_main([str(src), str(out), "--method", "rtn"]) == 0
    for rel in ("tokenizer_config.json", "more/tok.json", "extra/tok.json"):
        assert (out / rel).is_file() and not (out / rel).is_symlink(), rel
        assert (out / rel).read_bytes() == (src / "extra" / "tok.json").read_bytes()
    assert "more/tok.json" in json.loads((out / "provenance.json").read_text())["outputs_sha256"]


def _hf_cache(plain: Path, cache: Path, repo_id: str) -> Path:
    """A hand-built Hugging Face cache: blobs/<sha256> files, snapshots/<rev>/<rel> relative links to them."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    rev = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / rev
    (repo / "blobs").mkdir(parents=True)
    for rel, sha in hash_tree(plain).items():
        blob = repo / "blobs" / sha
        if not blob.exists():
            shutil.copyfile(plain / rel, blob)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    return snapshot


@pytest.mark.parametrize("how", ["snapshot_dir", "repo_id"])
def test_hf_cache_layout_keeps_working(rtn_package: Path, tiny_root: dict[str, Path], tmp_path: Path, how: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Snapshot files are links into the repo's blobs/: inside the root, read and copied as regular files; the
    package equals the one made from a plain copy."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = _hf_cache(tiny_root["tiny-darwin"], cache, "you/tiny-darwin")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "pkg"
    spec = str(snapshot) if how == "snapshot_dir" else "you/tiny-darwin"
    assert quantize_talker_main([spec, str(out), "--method", "rtn", "--device", "cpu"]) == 0
    files = [f for f in json.loads((rtn_package / "provenance.json").read_text())["outputs_sha256"]]
    assert hash_tree(out, files) == hash_tree(rtn_package, files)
    assert not any(p.is_symlink() for p in out.rglob("*"))


def _sharded(src: Path, tmp_path: Path) -> tuple[Path, dict[str, object]]:
    """SRC with its weights split over two shards and an index."""
    tensors = load_file(str(src / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(src / shard), metadata={"format": "pt"})
    (src / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    return src, index


@pytest.mark.parametrize("how", ["dotdot", "absolute", "through_a_link"])
def test_an_index_entry_leaving_src_is_refused(src: Path, tmp_path: Path, how: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from tts_awq.checkpoint import TensorStore

    src, index = _sharded(src, tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(src / "model-00002-of-00002.safetensors", outside / "shard.safetensors")
    entry = {"dotdot": "../elsewhere/shard.safetensors", "absolute": str(outside / "shard.safetensors"),
             "through_a_link": "linked/shard.safetensors"}[how]
    if how == "through_a_link":
        (src / "linked").symlink_to(outside, target_is_directory=True)
    index["weight_map"] = {k: (entry if v.startswith("model-00002") else v) for k, v in index["weight_map"].items()}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError) as info:  # the store itself refuses, whoever constructs it
        TensorStore(src)
    assert entry in str(info.value) or str(outside) in str(info.value)
    before = _state(src, outside)
    out = tmp_path / "out"
    code = quantize_talker_main([str(src), str(out), "--method", "rtn"])
    line = _refused(code, EXIT_USER, capsys, before, out)
    assert ("elsewhere" in line or str(outside) in line) and ("leaves" in line or "outside" in line), line


def test_a_stray_pickle_in_src_is_not_copied_and_is_logged(src: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    torch.save({"w": torch.zeros(2)}, src / "pytorch_model.bin")
    out = tmp_path / "pkg"
    assert quantize_talker_main([str(src), str(out), "--method", "rtn"]) == 0
    assert not (out / "pytorch_model.bin").exists()
    assert "not copied: pytorch_model.bin" in caplog.text


def test_a_pickled_codec_is_bad_input(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    codec = src / "speech_tokenizer"
    torch.save(load_file(str(codec / "model.safetensors")), codec / "pytorch_model.bin")
    (codec / "model.safetensors").unlink()
    before = _state(src)
    out = tmp_path / "out"
    code = quantize_talker_main([str(src), str(out), "--method", "rtn"])
    _refused(code, EXIT_USER, capsys, before, out, "pytorch_model.bin", "pickle")


def test_push_rechecks_the_staged_upload(rtn_package: Path, tmp_path: Path, offline_push: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from tts_awq.checkpoint.confine import check_upload_tree
    from tts_awq.provenance import Provenance

    pkg = shutil.copytree(rtn_package, tmp_path / "pkg")
    torch.save({"w": torch.zeros(2)}, pkg / "extra.pt")
    prov = json.loads((pkg / "provenance.json").read_text())  # as if a writer had put it there
    prov["outputs_sha256"] = Provenance("x").to_dict(pkg)["outputs_sha256"]
    (pkg / "provenance.json").write_text(json.dumps(prov))
    before = _state(pkg)
    code = main(["push", str(pkg), "--repo-id", "you/pkg", "--allow-unvalidated"])
    _expect(code, EXIT_USER, capsys, "extra.pt", "pickle", "--allow-pickle")
    assert main(["push", str(pkg), "--repo-id", "you/pkg", "--allow-unvalidated", "--allow-pickle",
                 "--dry-run"]) == 0
    assert "extra.pt" in capsys.readouterr().out
    assert _state(pkg) == before and list(offline_push.iterdir()) == []
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "config.json").write_text("{}")
    assert check_upload_tree(staged) == [("config.json", 2)]
    (staged / "model.safetensors").symlink_to(rtn_package / "model.safetensors")
    with pytest.raises(UserError, match="holds a link"):
        check_upload_tree(staged)


def test_push_sends_regular_files_only_and_lists_them(rtn_package: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from tts_awq.publish import upload

    pkg = shutil.copytree(rtn_package, tmp_path / "pkg")
    seen: dict[str, object] = {}

    def fake_push_once(api, plan, options, folder, result):  # type: ignore[no-untyped-def]
        seen["files"] = sorted((p.relative_to(folder).as_posix(), p.is_symlink()) for p in folder.rglob("*")
                               if not p.is_dir())
        result.sent = True

    monkeypatch.setattr(upload, "_push_once", fake_push_once)
    monkeypatch.setattr(upload, "_token", lambda options: "hf_fake")
    monkeypatch.setattr("huggingface_hub.HfApi.__init__", lambda self, **kw: None)
    plan = upload.push(upload.PushOptions(package=pkg, repo_id="you/pkg", allow_unvalidated=True)).plan
    assert seen["files"] == [(rel, False) for rel, _ in plan.files]


# ------------------------------------------------------------------------- trust boundaries: reused state records

RESUME_CALIB = ["--n-samples", "6", "--seq-len", "40", "--calib-batch-size", "6", "--device", "cpu"]


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_torn_altered_or_foreign_resume_state_is_refused_with_the_fix(
        src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tts_awq.checkpoint.record import read_record, write_record

    _kill_after_layer([str(src), str(tmp_path / "pkg"), *RESUME_CALIB], tmp_path, "pkg", layer=1)
    partial = next(tmp_path.glob(".pkg.partial-*"))
    key = partial.name.rpartition("-")[2]
    before = _state(src)
    for how in ("torn", "altered", "foreign", "old_format"):
        name = f"pkg-{how}"  # the key leaves OUT out, so a copy under another OUT name is the same run
        copy = shutil.copytree(partial, tmp_path / f".{name}.partial-{key}", symlinks=True)
        record = copy / ".resume" / ("inputs.safetensors" if how == "torn" else "layers/000.safetensors")
        if how == "torn":
            record.write_bytes(record.read_bytes()[: record.stat().st_size // 2])
        elif how == "altered":
            _flip_last_byte(record)
        elif how == "foreign":
            tensors, fields = read_record(record)
            write_record(record, tensors, {**fields, "run": "0" * 16})
        else:
            save_file(load_file(str(record)), str(record))  # no checksum: a partial run of an older tts-awq
        snapshot = _state(copy)
        code = quantize_talker_main([str(src), str(tmp_path / name), *RESUME_CALIB, "--resume"])
        line = _expect(code, EXIT_USER, capsys, str(record), f"remove {copy}", "without --resume")
        assert {"torn": "torn", "altered": "altered", "foreign": "another run", "old_format": "torn"}[how] in line
        assert _state(copy) == snapshot and not (tmp_path / name).exists()  # the state is kept for the user
    assert _state(src) == before


def _sealed_state(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """Rewrite a search state with ``edit`` applied to its tensors and a valid checksum (a well-formed but bad state,
    as a faulty or hostile writer would make it: tts-awq's own writer refuses non-finite tensors)."""
    from safetensors import safe_open

    from tts_awq.checkpoint.record import digest
    from tts_awq.quantize.search_state import SHA256

    with safe_open(str(path), "pt") as handle:
        fields = {k: v for k, v in handle.metadata().items() if k != SHA256}
    tensors = {name: t.clone() for name, t in load_file(str(path)).items()}
    edit(tensors)
    save_file(tensors, str(path), metadata={**fields, SHA256: digest(tensors, fields)})


@pytest.fixture(scope="module")
def awq_package(tiny_root: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tts_awq.quantize.pipeline import QuantizeOptions, quantize_talker

    return quantize_talker(QuantizeOptions(src=str(tiny_root["tiny-darwin"]), out=tmp_path_factory.mktemp("awq") / "p",
                                           n_samples=2, seq_len=24, calib_batch_size=2, progress=False, device="cpu"))


def _scale_name(tensors: dict[str, torch.Tensor]) -> str:
    return sorted(name for name in tensors if ".layers.1.scales." in name)[0]


@pytest.mark.parametrize(("how", "needles"), [
    ("torn", ("truncated",)),
    ("altered", ("altered", "sha256")),
    ("old_format", ("format '1'", "re-run quantize-talker")),
    ("foreign", ("made from another checkpoint", "model.safetensors")),
    ("zero_scale", ("layers.1.scales.", "not finite and > 0")),
    ("nan_scale", ("layers.1.scales.", "not finite and > 0")),
])
def test_requantize_refuses_a_bad_search_state(awq_package: Path, tiny_root: dict[str, Path], tmp_path: Path,
                                               how: str, needles: tuple[str, ...],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    state = shutil.copy(awq_package / "search_state.safetensors", tmp_path / "state.safetensors")
    src = tiny_root["tiny-tts-base"] if how == "foreign" else tiny_root["tiny-darwin"]
    if how == "torn":
        state.write_bytes(state.read_bytes()[:-100])
    elif how == "altered":
        _flip_last_byte(state)
    elif how == "old_format":
        from safetensors import safe_open

        with safe_open(str(state), "pt") as handle:
            meta = {**handle.metadata(), "format_version": "1"}
        save_file(load_file(str(state)), str(state), metadata=meta)
    elif how in ("zero_scale", "nan_scale"):
        value = 0.0 if how == "zero_scale" else float("nan")
        _sealed_state(state, lambda tensors: tensors[_scale_name(tensors)].view(-1).__setitem__(2, value))
    before = _state(src, state)
    out = tmp_path / "out"
    code = main(["requantize", str(src), str(state), str(out)])
    _refused(code, EXIT_USER, capsys, before, out, str(state), *needles)


def test_no_writer_produces_a_non_finite_tensor_with_exit_0(awq_package: Path, tiny_root: dict[str, Path],
                                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A positive but tiny scale passes the state check; dividing a norm by it overflows: the writer refuses."""
    state = shutil.copy(awq_package / "search_state.safetensors", tmp_path / "state.safetensors")
    _sealed_state(state, lambda tensors: tensors[_scale_name(tensors)].fill_(1e-38))
    src = tiny_root["tiny-darwin"]
    before = _state(src, state)
    out = tmp_path / "out"
    code = main(["requantize", str(src), str(state), str(out)])
    _refused(code, EXIT_USER, capsys, before, out, "non-finite", "nothing was written")


def _reseal_package(pkg: Path) -> None:
    """Recompute outputs_sha256 after an edit (as if a faulty writer had made the package so)."""
    from tts_awq.provenance import Provenance

    prov = json.loads((pkg / "provenance.json").read_text())
    prov["outputs_sha256"] = Provenance("x").to_dict(pkg)["outputs_sha256"]
    (pkg / "provenance.json").write_text(json.dumps(prov))


@pytest.mark.parametrize("name", ["talker.model.layers.1.input_layernorm.weight", "talker.model.norm.weight",
                                  "talker.model.layers.3.mlp.down_proj.scales"])
def test_a_non_finite_package_tensor_is_refused_before_generation(
        rtn_package: Path, tiny_root: dict[str, Path], tmp_path: Path, name: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    pkg = _copy(rtn_package, tmp_path)
    _poison(pkg, name, float("inf"))
    _reseal_package(pkg)
    with pytest.raises(UserError, match=name.replace(".", r"\.")) as info:
        tts_awq.load_quantized(pkg)
    assert "\n" not in str(info.value)
    before = _state(pkg)
    code = validate_awq_main([str(pkg), "--reference", str(tiny_root["tiny-darwin"]), "--profile", "quick",
                              "--device", "cpu"])
    _expect(code, EXIT_USER, capsys, name, "model.safetensors", "non-finite")
    assert _state(pkg) == before and not (pkg / "validation").exists()


# ----------------------------------------------------------------------- validate-awq: cache, disk, reachability

SMALL_VALIDATE = ["--n-prompts", "3", "--seeds", "1", "--max-new-tokens", "12", "--device", "cpu"]
#: The tiny random talker is no TTS model: only a fidelity gate it passes, runaway gates off.
TINY_VALIDATE_GATES = {"runaway_excess_upper95": None, "median_duration_ratio": None, "teacher_top1": 0.0,
                       "kl_mean": None, "speaker_similarity_drop": None, "stop_signal_ratio": None}


@pytest.fixture(scope="module")
def two_prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "eval.jsonl"
    lines = [{"id": f"p{i}", "lang": "english", "text": text, "kind": "sentence"}
             for i, text in enumerate(["The train leaves at nine.", "Please close the door behind you."])]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _validate(pkg: Path, tiny_root: dict[str, Path], tmp_path: Path, eval_file: Path, *extra: str) -> int:
    gates = tmp_path / "gates.json"
    gates.write_text(json.dumps(TINY_VALIDATE_GATES))
    return validate_awq_main([str(pkg), "--reference", str(tiny_root["tiny-darwin"]), "--eval", str(eval_file),
                              "--gates", str(gates), *SMALL_VALIDATE, *extra])


def _comparable(report: dict[str, object]) -> dict[str, object]:
    """What a rerun must reproduce: every measured number and verdict (timings and throughput are the machine's)."""
    metrics = {k: v for k, v in report["metrics"].items() if k != "throughput"}  # type: ignore[union-attr]
    return {"metrics": metrics, "gates": report["gates"], "passed": report["passed"], "prompts": report["prompts"],
            "settings": report["settings"], "eval": report["eval"]}


@pytest.fixture(scope="module")
def clean_validation(rtn_package: Path, tiny_root: dict[str, Path], two_prompts: Path,
                     tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A package validated once (2 prompts, asked for 3): its report and job cache."""
    tmp = tmp_path_factory.mktemp("clean")
    pkg = shutil.copytree(rtn_package, tmp / "pkg")
    assert _validate(pkg, tiny_root, tmp, two_prompts) == 0
    return pkg


def test_report_settings_are_what_ran(clean_validation: Path) -> None:
    report = json.loads((clean_validation / "validation" / "report.json").read_text())
    assert report["settings"]["n_prompts"] == report["eval"]["n_prompts"] == 2  # 3 asked, the file holds 2
    assert len(report["prompts"]) == 2


@pytest.mark.parametrize("how", ["torn", "altered", "foreign"])
def test_a_torn_altered_or_foreign_job_record_is_recomputed(
        clean_validation: Path, tiny_root: dict[str, Path], two_prompts: Path, tmp_path: Path, how: str,
        caplog: pytest.LogCaptureFixture) -> None:
    from tts_awq.checkpoint.record import read_record, write_record

    pkg = shutil.copytree(clean_validation, tmp_path / "pkg")
    records = sorted((pkg / "validation" / "jobs").glob("*.safetensors"))
    assert records
    record = records[0]
    if how == "torn":
        record.write_bytes(record.read_bytes()[:-10])
    elif how == "altered":  # well-formed, one per-frame number edited: caught by the checksum
        _flip_last_byte(record)
    else:
        tensors, fields = read_record(record)
        write_record(record, tensors, {**fields, "batch": "f" * 16})
    assert _validate(pkg, tiny_root, tmp_path, two_prompts) == 0
    assert "recomputing this batch" in caplog.text and record.name in caplog.text
    again = json.loads((pkg / "validation" / "report.json").read_text())
    clean = json.loads((clean_validation / "validation" / "report.json").read_text())
    assert _comparable(again) == _comparable(clean)
    assert not list((pkg / "validation").rglob("*.claim")) and not list((pkg / "validation").rglob(".*tmp*"))


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_disk_full_or_read_only_during_validate_is_exit_4_and_leaves_nothing(
        rtn_package: Path, tiny_root: dict[str, Path], two_prompts: Path, tmp_path: Path, err: int,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from tts_awq.checkpoint import writer

    def failing(self, name, tensor):  # type: ignore[no-untyped-def]
        raise OSError(err, os.strerror(err))  # as write() reports it: no file name

    monkeypatch.setattr(writer.ShardedWriter, "write", failing)
    pkg = shutil.copytree(rtn_package, tmp_path / "pkg")
    before = _state(pkg)
    code = _validate(pkg, tiny_root, tmp_path, two_prompts, "--n-prompts", "1")
    hint = {errno.ENOSPC: "free space", errno.EROFS: "read-only"}[err]
    _expect(code, EXIT_OS, capsys, str(pkg / "validation" / "jobs"), hint)
    assert [p for p in (pkg / "validation").rglob("*") if not p.is_dir()] == []  # no claim, no temp, no report
    assert _state(pkg) == before  # provenance.json untouched


@pytest.mark.parametrize(("argv", "needles"), [
    (["--n-prompts", "3", "--seeds", "2"],
     ("gate runaway_excess_upper95 cannot pass at 6 generations", "0.311 > threshold 0.03", "profile standard",
      "88 generations", "--n-prompts 44 with --seeds 2", "--gates")),
    (["--profile", "quick", "--n-prompts", "3", "--seeds", "2"],
     ("at 6 generations", "threshold 0.25", "9 generations", "--n-prompts 5 with --seeds 2")),
    (["--profile", "quick", "--n-prompts", "5", "--seeds", "1"],
     ("at 5 generations", "9 generations", "--n-prompts 9 with --seeds 1")),
])
def test_an_unreachable_gate_is_refused_before_generating(rtn_package: Path, tiny_root: dict[str, Path],
                                                          tmp_path: Path, argv: list[str], needles: tuple[str, ...],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    pkg = shutil.copytree(rtn_package, tmp_path / "pkg")
    before = _state(pkg)
    code = validate_awq_main([str(pkg), "--reference", str(tiny_root["tiny-darwin"]), "--device", "cpu", *argv])
    _expect(code, EXIT_USER, capsys, *needles, "nothing was generated")
    assert _state(pkg) == before and not (pkg / "validation").exists()


def test_a_long_form_gate_without_long_prompts_is_refused(rtn_package: Path, tiny_root: dict[str, Path],
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pkg = shutil.copytree(rtn_package, tmp_path / "pkg")
    gates = tmp_path / "gates.json"
    gates.write_text(json.dumps({**TINY_VALIDATE_GATES, "long_median_duration_ratio": [0.5, 2.0]}))
    code = validate_awq_main([str(pkg), "--reference", str(tiny_root["tiny-darwin"]), "--gates", str(gates),
                              "--n-prompts", "2", "--seeds", "1", "--device", "cpu"])
    _expect(code, EXIT_USER, capsys, "gate long_median_duration_ratio cannot pass", "long-form", "--n-prompts")
    assert not (pkg / "validation").exists()


@pytest.mark.parametrize(("k_pkg", "k_ref", "says"), [(3, 3, "narrow the bound"), (6, 1, "runs away more often")])
def test_reachable_but_unresolved_runaway_gate_fails_with_an_explanation(k_pkg: int, k_ref: int, says: str) -> None:
    """20 generations can pass a 0.15 threshold (0.119 with no runaway); a run with runaways does not resolve it:
    the gate FAILs and the report says why (the same bound the gate evaluates)."""
    from tts_awq.validate import gates as gates_mod
    from tts_awq.validate import reach, summarize

    assert reach.best_runaway_bound(20) <= 0.15
    freeruns = [{"package_hit_limit": i < k_pkg, "reference_hit_limit": i < k_ref, "early_stop": False,
                 "reference_frames": 10, "package_frames": 10} for i in range(20)]
    metrics = {"runaway": summarize.runaway(freeruns, 0.15)}
    results = gates_mod.evaluate_gates(gates_mod.default_gates(runaway_excess=0.15), metrics)
    reach.explain_failures(results, metrics)
    gate = results["runaway_excess_upper95"]
    assert not gate["passed"] and gate["value"] > 0.15
    assert f"package {k_pkg} vs reference {k_ref} runaways in 20 generations" in gate["note"] and says in gate["note"]
