"""Repack: copy a base's speech_tokenizer/ and missing processor files into a copy of SRC (file-level, tiny fakes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tts_awq.checkpoint.codec import copy_codec_into
from tts_awq.checkpoint.files import hash_tree
from tts_awq.errors import UserError
from tts_awq.upstream.repack import repack_codec

TALKER = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 3072,
    "num_code_groups": 16,
}


def _config(**talker: object) -> str:
    return json.dumps({"model_type": "qwen3_tts", "talker_config": {**TALKER, **talker}})


def _write(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return root


def _base(tmp_path: Path, **talker: object) -> Path:
    return _write(
        tmp_path / "base",
        {
            "config.json": _config(**talker),
            "model.safetensors": b"base-weights",
            "speech_tokenizer/config.json": '{"codec": true}',
            "speech_tokenizer/model.safetensors": b"codec-weights",
            "speech_tokenizer/preprocessor_config.json": "{}",
            "preprocessor_config.json": '{"p": 1}',
            "tokenizer_config.json": '{"t": 1}',
            "vocab.json": '{"base": 1}',
            "merges.txt": "a b\n",
            "generation_config.json": '{"g": 1}',
            "README.md": "base card",
        },
    )


def _src(tmp_path: Path, **talker: object) -> Path:
    return _write(
        tmp_path / "src",
        {
            "config.json": _config(**talker),
            "model.safetensors": b"darwin-weights",
            "vocab.json": '{"src": 1}',
            "README.md": "darwin card",
            "provenance.json": '{"stage": "blend"}',
        },
    )


def test_repack_copies_codec_and_records_files_from(tmp_path: Path) -> None:
    base, src = _base(tmp_path), _src(tmp_path)
    before_src, before_base = hash_tree(src), hash_tree(base)
    out = repack_codec(src, base, tmp_path / "out")
    assert hash_tree(src) == before_src and hash_tree(base) == before_base
    assert (out / "speech_tokenizer" / "model.safetensors").read_bytes() == b"codec-weights"
    assert (out / "model.safetensors").read_bytes() == b"darwin-weights"
    assert (out / "vocab.json").read_text() == '{"src": 1}'  # SRC's own file wins
    assert (out / "README.md").read_text() == "darwin card"
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["stage"] == "repack"
    assert prov["files_from"] == {
        "README.md": "src",
        "config.json": "src",
        "generation_config.json": "codec_from",
        "merges.txt": "codec_from",
        "model.safetensors": "src",
        "preprocessor_config.json": "codec_from",
        "speech_tokenizer/config.json": "codec_from",
        "speech_tokenizer/model.safetensors": "codec_from",
        "speech_tokenizer/preprocessor_config.json": "codec_from",
        "tokenizer_config.json": "codec_from",
        "vocab.json": "src",
    }
    roles = {i["role"]: i for i in prov["inputs"]}
    assert roles["src"]["files_sha256"] == {k: v for k, v in before_src.items() if k != "provenance.json"}
    assert roles["src"]["provenance"] == {"stage": "blend"}
    assert (
        roles["codec_from"]["files_sha256"]["speech_tokenizer/model.safetensors"]
        == before_base["speech_tokenizer/model.safetensors"]
    )
    assert set(prov["outputs_sha256"]) == set(prov["files_from"])


def test_repack_arch_mismatch_lists_every_mismatch(tmp_path: Path) -> None:
    base = _base(tmp_path)
    src = _src(tmp_path, hidden_size=128, num_code_groups=8, vocab_size=4096)
    with pytest.raises(UserError) as info:
        repack_codec(src, base, tmp_path / "out")
    msg = str(info.value)
    assert "\n" not in msg
    for part in (
        "hidden_size SRC=128 BASE=64",
        "num_code_groups SRC=8 BASE=16",
        "vocab_size SRC=4096 BASE=3072",
    ):
        assert part in msg
    assert "intermediate_size" not in msg
    assert not (tmp_path / "out").exists()


def test_repack_refuses_src_with_a_different_codec_but_accepts_an_identical_one(tmp_path: Path) -> None:
    base, src = _base(tmp_path), _src(tmp_path)
    _write(src, {"speech_tokenizer/config.json": '{"other": 1}'})
    with pytest.raises(UserError, match="already present .*nothing to repack"):
        repack_codec(src, base, tmp_path / "out")
    shutil.rmtree(src / "speech_tokenizer")
    shutil.copytree(base / "speech_tokenizer", src / "speech_tokenizer")
    out = repack_codec(src, base, tmp_path / "out")
    files_from = json.loads((out / "provenance.json").read_text())["files_from"]
    assert files_from["speech_tokenizer/config.json"] == "src"
    assert files_from["tokenizer_config.json"] == "codec_from"


def test_repack_existing_out_missing_inputs_and_base_without_codec(tmp_path: Path) -> None:
    base, src = _base(tmp_path), _src(tmp_path)
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="already exists"):
        repack_codec(src, base, tmp_path / "out")
    repack_codec(src, base, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "speech_tokenizer" / "config.json").is_file()
    with pytest.raises(UserError, match="not found"):
        repack_codec(tmp_path / "missing", base, tmp_path / "o2")
    with pytest.raises(UserError, match="SRC is a file"):
        repack_codec(src / "config.json", base, tmp_path / "o2")
    shutil.rmtree(base / "speech_tokenizer")
    with pytest.raises(UserError, match="has no codec"):
        repack_codec(src, base, tmp_path / "o2")
    (src / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    with pytest.raises(UserError):
        repack_codec(src, base, tmp_path / "o2")
    assert not (tmp_path / "o2").exists()


def test_copy_codec_into_prepared_dir(tmp_path: Path) -> None:
    base = _base(tmp_path)
    dst = _write(tmp_path / "quantized", {"config.json": _config(), "tokenizer_config.json": '{"mine": 1}'})
    copied = copy_codec_into(dst, base)
    assert copied == sorted(
        [
            "generation_config.json",
            "merges.txt",
            "preprocessor_config.json",
            "speech_tokenizer/config.json",
            "speech_tokenizer/model.safetensors",
            "speech_tokenizer/preprocessor_config.json",
            "vocab.json",
        ]
    )
    assert (dst / "tokenizer_config.json").read_text() == '{"mine": 1}'
    assert copy_codec_into(dst, base) == []  # idempotent: identical codec, nothing missing
    with pytest.raises(UserError, match="directory not found"):
        copy_codec_into(dst, tmp_path / "nope")
    other = _write(tmp_path / "other", {"config.json": _config(num_hidden_layers=3, head_dim=32)})
    with pytest.raises(UserError, match="num_hidden_layers SRC=3 BASE=2; head_dim SRC=32 BASE=16"):
        copy_codec_into(other, base)
