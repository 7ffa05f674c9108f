"""The model card (README.md) of a pushed package, built with huggingface_hub's ModelCard / ModelCardData.

Everything comes from files already on disk (provenance.json, config.json, validation/report.json and, for the
license, the README.md front matter of the source and its ancestors); building a card never touches the network
(``RepoCard.validate()`` would POST to the Hub, so it is never called here).

Example::

    from tts_awq.publish.card import build_card
    from tts_awq.publish.package import load_package
    card = build_card(load_package(Path("darwin-3-awq")), repo_id="you/darwin-3-awq").card
    print(card.content)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard, ModelCardData

from tts_awq.checkpoint.arch import is_repo_id
from tts_awq.checkpoint.confine import confined
from tts_awq.checkpoint.layout import CODEC_DIR, TTS_KIND
from tts_awq.errors import UserError
from tts_awq.formatting import fmt_number, human_bytes, md_table
from tts_awq.publish.package import EXPORT_STAGE, REPORT_REL, VALIDATION_DIR, Package

#: ``library_name`` of a Qwen3-TTS package. The Hub no longer infers it from config.json, so it must name the
#: library that actually loads the files. Stock transformers cannot (Qwen3-TTS is not a transformers architecture),
#: and ``qwen-tts`` (the parent's library_name) only loads this AWQ checkpoint through transformers' AWQ path with
#: the deprecated autoawq on CUDA, which this tool has not verified; the Hub's "Use this model" snippet for qwen-tts
#: would therefore mislead. ``tts_awq.load_quantized`` is the loader the validation report was measured with, so
#: the card names "tts-awq" and keeps "qwen-tts" as a tag for discovery next to the parent model.
TTS_LIBRARY_NAME = "tts-awq"
#: A causal LM package is a standard AWQ GEMM checkpoint: transformers (+ autoawq / gptqmodel) loads it.
CAUSAL_LM_LIBRARY_NAME = "transformers"

#: Qwen3-TTS ``talker_config.codec_language_id`` keys -> ISO 639-1 codes (dialect entries are Chinese).
LANGUAGE_CODES = {
    "chinese": "zh", "english": "en", "german": "de", "italian": "it", "portuguese": "pt",
    "spanish": "es", "japanese": "ja", "korean": "ko", "french": "fr", "russian": "ru",
}

NOT_MEASURED = "not measured"
_HUB = "https://huggingface.co"


def _card_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    return "\n".join(md_table(header, rows))


@dataclass
class CardResult:
    card: ModelCard
    base_model: str | None
    license: str
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------- front matter
def front_matter(path: Path) -> dict[str, Any] | None:
    """The YAML front matter of a README.md as a dict, or None if absent/unparsable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    match = re.match(r"^\s*---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|$)", text, re.DOTALL)
    if not match:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


@dataclass
class LicenseInfo:
    license: str
    license_name: str | None = None
    license_link: str | None = None
    note: str | None = None


def _license_of(directory: Any) -> dict[str, Any] | None:
    if not directory:
        return None
    try:  # a README.md linking out of its directory is not read (nothing from outside a root reaches the card)
        readme = confined(Path(directory), "README.md")
    except UserError:
        return None
    meta = front_matter(readme)
    if not meta or not isinstance(meta.get("license"), str):
        return None
    return {k: meta.get(k) for k in ("license", "license_name", "license_link")}


def _ancestors(provenance: dict[str, Any]) -> list[dict[str, Any]]:
    """Every input entry below the package (breadth first), each with its own provenance embedded."""
    found: list[dict[str, Any]] = []
    queue = [provenance]
    while queue:
        prov = queue.pop(0)
        for entry in prov.get("inputs") or []:
            if isinstance(entry, dict):
                found.append(entry)
                if isinstance(entry.get("provenance"), dict):
                    queue.append(entry["provenance"])
    return found


def _label(entry: dict[str, Any]) -> str:
    return str(entry.get("repo_id") or entry.get("spec") or entry.get("path") or "?")


