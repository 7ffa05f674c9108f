"""The fault catalogue: what a hostile but fair user meets, for every command (quantize-talker, validate-awq,
blend, repack, merge, push) and load_quantized: racing runs, --overwrite limits, OS errors, signals, crashes, bad
options, integrity, crash resume, non-finite values, refusals of the upstream stages and of push.

Each CLI case asserts the documented exit code, exactly one ``error:`` line on stderr, no traceback, the source
unchanged and no OUT or temp dir left behind; each load_quantized case a one-line UserError.
"""

from __future__ import annotations

import errno
import fcntl
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
    (["--method", "gptq"], "--method"),
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
                progress = partial / ".resume" / "progress.json"
                if progress.is_file() and json.loads(progress.read_text()).get("next_layer", 0) > layer:
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
    assert not out.exists() and json.loads((partial / ".resume" / "progress.json").read_text())["next_layer"] == 2
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
        assert (hash_tree(path) if path.is_dir() else path.read_bytes()) == before, f"{path} was modified"
    assert not out.exists(), out
    if out.parent.is_dir():
        _no_leftovers(out.parent, out.name)
    return line


def _state(*paths: Path) -> dict[Path, object]:
    return {p: hash_tree(p) if p.is_dir() else p.read_bytes() for p in paths}


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
