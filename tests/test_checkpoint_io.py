"""The checkpoint layer: streaming writer vs safetensors' own reader, validation of bad files, atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tts_awq.checkpoint import ShardedWriter, TensorStore, atomic_output_dir, detect_layout
from tts_awq.errors import UserError


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "b.weight": torch.randn(16, 8, generator=g).bfloat16(),
        "a.qweight": torch.randint(-(2**31), 2**31 - 1, (8, 2), generator=g, dtype=torch.int32),
        "c.scales": torch.randn(1, 16, generator=g).half(),
        "d.bias": torch.randn(3, generator=g),
    }


def test_writer_output_reads_back_with_safetensors(tmp_path: Path) -> None:
    tensors = _tensors()
    plan = {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}
    writer = ShardedWriter(tmp_path, plan)
    for name in reversed(list(tensors)):  # any order
        writer.write(name, tensors[name])
    assert writer.close() == ["model.safetensors"]
    loaded = load_file(tmp_path / "model.safetensors")
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)


def test_writer_is_order_independent_and_shards_with_index(tmp_path: Path) -> None:
    tensors = _tensors()
    plan = {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}
    outs = []
    for i, order in enumerate([sorted(tensors), sorted(tensors, reverse=True)]):
        d = tmp_path / str(i)
        d.mkdir()
        w = ShardedWriter(d, plan, max_shard_bytes=200)
        for name in order:
            w.write(name, tensors[name])
        outs.append(w.close())
    assert outs[0] == outs[1] and outs[0][-1] == "model.safetensors.index.json" and len(outs[0]) > 2
    for rel in outs[0]:
        assert (tmp_path / "0" / rel).read_bytes() == (tmp_path / "1" / rel).read_bytes()
    store = TensorStore(tmp_path / "0")
    for name, tensor in tensors.items():
        assert torch.equal(store.get(name), tensor)


def test_truncated_safetensors_is_a_clear_error(tmp_path: Path) -> None:
    save_file({"x": torch.zeros(64, 64)}, tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(UserError, match="truncated"):
        TensorStore(tmp_path)


def test_missing_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="config.json"):
        detect_layout(tmp_path)


def test_unsupported_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="not supported"):
        detect_layout(tmp_path)


def test_atomic_output_dir_leaves_nothing_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_output_dir(out) as tmp:
        (tmp / "half.bin").write_text("x")
        raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_output_dir(out) as tmp:
        (tmp / "ok").write_text("1")
    assert (out / "ok").read_text() == "1"
    with pytest.raises(UserError, match="--overwrite"), atomic_output_dir(out):
        pass
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