def find_license(package: Package) -> LicenseInfo:
    """License from the source's card (copied into the package, or at the source path), else its ancestors'."""
    source = package.source
    direct = _license_of(package.root) if (package.root / "README.md").is_file() else None
    direct = direct or _license_of(source.get("path"))
    if direct:
        return LicenseInfo(direct["license"], direct.get("license_name"), direct.get("license_link"))
    found: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for entry in _ancestors(package.provenance):
        if entry is source:
            continue
        lic = _license_of(entry.get("path"))
        if lic:
            found.setdefault(lic["license"], (lic, []))[1].append(_label(entry))
    if len(found) == 1:
        (lic, names), = found.values()
        return LicenseInfo(lic["license"], lic.get("license_name"), lic.get("license_link"),
                           note=f"The direct parent has no model card; the license is inherited from "
                                f"{', '.join(names)}, the models it was made from.")
    if found:
        listing = "; ".join(f"{', '.join(names)}: {name}" for name, (_, names) in sorted(found.items()))
        return LicenseInfo("other", note=f"The models this was made from carry different licenses ({listing}); "
                                         "all of them apply.")
    return LicenseInfo("other", note="No license was found in the source's model card; check the licenses of "
                                     "the models under *Sources and credits* before use.")


# --------------------------------------------------------------------------------------------------- formatting
def _fmt(value: Any) -> str:
    if value is None:
        return NOT_MEASURED
    if isinstance(value, bool | int | float):
        return fmt_number(value)
    if isinstance(value, str):
        return str(value).replace("|", "\\|").replace("\n", " ")
    return json.dumps(value, ensure_ascii=False)[:80].replace("|", "\\|")


# --------------------------------------------------------------------------------------------------- quality
def known_metrics() -> list[tuple[str, str, str]]:
    """(gate name, dotted metric path in report["metrics"], help) for every gate validate-awq knows, on or off."""
    try:
        from tts_awq.validate.gates import GATES
    except ImportError:  # validate-awq not installed: only the gates the report itself lists are shown
        return []
    return [(g.name, g.metric, g.help) for g in GATES]


