"""Pure helpers of scripts/bench_vs_autoawq.py: block cutting, its own AWQ GEMM and compressed-tensors unpackers,
RTN, metrics, the calibration sets' disjointness from eval, engine rotation, medians, rusage, the CPU hog."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_vs_autoawq.py"


@pytest.fixture(scope="module")
def bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_vs_autoawq", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_vs_autoawq"] = module
    spec.loader.exec_module(module)
    return module


def test_blocks_consecutive_when_stream_is_long_enough(bench) -> None:  # type: ignore[no-untyped-def]
    blocks, how = bench.make_blocks(list(range(100)), 3, 10)
    assert blocks == [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))]
    assert "consecutive" in how


def test_blocks_overlap_evenly_when_stream_is_short(bench) -> None:  # type: ignore[no-untyped-def]
    ids = list(range(25))
    blocks, how = bench.make_blocks(ids, 4, 10)
    assert [len(b) for b in blocks] == [10] * 4
    assert blocks[0][0] == 0 and blocks[-1][-1] == 24  # the whole stream is covered
    assert all(b == ids[b[0]:b[0] + 10] for b in blocks)
    assert "overlapping" in how


def test_blocks_too_short_is_an_error(bench) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="fewer than one block"):
        bench.make_blocks(list(range(5)), 2, 10)


def test_gemm_nibble_order(bench) -> None:  # type: ignore[no-untyped-def]
    # column 8c + j sits in nibble [0, 4, 1, 5, 2, 6, 3, 7][j]
    for j, nibble in enumerate([0, 4, 1, 5, 2, 6, 3, 7]):
        values = torch.zeros(1, 8, dtype=torch.int64)
        values[0, j] = 0xF
        packed = bench.pack_gemm_int32(values)
        assert int(packed[0, 0]) & 0xFFFFFFFF == 0xF << (4 * nibble)


def test_pack_unpack_roundtrip_including_sign_bit(bench) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    values = torch.randint(0, 16, (5, 24))
    values[:, 7] = 15  # nibble 7 of the first pack: sets the int32 sign bit
    packed = bench.pack_gemm_int32(values)
    assert packed.dtype == torch.int32 and packed.shape == (5, 3)
    assert (packed < 0).any()
    assert torch.equal(bench.unpack_gemm_int32(packed), values)


def test_unpacker_reads_tts_awq_packing(bench) -> None:  # type: ignore[no-untyped-def]
    """Independent check of the format against the library's writer (which is bit-identical to AutoAWQ's)."""
    from tts_awq.quantize.pack import pack_gemm

    torch.manual_seed(1)
    q = torch.randint(0, 16, (16, 64), dtype=torch.int32)  # [out, in]
    zeros = torch.randint(0, 16, (16, 2), dtype=torch.int32)  # [out, groups]
    qweight, qzeros = pack_gemm(q, zeros)
    assert torch.equal(bench.unpack_gemm_int32(qweight), q.t().to(torch.int64))
    assert torch.equal(bench.unpack_gemm_int32(qzeros), zeros.t().to(torch.int64))


def test_rtn_dequantize_matches_fake_quant(bench) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(2)
    w = torch.randn(16, 128)
    qweight, qzeros, scales = bench.rtn_gemm(w, 64)
    assert qweight.shape == (128, 2) and qzeros.shape == (2, 2) and scales.shape == (2, 16)
    deq = bench.dequantize_gemm_weight(qweight, qzeros, scales)
    assert deq.shape == w.shape
    # every group has at most 16 distinct levels and stays close to the original
    g = deq.reshape(16, 2, 64)
    assert all(len(torch.unique(g[o, k])) <= 16 for o in range(16) for k in range(2))
    step = (w.reshape(16, 2, 64).amax(-1) - w.reshape(16, 2, 64).amin(-1)) / 15
    assert ((deq - w).abs().reshape(16, 2, 64) <= step[..., None] * 0.51 + 1e-3).all()


# ------------------------------------------------------------------ compressed-tensors (llm-compressor) layout


@pytest.mark.parametrize("cols", [64, 20, 3])
def test_int4_unpacker_inverts_compressed_tensors_pack(bench, cols: int) -> None:  # type: ignore[no-untyped-def]
    """The real library packs a known signed int4 matrix; this script's own unpacker gives it back exactly, along
    either dimension (weights are packed along dim 1, zero points along dim 0) and with a padded last word."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    torch.manual_seed(4)
    values = torch.randint(-8, 8, (6, cols), dtype=torch.int8)
    values[0, :2] = torch.tensor([-8, 7], dtype=torch.int8)  # both ends of the range
    rows_packed = pack_to_int32(values, 4, packed_dim=1)
    assert rows_packed.shape == (6, -(-cols // 8))
    assert torch.equal(bench.unpack_int4_rows(rows_packed, cols), values.to(torch.int64))
    cols_packed = pack_to_int32(values.t().contiguous(), 4, packed_dim=0)  # [ceil(cols/8), 6]
    assert torch.equal(bench.unpack_int4_rows(cols_packed.t().contiguous(), cols), values.to(torch.int64))
    with pytest.raises(ValueError, match="cannot hold"):
        bench.unpack_int4_rows(rows_packed, cols + 8)


def test_pack_quantized_to_gemm_matches_the_library_decompressor(bench) -> None:  # type: ignore[no-untyped-def]
    """compressed-tensors' own compressor writes a W4A16 asymmetric group-64 Linear; the AWQ GEMM triple this
    script makes of it dequantizes (with this script's GEMM dequantizer) to exactly the library's decompressed
    weight."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    torch.manual_seed(5)
    out_features, in_features, group = 24, 128, 64
    args = QuantizationArgs(num_bits=4, type="int", symmetric=False, strategy="group", group_size=group)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    w = torch.randn(out_features, in_features)
    g = w.reshape(out_features, in_features // group, group)
    lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
    scale = (hi - lo) / 15
    zero = torch.clamp(torch.round(-lo / scale) - 8, -8, 7).to(torch.int8)
    compressed = PackedQuantizationCompressor.compress({"weight": w, "weight_scale": scale,
                                                        "weight_zero_point": zero}, scheme)
    assert set(compressed) >= {"weight_packed", "weight_scale", "weight_zero_point", "weight_shape"}
    library = PackedQuantizationCompressor.decompress(dict(compressed), scheme)["weight"]
    qweight, qzeros, scales = bench.pack_quantized_to_gemm(compressed["weight_packed"], compressed["weight_scale"],
                                                           compressed["weight_zero_point"],
                                                           compressed["weight_shape"])
    assert qweight.shape == (in_features, out_features // 8) and qzeros.shape == (2, out_features // 8)
    assert scales.dtype == scale.dtype and scales.shape == (2, out_features)
    ours = bench.dequantize_gemm_weight(qweight, qzeros, scales)
    assert torch.equal(ours, library.float())
    assert float((ours - w).abs().max()) < float(scale.max())  # and it is a quantization of w, not noise


def test_pack_quantized_to_gemm_refuses_symmetric(bench) -> None:  # type: ignore[no-untyped-def]
    packed = torch.zeros(8, 8, dtype=torch.int32)
    with pytest.raises(ValueError, match="symmetric"):
        bench.pack_quantized_to_gemm(packed, torch.ones(8, 1), None, torch.tensor([8, 64]))


# ----------------------------------------------------------------------------------------- calibration sets


def test_set_b_is_disjoint_from_eval_and_independent_of_set_a(bench) -> None:  # type: ignore[no-untyped-def]
    from tts_awq.prompts import load_prompts

    eval_texts = [p.text for p in load_prompts(split="eval")[0]]
    calib_texts = [p.text for p in load_prompts(split="calib")[0]]
    texts, sha = bench.python_topics_texts()
    assert len(texts) > 50 and sum(len(t) for t in texts) > 100_000 and len(sha) == 64
    assert bench.python_topics_texts() == (texts, sha)  # deterministic
    checked = bench.check_disjoint(texts, eval_texts)
    assert checked["eval_texts"] == 500 and checked["eval_word_runs"] > 1000 and checked["eval_char_runs"] > 100
    bench.check_disjoint(calib_texts, eval_texts)  # set A too
    assert not set(texts) & set(calib_texts)


def test_set_c_is_the_held_out_file_after_the_evaluated_texts(bench) -> None:  # type: ignore[no-untyped-def]
    """Set C (same style as the eval texts, other sentences) never contains a text the evaluation can read."""
    from tts_awq.prompts import load_prompts

    eval_texts = [p.text for p in load_prompts(split="eval")[0]]
    calib_texts = [p.text for p in load_prompts(split="calib")[0]]
    held_out = bench.held_out_texts(eval_texts, calib_texts)
    assert held_out == [t for t in eval_texts if t not in set(calib_texts)]
    evaluated, set_c = held_out[: bench.EVAL_POOL], held_out[bench.EVAL_POOL:]
    assert len(set_c) >= 300 and not set(set_c) & set(evaluated) and not set(set_c) & set(calib_texts)
    bench.check_disjoint(set_c, evaluated)  # no shared 8-word (or 12-character CJK) run either
    assert bench.held_out_texts(["a", "b", "c"], ["b"]) == ["a", "c"]


def test_disjointness_check_catches_shared_text(bench) -> None:  # type: ignore[no-untyped-def]
    eval_texts = ["The quick brown fox jumps over the lazy dog near the river bank today.",
                  "今日は天気がとても良いので公園に散歩に行きましょう。"]
    bench.check_disjoint(["An unrelated text about grammar rules and statements in Python."], eval_texts)
    with pytest.raises(ValueError, match="8-word run"):
        bench.check_disjoint(["Prefix: the QUICK brown fox jumps over the lazy dog, then more."], eval_texts)
    with pytest.raises(ValueError, match="shares the run"):
        bench.check_disjoint(["Intro 天気がとても良いので公園に散歩 outro"], eval_texts)
    with pytest.raises(ValueError, match="appears in"):
        bench.check_disjoint(["x " + eval_texts[1]], eval_texts)


# --------------------------------------------------------------------------------- rounds, rusage, engines


def test_engine_order_rotates_each_round(bench) -> None:  # type: ignore[no-untyped-def]
    order = ["autoawq", "llmcompressor", "ttsawq"]
    rounds = [bench.rotated(order, r) for r in range(4)]
    assert rounds == [order, ["llmcompressor", "ttsawq", "autoawq"], ["ttsawq", "autoawq", "llmcompressor"], order]
    assert [r[0] for r in rounds[:3]] == order  # every engine goes first once in len(order) rounds
    assert bench.rotated([], 3) == []


def test_median_over_rounds(bench) -> None:  # type: ignore[no-untyped-def]
    rounds = [{"wall_s": 10.0, "quantize_s": 7.0, "majflt": 3, "patch": {"calls": 1}, "ok": True, "engine": "x"},
              {"wall_s": 30.0, "quantize_s": 5.0, "majflt": 1, "patch": {"calls": 1}, "ok": True, "engine": "x"},
              {"wall_s": 20.0, "quantize_s": 9.0, "majflt": 2, "ok": False, "engine": "x"}]
    assert bench.median_summary(rounds) == {"wall_s": 20.0, "quantize_s": 7.0, "majflt": 2.0}
    assert bench.median_summary(rounds[:2])["wall_s"] == 20.0  # even count: mean of the middle two
    with pytest.raises(ValueError):
        bench.median_summary([])


def test_rusage_fields_of_a_real_child(bench) -> None:  # type: ignore[no-untyped-def]
    """A child that touches 64 MB: its rusage shows the memory, the page faults it took and its sys time."""
    proc = subprocess.Popen([sys.executable, "-c", "b = bytearray(64 * 2**20); b[::4096] = b'x' * len(b[::4096])"])
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    fields = bench.rusage_fields(usage)
    assert set(fields) == {"user_s", "sys_s", "cpu_s", "minflt_m", "majflt", "peak_rss_mb"}
    assert fields["peak_rss_mb"] >= 64
    assert fields["minflt_m"] >= 64 * 2**20 / 4096 / 1e6  # at least one fault per 4 KiB page touched
    assert fields["sys_s"] == usage.ru_stime and fields["majflt"] == usage.ru_majflt
    assert fields["cpu_s"] == pytest.approx(usage.ru_utime + usage.ru_stime)
    fake = SimpleNamespace(ru_utime=1.5, ru_stime=0.5, ru_minflt=2_500_000, ru_majflt=7, ru_maxrss=2048)
    assert bench.rusage_fields(fake) == {"user_s": 1.5, "sys_s": 0.5, "cpu_s": 2.0, "minflt_m": 2.5,
                                         "majflt": 7, "peak_rss_mb": 2.0}


def test_cpu_hog_burns_a_core_and_stops(bench) -> None:  # type: ignore[no-untyped-def]
    import time

    with bench.cpu_hog(False) as none:
        assert none is None
    with bench.cpu_hog(True) as hog:
        time.sleep(0.5)
        assert hog.poll() is None
        ticks = int(Path(f"/proc/{hog.pid}/stat").read_text().rsplit(")", 1)[1].split()[11])  # utime
        assert ticks > 0
    assert hog.poll() is not None


def test_parse_engines(bench) -> None:  # type: ignore[no-untyped-def]
    engines = bench.parse_engines("autoawq,llmcompressor,ttsawq,ttsawq:rtn", {"clip": False})
    assert [(e.name, e.child) for e in engines] == [("autoawq", "autoawq"), ("llmcompressor", "llmcompressor"),
                                                    ("ttsawq", "ttsawq"), ("ttsawq:rtn", "ttsawq")]
    assert engines[2].options == {"clip": False} and engines[3].options == {"clip": False, "method": "rtn"}
    assert engines[3].slug == "ttsawq-rtn" and "rtn" in engines[3].label
    assert [e.name for e in bench.parse_engines("autoawq", {}, autoawq_unpatched=True)] == ["autoawq",
                                                                                           "autoawq-unpatched"]
    for bad in ("gptq", "ttsawq,ttsawq", "ttsawq:", "ttsawq:a b"):
        with pytest.raises(ValueError):
            bench.parse_engines(bad, {})


@pytest.mark.parametrize("argv", [["--engines", "gptq"], ["--calib-sets", "D"], ["--calib-sets", "A,A"],
                                  ["--rounds", "0"], ["--ttsawq-args", "[1]"], ["--ttsawq-args", "{bad"],
                                  ["--eval-texts", "101"], ["--group-size", "100"],
                                  ["--shape", "talker", "--group-size", "96"], ["--shape", "big"]])
def test_bad_flags_are_one_usage_error(bench, argv: list[str], capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(bench, "_run", lambda args: pytest.fail(f"{argv} was accepted and would run the bench"))
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- metrics, table


def test_logit_metrics(bench) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(3)
    ref = [torch.randn(5, 11), torch.randn(3, 11)]
    same = bench.logit_metrics(ref, [r.clone() for r in ref])
    assert same["rel_err"] == 0 and abs(same["kl"]) < 1e-12 and same["top1"] == 1 and same["positions"] == 8
    noisy = bench.logit_metrics(ref, [r + 0.1 * torch.randn_like(r) for r in ref])
    assert 0 < noisy["rel_err"] < 0.2 and noisy["kl"] > 0


def test_markdown_table_marks_missing_cells(bench) -> None:  # type: ignore[no-untyped-def]
    table = bench.markdown_table([{"set": "B", "engine": "RTN", "rel_err": 0.5, "kl": 0.1, "top1": 0.9},
                                  {"set": "A", "engine": "x", "wall_s": 12.34, "sys_s": 1.25, "minflt_m": 20.5,
                                   "majflt": 0}])
    assert table.splitlines()[2] == "| B | RTN | - | - | - | - | - | - | - | 0.5000 | 0.1000 | 90.00% |"
    assert table.splitlines()[3] == "| A | x | 12.3 | - | - | 1.2 | 20.50 | 0 | - | - | - | - |"


def test_weight_files_skip_side_files(bench, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The evaluator reads the model's weights only: tts-awq's search_state.safetensors has other tensors."""
    import json

    for name in ("model.safetensors", "search_state.safetensors"):
        (tmp_path / name).write_bytes(b"")
    assert [f.name for f in bench.weight_files(tmp_path)] == ["model.safetensors"]
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
        "c": "model-00001-of-00002.safetensors"}}))
    assert [f.name for f in bench.weight_files(sharded)] == ["model-00001-of-00002.safetensors",
                                                             "model-00002-of-00002.safetensors"]


