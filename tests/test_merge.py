"""Merge methods (hand-computed cases) and the merge stage on tiny safetensors dirs and Kokoro-shaped .pth files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tts_awq.errors import UserError
from tts_awq.upstream.merge import canonical_name, merge_checkpoints, parse_model_spec
from tts_awq.upstream.merge_methods import (
    METHODS,
    dare_linear,
    get_method,
    linear,
    magnitude_trim,
    random_keep_masks,
    task_arithmetic,
    ties,
)

BASE = torch.ones(1, 6)
DELTA_1 = torch.tensor([[3.0, -2.0, 1.0, 0.5, -4.0, 2.5]])
DELTA_2 = torch.tensor([[-5.0, 1.0, 2.0, -3.0, -0.5, 1.5]])


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16 if t.element_size() == 2 else torch.int32)


# ------------------------------------------------------------------ pure methods


def test_registry_declares_methods_and_params() -> None:
    assert {"linear", "task_arithmetic", "ties", "dare_linear"} <= set(METHODS)
    assert METHODS["ties"].params == {"density": 0.5, "normalize": True}
    assert METHODS["dare_linear"].params == {"density": 0.5, "seed": 1729}
    assert METHODS["linear"].needs_base is False
    with pytest.raises(UserError, match="unknown merge method 'slerp'"):
        get_method("slerp")


def test_task_arithmetic_zero_weights_is_base_bit_for_bit() -> None:
    base = torch.tensor([[-0.0, 0.1, -3.3, 1e-30, 7.0, -1.25]]).to(torch.bfloat16)
    models = [base + 1, torch.randn(1, 6).to(torch.bfloat16)]
    out = task_arithmetic(base, models, [0.0, 0.0])
    assert out.dtype == torch.bfloat16
    assert torch.equal(_bits(out), _bits(base))


def test_task_arithmetic_hand_computed() -> None:
    out = task_arithmetic(BASE, [BASE + DELTA_1, BASE + DELTA_2], [1.0, 0.5])
    assert torch.equal(out, torch.tensor([[1.5, -0.5, 3.0, 0.0, -3.25, 4.25]]))


def test_linear_identical_models_equal_the_model_and_weights_normalize() -> None:
    model = torch.randn(4, 5)
    assert torch.equal(linear(None, [model, model.clone()], [0.6, 1.0]), model)
    a, b = torch.zeros(1, 2), torch.tensor([[4.0, 8.0]])
    assert torch.equal(linear(None, [a, b], [3.0, 1.0]), torch.tensor([[1.0, 2.0]]))
    assert torch.equal(linear(None, [a, b], [3.0, 1.0], normalize=False), torch.tensor([[4.0, 8.0]]))


def test_magnitude_trim_keeps_top_density() -> None:
    assert torch.equal(magnitude_trim(DELTA_1, 0.5), torch.tensor([[3.0, 0, 0, 0, -4.0, 2.5]]))
    assert torch.equal(magnitude_trim(DELTA_2, 0.5), torch.tensor([[-5.0, 0, 2.0, -3.0, 0, 0]]))


def test_ties_hand_computed_equal_weights() -> None:
    # trimmed: d1=[3,0,0,0,-4,2.5]  d2=[-5,0,2,-3,0,0]; sum=[-2,0,2,-3,-4,2.5] -> signs [-,+,+,-,-,+]
    # agreeing mean: [-5, 0, 2, -3, -4, 2.5]
    out = ties(BASE, [BASE + DELTA_1, BASE + DELTA_2], [1.0, 1.0], density=0.5)
    assert torch.equal(out, BASE + torch.tensor([[-5.0, 0.0, 2.0, -3.0, -4.0, 2.5]]))


def test_ties_hand_computed_weights_flip_the_election() -> None:
    # weighted trimmed: [3,0,0,0,-4,2.5] and 0.5*[-5,0,2,-3,0,0]=[-2.5,0,1,-1.5,0,0]; sum=[0.5,...] -> + wins idx 0
    # disjoint weighted mean: idx0 3/1, idx2 1/0.5=2, idx3 -1.5/0.5=-3, idx4 -4, idx5 2.5
    out = ties(BASE, [BASE + DELTA_1, BASE + DELTA_2], [1.0, 0.5], density=0.5)
    assert torch.equal(out, BASE + torch.tensor([[3.0, 0.0, 2.0, -3.0, -4.0, 2.5]]))
    raw = ties(BASE, [BASE + DELTA_1, BASE + DELTA_2], [1.0, 0.5], density=0.5, normalize=False)
    assert torch.equal(raw, BASE + torch.tensor([[3.0, 0.0, 1.0, -1.5, -4.0, 2.5]]))


def test_dare_masks_pinned_and_hand_computed() -> None:
    masks = random_keep_masks((1, 6), 2, 0.5, seed=7)
    assert [m.int().tolist() for m in masks] == [[[0, 1, 0, 0, 1, 1]], [[1, 0, 1, 0, 0, 0]]]
    # kept*2*w: m1 -> [0,-4,0,0,-8,5]; m2 (w=0.5) -> [-5,0,2,0,0,0]; sum [-5,-4,2,0,-8,5]
    out = dare_linear(BASE, [BASE + DELTA_1, BASE + DELTA_2], [1.0, 0.5], density=0.5, seed=7)
    assert torch.equal(out, torch.tensor([[-4.0, -3.0, 3.0, 1.0, -7.0, 6.0]]))


def test_dare_density_one_is_task_arithmetic_and_seeds_matter() -> None:
    base, models = torch.randn(8, 8), [torch.randn(8, 8), torch.randn(8, 8)]
    ta = task_arithmetic(base, models, [0.7, 0.3])
    assert torch.allclose(dare_linear(base, models, [0.7, 0.3], density=1.0, seed=1), ta, atol=1e-6)
    one = dare_linear(base, models, [0.7, 0.3], density=0.5, seed=1)
    assert torch.equal(one, dare_linear(base, models, [0.7, 0.3], density=0.5, seed=1))
    assert not torch.equal(one, dare_linear(base, models, [0.7, 0.3], density=0.5, seed=2))


def test_methods_compute_in_float32_and_cast_back() -> None:
    base = torch.full((2, 3), 1.0, dtype=torch.bfloat16)
    m = torch.full((2, 3), 1.0078125, dtype=torch.bfloat16)  # base + 1 bf16 ulp
    for name, fn in [("ta", task_arithmetic), ("ties", ties), ("dare", dare_linear)]:
        kwargs = {"density": 1.0} if name != "ta" else {}
        out = fn(base, [m, m], [0.5, 0.5], **kwargs)
        assert out.dtype == torch.bfloat16 and torch.equal(out, m), name


def test_helpers() -> None:
    assert canonical_name("dec.conv.weight_g") == "dec.conv.parametrizations.weight.original0"
    assert canonical_name("weight_v") == "parametrizations.weight.original1"
    assert canonical_name("dec.conv.my_weight_g") == "dec.conv.my_weight_g"
    assert parse_model_spec("ft/a:0.6") == ("ft/a", 0.6)
    assert parse_model_spec("owner/name") == ("owner/name", 1.0)
    assert parse_model_spec("x.pth:-1") == ("x.pth", -1.0)


# ------------------------------------------------------------------ safetensors directories


def _st_dir(root: Path, tensors: dict[str, torch.Tensor], extra: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True)
    save_file(tensors, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({"model_type": "toy"}))
    for rel, text in (extra or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _three_dirs(tmp_path: Path, dtype: torch.dtype = torch.float32) -> tuple[Path, Path, Path]:
    g = torch.Generator().manual_seed(0)
    base = {"a.weight": torch.randn(4, 6, generator=g), "b.bias": torch.randn(6, generator=g)}
    base = {k: v.to(dtype) for k, v in base.items()}
    base["steps"] = torch.tensor([3], dtype=torch.int64)
    ma = {k: (v + 1 if v.is_floating_point() else v) for k, v in base.items()}
    mc = {k: (v * 2 if v.is_floating_point() else v + 5) for k, v in base.items()}
    return (
        _st_dir(
            tmp_path / "base", base, {"tokenizer_config.json": "{}", "speech_tokenizer/config.json": "{}"}
        ),
        _st_dir(tmp_path / "a", ma),
        _st_dir(tmp_path / "c", mc),
    )


def test_merge_dirs_task_arithmetic_copies_files_and_records_provenance(tmp_path: Path) -> None:
    base, a, c = _three_dirs(tmp_path)
    out = merge_checkpoints(base, [(str(a), 0.6), (str(c), 1.0)], tmp_path / "out", method="task_arithmetic")
    got, b = load_file(str(out / "model.safetensors")), load_file(str(base / "model.safetensors"))
    assert torch.allclose(got["a.weight"], b["a.weight"] + 0.6 + b["a.weight"], atol=1e-6)
    assert torch.equal(got["steps"], b["steps"])  # non-float copied from base
    assert (out / "tokenizer_config.json").read_text() == "{}"
    assert (out / "speech_tokenizer" / "config.json").is_file()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["stage"] == "merge" and prov["parameters"]["method"] == "task_arithmetic"
    assert [i["role"] for i in prov["inputs"]] == ["base", f"model {a}", f"model {c}"]
    assert prov["inputs"][1]["weight"] == 0.6 and "model.safetensors" in prov["inputs"][1]["files_sha256"]
    assert prov["non_float_from_base"] == ["steps"] and prov["unmatched_keys"] == []


def test_merge_dirs_preserve_bf16_and_zero_weight_is_base(tmp_path: Path) -> None:
    base, a, c = _three_dirs(tmp_path, torch.bfloat16)
    out = merge_checkpoints(base, [(str(a), 0.0), (str(c), 0.0)], tmp_path / "out", method="task_arithmetic")
    got, b = load_file(str(out / "model.safetensors")), load_file(str(base / "model.safetensors"))
    assert got["a.weight"].dtype == torch.bfloat16
    assert all(torch.equal(_bits(got[k]), _bits(b[k])) for k in ("a.weight", "b.bias"))


def test_merge_dirs_dare_deterministic_for_seed(tmp_path: Path) -> None:
    base, a, c = _three_dirs(tmp_path)
    models = [(str(a), 0.5), (str(c), 0.5)]
    outs = [
        merge_checkpoints(base, models, tmp_path / name, method="dare_linear", density=0.5, seed=seed)
        for name, seed in [("o1", 1), ("o2", 1), ("o3", 2)]
    ]
    w = [load_file(str(o / "model.safetensors"))["a.weight"] for o in outs]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])
    assert json.loads((outs[2] / "provenance.json").read_text())["parameters"]["seed"] == 2


def test_merge_dirs_shape_mismatch(tmp_path: Path) -> None:
    base = _st_dir(tmp_path / "base", {"w": torch.zeros(2, 3)})
    other = _st_dir(tmp_path / "a", {"w": torch.zeros(3, 2)})
    with pytest.raises(UserError, match=r"w: shapes differ.*\[2, 3\].*\[3, 2\]"):
        merge_checkpoints(base, [(str(other), 1.0)], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merge_unmatched_policies(tmp_path: Path) -> None:
    base = _st_dir(tmp_path / "base", {"w": torch.zeros(2), "only_base": torch.ones(2)})
    a = _st_dir(tmp_path / "a", {"w": torch.ones(2), "only_a": torch.full((2,), 5.0)})
    with pytest.raises(
        UserError, match=r"2 tensors are not in every input.*only_a \(only in model .*only_base"
    ):
        merge_checkpoints(base, [(str(a), 1.0)], tmp_path / "o_err")
    dropped = merge_checkpoints(base, [(str(a), 1.0)], tmp_path / "o_drop", unmatched="drop")
    assert set(load_file(str(dropped / "model.safetensors"))) == {"w"}
    kept = merge_checkpoints(base, [(str(a), 1.0)], tmp_path / "o_base", unmatched="keep:base")
    assert set(load_file(str(kept / "model.safetensors"))) == {"w", "only_base"}
    prov = json.loads((kept / "provenance.json").read_text())
    assert {u["name"]: u["action"] for u in prov["unmatched_keys"]} == {
        "only_a": "dropped",
        "only_base": "kept from base",
    }
    from_a = merge_checkpoints(base, [(str(a), 1.0)], tmp_path / "o_a", unmatched=f"keep:{a}")
    got = load_file(str(from_a / "model.safetensors"))
    assert set(got) == {"w", "only_a"} and torch.equal(got["only_a"], torch.full((2,), 5.0))
    with pytest.raises(UserError, match="keep:NAME with NAME one of base"):
        merge_checkpoints(base, [(str(a), 1.0)], tmp_path / "o_x", unmatched="keep:nobody")
    with pytest.raises(UserError, match="expected one of error, drop, keep:NAME"):
        merge_checkpoints(base, [(str(a), 1.0)], tmp_path / "o_y", unmatched="union")


def test_merge_missing_inputs_and_bad_options(tmp_path: Path) -> None:
    base, a, _ = _three_dirs(tmp_path)
    with pytest.raises(UserError, match="not found"):
        merge_checkpoints(base, [(str(tmp_path / "nope"), 1.0)], tmp_path / "out")
    with pytest.raises(UserError, match=r"nope\.pth: base \.pth file not found"):
        merge_checkpoints(tmp_path / "nope.pth", [(str(tmp_path / "x.pth"), 1.0)], tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no model.safetensors"):
        merge_checkpoints(base, [(str(empty), 1.0)], tmp_path / "out")
    with pytest.raises(UserError, match="mix of .pth files and checkpoint directories"):
        merge_checkpoints(base, [(str(tmp_path / "x.pth"), 1.0)], tmp_path / "out")
    with pytest.raises(UserError, match="--density does not apply to linear"):
        merge_checkpoints(base, [(str(a), 1.0)], tmp_path / "out", method="linear", density=0.5)
    with pytest.raises(UserError, match=r"must be in \(0, 1\]"):
        merge_checkpoints(base, [(str(a), 1.0)], tmp_path / "out", method="ties", density=0.0)
    with pytest.raises(UserError, match="weights sum to zero"):
        merge_checkpoints(base, [(str(a), 1.0), (str(a), -1.0)], tmp_path / "out", method="linear")
    assert not (tmp_path / "out").exists()


def test_merge_existing_out_refused(tmp_path: Path) -> None:
    base, a, _ = _three_dirs(tmp_path)
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="already exists"):
        merge_checkpoints(base, [(str(a), 1.0)], tmp_path / "out")
    merge_checkpoints(base, [(str(a), 1.0)], tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "model.safetensors").is_file()


# ------------------------------------------------------------------ Kokoro-shaped .pth files

LEGACY = ("weight_g", "weight_v")
PARAM = ("parametrizations.weight.original0", "parametrizations.weight.original1")


def _kokoro(g: torch.Tensor, v: torch.Tensor, emb: torch.Tensor, spelling: tuple[str, str]) -> dict:
    conv = "module.generator.conv_post"
    return {
        "bert": {"module.embeddings.word_embeddings.weight": emb},
        "bert_encoder": {"module.weight": emb[:2].clone(), "module.bias": torch.zeros(2, dtype=emb.dtype)},
        "decoder": {
            f"{conv}.{spelling[0]}": g,
            f"{conv}.{spelling[1]}": v,
            f"{conv}.bias": torch.zeros(2, dtype=emb.dtype),
        },
        "meta": {"version": 1},
    }


@pytest.mark.parametrize("base_spelling", [LEGACY, PARAM])
def test_merge_pth_weight_norm_aliases(tmp_path: Path, base_spelling: tuple[str, str]) -> None:
    g0, v0, e0 = torch.ones(2, 1, 1), torch.zeros(2, 3, 1), torch.zeros(4, 3, dtype=torch.bfloat16)
    torch.save(_kokoro(g0, v0, e0, base_spelling), tmp_path / "base.pth")
    torch.save(_kokoro(g0 + 2, v0 + 4, e0 + 2, LEGACY), tmp_path / "a.pth")
    torch.save(_kokoro(g0 + 4, v0 - 8, e0 - 4, PARAM), tmp_path / "b.pth")
    out = merge_checkpoints(
        tmp_path / "base.pth",
        [(str(tmp_path / "a.pth"), 0.5), (str(tmp_path / "b.pth"), 0.25)],
        tmp_path / "out",
        method="task_arithmetic",
    )
    merged = torch.load(out / "model.pth", map_location="cpu", weights_only=True)
    dec = merged["decoder"]
    conv = "module.generator.conv_post"
    assert set(dec) == {f"{conv}.{base_spelling[0]}", f"{conv}.{base_spelling[1]}", f"{conv}.bias"}
    assert torch.equal(dec[f"{conv}.{base_spelling[0]}"], torch.full((2, 1, 1), 1 + 0.5 * 2 + 0.25 * 4))
    assert torch.equal(dec[f"{conv}.{base_spelling[1]}"], torch.full((2, 3, 1), 0.5 * 4 - 0.25 * 8))
    emb = merged["bert"]["module.embeddings.word_embeddings.weight"]
    assert emb.dtype == torch.bfloat16 and torch.equal(emb, torch.full((4, 3), 0.0, dtype=torch.bfloat16))
    assert merged["meta"] == {"version": 1} and list(merged) == ["bert", "bert_encoder", "decoder", "meta"]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["parameters"]["format"] == "pth"
    assert set(prov["inputs"][0]["files_sha256"]) == {"base.pth"}
    assert len(prov["weight_norm_spellings_matched"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["model.pth", "provenance.json"]


def test_merge_pth_unmatched_keep_model_uses_its_structure(tmp_path: Path) -> None:
    torch.save({"dec": {"w": torch.zeros(2)}}, tmp_path / "base.pth")
    torch.save({"dec": {"w": torch.ones(2)}, "extra": {"x": torch.full((1,), 9.0)}}, tmp_path / "a.pth")
    spec = str(tmp_path / "a.pth")
    out = merge_checkpoints(tmp_path / "base.pth", [(spec, 1.0)], tmp_path / "out", unmatched=f"keep:{spec}")
    merged = torch.load(out / "model.pth", weights_only=True)
    assert torch.equal(merged["dec"]["w"], torch.ones(2)) and torch.equal(
        merged["extra"]["x"], torch.full((1,), 9.0)
    )


class Payload:
    """A custom class: pickled with its module path, so weights_only must refuse it."""

    def __init__(self) -> None:
        self.value = 1


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("kind", ["class", "code"])
def test_merge_pth_refuses_pickled_code(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "executed"
    payload = Payload() if kind == "class" else Exploit(marker)
    torch.save({"dec": {"w": torch.zeros(2)}, "evil": payload}, tmp_path / "evil.pth")
    torch.save({"dec": {"w": torch.zeros(2)}}, tmp_path / "base.pth")
    with pytest.raises(
        UserError, match=r"evil\.pth: refused to load.*references code or custom classes"
    ) as info:
        merge_checkpoints(tmp_path / "base.pth", [(str(tmp_path / "evil.pth"), 1.0)], tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_merge_pth_refuses_non_dict(tmp_path: Path) -> None:
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(UserError, match="expected a \\(nested\\) dict"):
        merge_checkpoints(tmp_path / "list.pth", [(str(tmp_path / "list.pth"), 1.0)], tmp_path / "out")