def _lookup(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _limit(op: Any, threshold: Any) -> str:
    if threshold is None:
        return "off"
    if isinstance(threshold, (list, tuple)):
        return f"{op or 'in'} [{', '.join(_fmt(t) for t in threshold)}]"
    return f"{op or ''} {_fmt(threshold)}".strip()


def _gate_cells(gate: dict[str, Any]) -> tuple[str, str, str]:
    passed = gate.get("passed")
    verdict = "pass" if passed is True else ("**FAIL**" if passed is False else NOT_MEASURED)
    if gate.get("value") is None and passed is False:
        verdict = f"**FAIL** ({NOT_MEASURED})"
    return _fmt(gate.get("value")), _limit(gate.get("op"), gate.get("threshold")), verdict


def quality_section(package: Package) -> str:
    """Every gate of the report, then every other metric validate-awq knows ("not measured" when null/absent)."""
    report = package.report
    known = known_metrics()
    lines = ["## Quality", ""]
    header = ("metric", "value", "gate", "result", "what it measures")
    if report is None:
        reason = package.validation_problem or "no validation report"
        lines += [f"No trusted validation report ({reason}); every metric is {NOT_MEASURED}.", ""]
        if known:
            lines.append(_card_table(header, [(f"`{name}`", NOT_MEASURED, "", "", _fmt(help_text))
                                         for name, _, help_text in known]))
        return "\n".join(lines)
    gates = {str(k): v for k, v in (report.get("gates") or {}).items() if isinstance(v, dict)}
    metrics = report.get("metrics") if isinstance(report.get("metrics"), dict) else {}
    verdict = "**passed**" if report.get("passed") is True else "**failed**"
    lines += [f"Measured by `validate-awq` (package loaded with `tts_awq.load_quantized`) against the unquantized "
              f"parent; overall {verdict}. Full report: [{VALIDATION_DIR}/report.md]({VALIDATION_DIR}/report.md), "
              f"[{REPORT_REL}]({REPORT_REL}).", ""]
    helps = {name: help_text for name, _, help_text in known}
    rows = [(f"`{name}`", *_gate_cells(gate), _fmt(gate.get("help") or helps.get(name, "")))
            for name, gate in gates.items()]
    for name, metric, help_text in known:
        if name not in gates:
            rows.append((f"`{name}`", _fmt(_lookup(metrics, metric)), "off", "", _fmt(help_text)))
    if rows:
        lines.append(_card_table(header, rows))
    failed = report.get("failed_gates") or []
    if failed:
        lines += ["", f"Failed gates: {', '.join(f'`{g}`' for g in failed)}."]
    plots = [rel for rel in package.files if rel.startswith(f"{VALIDATION_DIR}/") and rel.lower().endswith(".png")]
    if plots:
        lines += ["", "### Plots", ""]
        lines += [f"![{Path(rel).stem}]({rel})" for rel in plots]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- provenance
def _input_text(entry: dict[str, Any]) -> str:
    repo_id = entry.get("repo_id")
    if repo_id:
        rev = entry.get("revision")
        return f"[{repo_id}]({_HUB}/{repo_id})" + (f" @ `{str(rev)[:12]}`" if rev else "")
    return f"`{entry.get('spec') or entry.get('path')}` (local)"


def _params_text(params: dict[str, Any], limit: int = 8) -> str:
    simple = [(k, v) for k, v in params.items() if isinstance(v, (int, float, str, bool)) and k not in {"out", "src"}]
    return ", ".join(f"{k}={v}" for k, v in simple[:limit])


def lineage(provenance: dict[str, Any], depth: int = 0) -> list[str]:
    """A nested markdown list: each stage and its inputs, down the embedded provenance chain."""
    lines = []
    for entry in provenance.get("inputs") or []:
        if not isinstance(entry, dict):
            continue
        parent = entry.get("provenance") if isinstance(entry.get("provenance"), dict) else None
        made = ""
        if parent and parent.get("stage"):
            tool = parent.get("tool") or {}
            params = _params_text(parent.get("parameters") or {}, limit=5)
            made = f", made by `{parent['stage']}` ({tool.get('name', '?')} {tool.get('version', '')})".rstrip()
            made += f" with {params}" if params else ""
        lines.append(f"{'  ' * depth}- {entry.get('role', 'input')}: {_input_text(entry)}{made}")
        if parent:
            lines += lineage(parent, depth + 1)
    return lines


def made_section(package: Package) -> str:
    prov = package.provenance
    params = prov.get("parameters") or {}
    awq = params.get("awq") or {}
    qcfg = package.config.get("quantization_config") or {}
    calib = prov.get("calibration") or {}
    modules = prov.get("modules") or {}
    tool = prov.get("tool") or {}
    libs = prov.get("libraries") or {}
    timings = prov.get("timings_s") or {}
    source = package.source
    weights = sum(size for rel, size in package.sizes.items() if rel.endswith(".safetensors"))
    rows = [
        ("tool", f"{tool.get('name', 'tts-awq')} {tool.get('version', '?')}"
                 + (f" (git `{tool['git_commit']}`)" if tool.get("git_commit") else "")),
        ("stage", f"`{prov.get('stage')}`"),
        ("source (direct parent)", _input_text(source) if source else NOT_MEASURED),
        ("method", str(awq.get("method") or params.get("method") or "awq")),
        ("bits / group size", f"{qcfg.get('bits', params.get('w_bit'))} / {qcfg.get('group_size', params.get('group_size'))}"),
        ("zero point / packing", f"{qcfg.get('zero_point')} / {qcfg.get('version')}"),
        ("AWQ search", _params_text({k: v for k, v in awq.items() if k not in {'bits', 'group_size', 'method'}}) or "-"),
        ("seed", _fmt(params.get("seed", calib.get("seed")))),
        ("calibration set", f"`{calib.get('name', '?')}` (sha256 `{str(calib.get('sha256', ''))[:16]}`)"),
        ("calibration size", f"{_fmt(calib.get('n_samples'))} sequences, {_fmt(calib.get('n_tokens'))} tokens, "
                             f"seq_len ≤ {_fmt(calib.get('seq_len', params.get('seq_len')))}"),
        ("calibration mode", _fmt(calib.get("mode"))),
        ("quantized modules", _fmt(modules.get("quantized_count"))),
        ("modules kept in original precision", _fmt(modules.get("kept_count"))),
        ("decoder linears kept in BF16", _kept_text(prov.get("kept_bf16") or {})),
        ("device", _fmt(prov.get("device"))),
        ("libraries", ", ".join(f"{k} {v}" for k, v in libs.items() if v) or NOT_MEASURED),
        ("time", f"{sum(v for v in timings.values() if isinstance(v, (int, float))):.0f} s" if timings else NOT_MEASURED),
        ("package size", f"{human_bytes(package.total_bytes, si=True)} ({human_bytes(weights, si=True)} safetensors)"),
    ]
    lines = ["## How it was made", "", _card_table(("parameter", "value"), [(f"**{k}**", v) for k, v in rows]), ""]
    chain = lineage(prov)
    if chain:
        lines += ["Lineage (from `provenance.json`, which also holds the sha256 of every input and output file):", "",
                  *chain, ""]
    lines += ["`quantization_config` (config.json):", "", "```json", json.dumps(qcfg, indent=2), "```"]
    return "\n".join(lines)


def _kept_text(kept: dict[str, Any]) -> str:
    """``--keep-bf16`` / ``--keep-bf16-budget`` choices of a mixed package, with their size cost."""
    names = kept.get("names") or []
    if not names:
        return "none (every decoder-layer linear is INT4)"
    shown = ", ".join(f"`{n}`" for n in names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    extra = kept.get("extra_bytes")
    return f"{len(names)}: {shown}" + (f" (+{human_bytes(extra, si=True)} over all-INT4)" if extra else "")


# --------------------------------------------------------------------------------------------------- loading
def load_section(repo_id: str, tts: bool, version: str) -> str:
    if not tts:
        return "\n".join([
            "## How to load", "",
            "A standard AWQ GEMM checkpoint (`quant_method: awq`, `version: gemm`): transformers loads it with "
            "`autoawq` (transformers 4.x) or `gptqmodel` (transformers 5.x) installed.", "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}", device_map="auto")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
            "```",
        ])
    return "\n".join([
        "## How to load", "",
        f"With tts-awq (the loader the quality numbers above were measured with; `pip install tts-awq=={version}` "
        "or install it from source, plus `qwen-tts==0.1.1`):", "",
        "```python",
        "import tts_awq",
        f'tts = tts_awq.load_quantized("{repo_id}", device="cuda", dtype="bfloat16")  # or device="cpu"',
        'wavs, sr = tts.generate_voice_clone(text="Hello.", language="English",',
        '                                    ref_audio="voice.wav", x_vector_only_mode=True)',
        "```", "",
        "It returns a `qwen_tts.Qwen3TTSModel` whose talker linears are INT4 modules (no dense talker weights are "
        "materialized).", "",
        "Plain `from_pretrained` (not verified by tts-awq):", "",
        "```python",
        "# pip install qwen-tts==0.1.1 autoawq   (transformers 4.57.3, CUDA GPU)",
        "import torch",
        "from qwen_tts import Qwen3TTSModel",
        f'tts = Qwen3TTSModel.from_pretrained("{repo_id}", device_map="cuda:0", dtype=torch.float16)',
        "```", "",
        "Caveats of that route: transformers reads `quantization_config` and needs `autoawq`, which is deprecated "
        "(last release 0.2.9); it uses AutoAWQ's GEMM kernels if `autoawq-kernels` is installed, else Triton, else a "
        "slow naive dequantize + matmul; without CUDA/XPU it switches to the IPEX backend and needs "
        "intel-extension-for-pytorch; on GPU it casts a requested bf16 dtype to fp16 for the whole model, including "
        "the parts kept in 16-bit; transformers 5.x routes AWQ through `gptqmodel` instead, and `qwen-tts` 0.1.1 pins "
        "transformers 4.57.3.",
    ])


# --------------------------------------------------------------------------------------------------- credits
def credits_section(package: Package, lic: LicenseInfo) -> str:
    entries = _ancestors(package.provenance)
    seen: set[str] = set()
    lines = ["## Sources and credits", ""]
    for entry in entries:
        label = _label(entry)
        if label in seen:
            continue
        seen.add(label)
        lines.append(f"- {entry.get('role', 'input')}: {_input_text(entry)}")
    stages = {str(p.get("stage")) for p in [package.provenance, *[e.get("provenance") or {} for e in entries]]}
    if "blend" in stages:
        lines.append(f"- FFN blend method: Darwin-TTS ([FINAL-Bench/Darwin-TTS-1.7B-Cross]"
                     f"({_HUB}/FINAL-Bench/Darwin-TTS-1.7B-Cross)).")
    if package.config.get("talker_config"):
        lines.append("- Qwen3-TTS by the Qwen team (Alibaba), [QwenLM/Qwen3-TTS](https://github.com/QwenLM/Qwen3-TTS).")
    lines += [
        "- AWQ: Lin et al., *AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration*, "
        "MLSys 2024 ([arXiv:2306.00978](https://arxiv.org/abs/2306.00978)); the GEMM packing matches AutoAWQ's.",
        "- Quantized and packaged with tts-awq; `provenance.json` records every input, parameter and file hash.",
        "",
    ]
    text = f"License: `{lic.license}`" + (f" ({lic.license_name})" if lic.license_name else "")
    text += f", {lic.license_link}" if lic.license_link else ""
    lines.append(f"{text}. {lic.note}" if lic.note else f"{text}, taken from the source's model card.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- card
def languages(config: dict[str, Any]) -> list[str]:
    ids = (config.get("talker_config") or {}).get("codec_language_id") or {}
    codes = []
    for name in ids:
        key = str(name).lower()
        code = LANGUAGE_CODES.get(key) or ("zh" if "dialect" in key else None)
        if code and code not in codes:
            codes.append(code)
    return codes


def unvalidated_banner(reason: str) -> str:
    return "\n".join([
        "> [!WARNING]",
        f"> **Not validated.** This package was pushed with `--allow-unvalidated`: {reason}.",
        "> INT4 TTS talkers can fail in ways text metrics hide (runaway generation that never stops, garbled or",
        "> silent audio, a different voice). Listen to it and run `validate-awq` before relying on it.",
    ])


def build_card(package: Package, repo_id: str, base_model: str | None = None) -> CardResult:
    """The README.md card for ``package`` pushed to ``repo_id``.

    ``base_model`` overrides the direct parent; by default it is the source's Hub repo id. A local parent has no
    valid Hub id (the Hub rejects a path in ``base_model``), so the field is left out with a warning.
    """
    if package.provenance.get("stage") == EXPORT_STAGE:
        return build_export_card(package, repo_id, base_model)
    warnings: list[str] = []
    prov = package.provenance
    source = package.source
    tts = bool(package.config.get("talker_config")) or (prov.get("layout") or {}).get("kind") == TTS_KIND
    if base_model is None:
        base_model = source.get("repo_id") if is_repo_id(source.get("repo_id")) else None
        if base_model is None:
            warnings.append(f"the source {source.get('spec') or source.get('path')!r} is a local directory, so the card "
                            "has no base_model (a path is not a Hub id); push that parent first and pass "
                            "--base-model OWNER/NAME to link it")
    lic = find_license(package)
    if lic.license == "other":
        warnings.append(f"license: other ({lic.note})")
    qcfg = package.config.get("quantization_config") or {}
    bits = qcfg.get("bits", 4)
    method = str(((prov.get("parameters") or {}).get("awq") or {}).get("method") or "awq")
    tags = ["awq", f"int{bits}", f"{bits}-bit", "quantized", "tts-awq"]
    if method != "awq":
        tags.append(method)
    if tts:
        tags += ["qwen3-tts", "qwen-tts", "text-to-speech", "tts", "voice-cloning"]
    if not package.validated:
        tags.append("unvalidated")
    data_kwargs: dict[str, Any] = {}
    if base_model:
        data_kwargs.update(base_model=base_model, base_model_relation="quantized")
    data = ModelCardData(
        library_name=TTS_LIBRARY_NAME if tts else CAUSAL_LM_LIBRARY_NAME,
        pipeline_tag="text-to-speech" if tts else "text-generation",
        tags=tags,
        language=languages(package.config) or None,
        license=lic.license,
        license_name=lic.license_name,
        license_link=lic.license_link,
        **data_kwargs,
    )
    name = repo_id.split("/")[-1]
    scope = "talker" if tts else "decoder"
    modules = prov.get("modules") or {}
    intro = (f"AWQ INT{bits} quantization (group size {qcfg.get('group_size')}, zero point, GEMM packing) of the "
             f"{scope} of {f'[{base_model}]({_HUB}/{base_model})' if base_model else _input_text(source)}, made with "
             f"tts-awq. Only the {scope}'s decoder-layer linears are INT{bits} "
             f"({_fmt(modules.get('quantized_count'))} modules); everything else "
             f"({_fmt(modules.get('kept_count'))} modules")
    not_convert = qcfg.get("modules_to_not_convert") or modules.get("modules_to_not_convert")
    intro += f", `modules_to_not_convert`: {', '.join(f'`{m}`' for m in not_convert)}" if not_convert else ""
    intro += ") keeps its original precision"
    has_codec = any(rel.startswith(f"{CODEC_DIR}/") for rel in package.files)
    intro += f", and the speech tokenizer (`{CODEC_DIR}/`) is copied unchanged." if tts and has_codec else "."
    parts = [f"# {name}", ""]
    if not package.validated:
        parts += [unvalidated_banner(package.validation_problem or "no passing validation report"), ""]
    parts += [intro, "", quality_section(package), "", made_section(package), "",
              load_section(repo_id, tts, str((prov.get("tool") or {}).get("version", ""))), "",
              credits_section(package, lic), "",
              "## Files", "",
              "The repository mirrors the package byte for byte, except `README.md`, which is this card. "
              "`provenance.json` lists the sha256 of every file quantize-talker wrote (`outputs_sha256`) and of "
              f"`{REPORT_REL}` (`validation.report_sha256`); the plots next to the report are not hashed.", ""]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(parts)
    return CardResult(card=ModelCard(content), base_model=base_model, license=lic.license, warnings=warnings)


# --------------------------------------------------------------------------------------------------- export cards
#: ``tts-awq export`` format -> (Hub tags, how to run it). library_name comes from the export's provenance.
EXPORT_USAGE: dict[str, tuple[list[str], str]] = {
    "mlx": (["mlx", "mlx-audio"], "\n".join([
        "With [mlx-audio](https://github.com/Blaizzy/mlx-audio) (Apple silicon; also Linux CPU with `mlx[cpu]`), "
        "tested by tts-awq with mlx 0.32.4 and mlx-audio 0.6.2 on CPU:", "",
        "```python",
        "# pip install \"mlx-audio==0.6.2\"",
        "from mlx_audio.tts.utils import load_model",
        'model = load_model("{repo}")',
        'for result in model.generate(text="Hello.", ref_audio="voice.wav", ref_text="What voice.wav says."):',
        "    audio = result.audio  # 24 kHz samples (mx.array)",
        "```"])),
    "gguf": (["gguf", "llama.cpp"], "\n".join([
        "With llama.cpp's Qwen3-TTS support (mtmd). This repository holds the talker GGUF (arch `qwen3tts`, its "
        "INT4 linears as `Q4_1` built from the AWQ integers). llama.cpp also needs its mmproj GGUF (code predictor, "
        "speaker encoder): they are dense in the parent package, so llama.cpp's own converter makes it from there:", "",
        "```bash",
        "python convert_hf_to_gguf.py PARENT_PACKAGE_DIR --mmproj --outfile mmproj.gguf",
        "```", "",
        "then run both with llama.cpp's Qwen3-TTS tool as its documentation describes. tts-awq checked the talker "
        "file with the `gguf` Python reader and its names and metadata against llama.cpp's converter; it did not "
        "run llama.cpp itself."])),
    "compressed-tensors": (["compressed-tensors", "vllm"], "\n".join([
        "With [vLLM-Omni](https://github.com/vllm-project/vllm-omni) (vLLM's native `pack-quantized` W4A16 format; "
        "the talker runs through vLLM's compressed-tensors WNA16 kernels, the code predictor stays dense):", "",
        "```bash",
        "vllm serve {repo} --omni --dtype float16   # float16 keeps AWQ's float16 scales exact",
        "```", "",
        "Not run by tts-awq (no GPU in its tests); compressed-tensors' own decompressor reproduces the package's "
        "weights exactly in its tests."])),
}


def _parent_source(provenance: dict[str, Any]) -> dict[str, Any]:
    """The parent package's own source entry (the model it was quantized from), via the embedded provenance."""
    for entry in provenance.get("inputs") or []:
        parent = entry.get("provenance") if isinstance(entry, dict) else None
        for sub in (parent or {}).get("inputs") or []:
            if isinstance(sub, dict) and sub.get("role") == "source":
                return sub
    return {}


def build_export_card(package: Package, repo_id: str, base_model: str | None = None) -> CardResult:
    """The card of a ``tts-awq export`` output: library_name and usage of its runtime, base_model the model the
    parent package was quantized from, and the parent's validation summary."""
    warnings: list[str] = []
    prov = package.provenance
    export = prov.get("export") or {}
    fmt = str(export.get("format"))
    tags, usage = EXPORT_USAGE.get(fmt, ([], ""))
    origin = _parent_source(prov)
    if base_model is None:
        base_model = origin.get("repo_id") if is_repo_id(origin.get("repo_id")) else None
        if base_model is None:
            warnings.append(f"the model the parent package was quantized from ({origin.get('spec') or '?'}) is local, "
                            "so the card has no base_model; pass --base-model OWNER/NAME to link it")
    lic = find_license(package)
    if lic.license == "other":
        warnings.append(f"license: other ({lic.note})")
    data_kwargs: dict[str, Any] = {"base_model": base_model, "base_model_relation": "quantized"} if base_model else {}
    all_tags = ["awq", "int4", "4-bit", "quantized", "tts-awq", *tags, "qwen3-tts", "text-to-speech", "tts"]
    if not package.validated:
        all_tags.append("unvalidated")
    data = ModelCardData(library_name=str(export.get("library_name")), pipeline_tag="text-to-speech", tags=all_tags,
                         language=languages(package.config) or None, license=lic.license,
                         license_name=lic.license_name, license_link=lic.license_link, **data_kwargs)
    check = export.get("check") or {}
    parent = _label((prov.get("inputs") or [{}])[0])
    link = f"[{base_model}]({_HUB}/{base_model})" if base_model else _input_text(origin) if origin else "its source"
    intro = (f"The tts-awq AWQ INT4 package `{parent}` (talker of {link}) exported for {export.get('runtime')} "
             f"(`tts-awq export --to {fmt}`). The INT4 integers are the ones `validate-awq` measured: before it was "
             f"written, every one of the {_fmt(check.get('linears'))} INT4 linears was read back and dequantized "
             f"independently and compared with the package's dequantized weight: max |Δw| = "
             f"{_fmt(check.get('max_abs_dw'))} ({_fmt(check.get('rule'))}).")
    kept = export.get("dense_decoder_linears") or []
    if kept:
        intro += f" {len(kept)} decoder linears the package keeps dense are dense here too."
    parts = [f"# {repo_id.split('/')[-1]}", ""]
    if not package.validated:
        parts += [unvalidated_banner(package.validation_problem or "the parent package has no passing validation"), ""]
    quality = quality_section(package).replace("## Quality", "## Quality (of the parent package)", 1)
    parts += [intro, "", quality, "", "## How to run", "", usage.format(repo=repo_id), "",
              credits_section(package, lic), "", "## Files", "",
              "`provenance.json` records the parent package (the sha256 of every file and its own provenance), the "
              f"export's check and the sha256 of every file here; `{REPORT_REL}` is the parent's validation report.", ""]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(parts)
    return CardResult(card=ModelCard(content), base_model=base_model, license=lic.license, warnings=warnings)