def test_header_says_which_openmp_policy_the_children_ran(bench) -> None:  # type: ignore[no-untyped-def]
    """Unset: tts-awq children set PASSIVE on import; an empty or unknown value is libgomp's default for every
    engine (how the busy-machine 'before' row is measured); an explicit policy applies to every engine."""
    assert "tts-awq children: PASSIVE" in bench.omp_policy_note(None)
    assert "OpenMP's default policy" in bench.omp_policy_note("")
    assert "OpenMP's default policy" in bench.omp_policy_note("spin")
    assert bench.omp_policy_note("passive") == "OMP_WAIT_POLICY=passive (every engine)"
    assert bench.omp_policy_note("ACTIVE") == "OMP_WAIT_POLICY=ACTIVE (every engine)"


def test_talker_width_model_has_the_talker_shapes(bench, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The timing shape: the talker's Linear widths, seeded (byte-identical when rebuilt), loadable by
    transformers, with a tokenizer every engine can use."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from tts_awq.testing.smollm2 import export_smollm2

    tok = export_smollm2(tmp_path / "smollm2-1L", 1)
    first = bench.make_talker_width(tmp_path / "t1", 1, tok)
    second = bench.make_talker_width(tmp_path / "t2", 1, tok)
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shapes = {k.removeprefix("model.layers.0."): tuple(v.shape) for k, v in a.items()}
    assert shapes["self_attn.q_proj.weight"] == (2048, 2048) and shapes["self_attn.k_proj.weight"] == (1024, 2048)
    assert shapes["self_attn.o_proj.weight"] == (2048, 2048) and shapes["mlp.gate_proj.weight"] == (6144, 2048)
    assert shapes["mlp.down_proj.weight"] == (2048, 6144) and "lm_head.weight" in a
    assert 0.015 < float(a["model.layers.0.mlp.up_proj.weight"].std()) < 0.025
    assert len(AutoTokenizer.from_pretrained(str(first))) == a["model.embed_tokens.weight"].shape[0]
    assert not (tmp_path / "t1.tmp").exists()


def _engines_report(bench, wall: dict, err: dict) -> tuple[list, dict]:  # type: ignore[no-untyped-def,type-arg]
    engines = bench.parse_engines("autoawq,llmcompressor,ttsawq,ttsawq:awq-gptq", {})
    rounds = {n: [{"wall_s": w, "quantize_s": w, "cpu_s": w, "output_sha256": "x"}] for n, w in wall.items()}
    args = SimpleNamespace(sets=["A"], n_samples=2, seq_len=4)
    ev = {"metrics": {f"A/{n}": {"rel_err": e, "kl": 0.1, "top1": 0.9} for n, e in err.items()}
          | {bench.RTN_LABEL: {"rel_err": 0.2}}, "eval": {}}
    prep = {"sets": {"A": {"source": "s"}}, "torch": "t", "transformers": "t"}
    import datetime

    runs = {("A", n): r for n, r in rounds.items()}
    args.__dict__.update(threads=2, rounds=1)
    report = bench.build_report(args, engines, prep, runs, ev, [], datetime.datetime(2026, 12, 5))
    return engines, report


def test_ratios_for_every_tts_awq_row(bench) -> None:  # type: ignore[no-untyped-def]
    wall = {"autoawq": 200.0, "llmcompressor": 80.0, "ttsawq": 40.0, "ttsawq:awq-gptq": 60.0}
    err = {"autoawq": 0.08, "llmcompressor": 0.09, "ttsawq": 0.088, "ttsawq:awq-gptq": 0.068}
    _, report = _engines_report(bench, wall, err)
    ratios = report["sets"]["A"]["ratios"]
    assert ratios == pytest.approx({"ttsawq_err_over_autoawq_err": 1.1, "ttsawq_wall_over_llmcompressor_wall": 0.5,
                                    "ttsawq:awq-gptq_err_over_autoawq_err": 0.85,
                                    "ttsawq:awq-gptq_wall_over_llmcompressor_wall": 0.75})
