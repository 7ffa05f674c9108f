"""Bad input to quantize-talker: one line on stderr, exit 2, SRC untouched, no OUT."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tts_awq.checkpoint.files import hash_tree
from tts_awq.cli import main, quantize_talker_main


@pytest.fixture()
def src(tiny_root: dict[str, Path], tmp_path: Path) -> Path:
    path = tmp_path / "src"
    shutil.copytree(tiny_root["tiny-darwin"], path)
    return path


def _fails(argv: list[str], src: Path, out: Path, capsys: pytest.CaptureFixture[str], match: str) -> None:
    before = hash_tree(src)
    code = quantize_talker_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err and err[-1].startswith("error: ") and match in err[-1], err
    assert "Traceback" not in "\n".join(err)
    assert hash_tree(src) == before
    assert not out.exists() or out.name == "existing"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]


def test_missing_config(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (src / "config.json").unlink()
    out = tmp_path / "out"
    _fails([str(src), str(out)], src, out, capsys, "config.json")


def test_missing_speech_tokenizer_names_codec_from(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree(src / "speech_tokenizer")
    out = tmp_path / "out"
    _fails([str(src), str(out)], src, out, capsys, "--codec-from BASE")


def test_truncated_safetensors(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = src / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4096])
    out = tmp_path / "out"
    _fails([str(src), str(out)], src, out, capsys, "truncated")


def test_bad_group_size(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    _fails([str(src), str(out), "--group-size", "96"], src, out, capsys, "--group-size 96 does not divide")


def test_existing_out(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _fails([str(src), str(out)], src, out, capsys, "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"


def test_empty_calibration_file(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "out"
    _fails([str(src), str(out), "--calib", str(empty), "--device", "cpu"], src, out, capsys, "empty.jsonl")


def test_not_a_directory_nor_repo_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["quantize-talker", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert code == 2 and "not found" in capsys.readouterr().err


def test_offline_hub_id_not_cached(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    code = main(["quantize-talker", "nobody-here/no-such-tts", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not in the local Hugging Face cache" in err and "HF_HUB_OFFLINE" in err
