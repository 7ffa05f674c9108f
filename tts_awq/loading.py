"""Load a tts-awq package as a working ``qwen_tts.Qwen3TTSModel`` whose talker linears are INT4 modules.

The model skeleton is built on the meta device (no dense talker weights are ever allocated), the talker's
Linear layers are swapped for :class:`AwqInt4Linear`, then every tensor is loaded strictly from the package and
the non-persistent RoPE buffers are recomputed and checked against ``1/theta^(2i/d)``.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tts_awq.checkpoint import TensorStore, detect_layout, resolve_source
from tts_awq.checkpoint.arch import head_dim
from tts_awq.checkpoint.layout import CODEC_DIR, TTS_KIND
from tts_awq.checkpoint.store import require_finite
from tts_awq.errors import UserError
from tts_awq.memory import component_bytes, format_bytes, release_free_memory
from tts_awq.offload import HostEmbedding
from tts_awq.provenance import read_provenance, verify_outputs
from tts_awq.quantize.kernels import KERNELS
from tts_awq.quantize.linear import AwqInt4Linear
from tts_awq.qwen_tts import default_dtype, qwen_tts_classes

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def _dtype(dtype: Any, device: str) -> torch.dtype:
    if dtype is None:
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise UserError(f"dtype {dtype!r}: expected one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def int4_linear_names(spec: Any, qconfig: dict[str, Any]) -> list[str]:
    """The decoder Linears stored as INT4: every one except those ``modules_to_not_convert`` names (matched as
    substrings, as transformers and vLLM match them), which a ``--keep-bf16`` package stores dense."""
    skip = [m for m in qconfig.get("modules_to_not_convert") or [] if isinstance(m, str) and m]
    return [n for i in range(spec.num_layers) for n in spec.linear_names(i) if not any(m in n for m in skip)]


def swap_int4_linears(model: nn.Module, prefix: str, quantized: list[str], group_size: int,
                      cached_dequant: bool) -> int:
    """Replace each named Linear (names relative to ``model``, after stripping ``prefix``) with AwqInt4Linear."""
    count = 0
    for full_name in quantized:
        name = full_name[len(prefix):] if prefix and full_name.startswith(prefix) else full_name
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child)
        if not isinstance(old, nn.Linear):
            raise TypeError(f"{full_name} is {type(old).__name__}, expected Linear")
        new = AwqInt4Linear(old.in_features, old.out_features, group_size, bias=old.bias is not None,
                            device="meta", cached_dequant=cached_dequant)
        setattr(parent, child, new)
        count += 1
    return count


def _reset_rope_buffers(model: nn.Module, device: str) -> int:
    """Recompute every rotary ``inv_freq`` (non-persistent, so never in the checkpoint) and check it."""
    count = 0
    for module in model.modules():
        if hasattr(module, "rope_init_fn") and hasattr(module, "inv_freq"):
            inv_freq, scaling = module.rope_init_fn(module.config, device)
            module.inv_freq = inv_freq
            module.original_inv_freq = inv_freq
            module.attention_scaling = scaling
            cfg = module.config
            dim = head_dim(cfg)
            expected = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
            if getattr(module, "rope_type", "default") == "default" and not torch.allclose(
                inv_freq.float(), expected, rtol=1e-6
            ):
                raise RuntimeError(f"RoPE inv_freq of {type(module).__name__} does not match 1/theta^(2i/d)")
            count += 1
    return count


def _check_awq_tensors(root: Any, store: TensorStore, model: nn.Module, quantized: list[str],
                       group_size: int) -> None:
    """Cheap invariants before anything is loaded: every INT4 triple exists with the shapes ``config.json``'s
    ``quantization_config`` implies, so an edited ``group_size`` or a swapped tensor is one line, not a
    RuntimeError from ``load_state_dict``."""
    config = root / "config.json"
    for name in quantized:
        module = model.get_submodule(name)
        triple = {suffix: f"{name}.{suffix}" for suffix in ("qweight", "qzeros", "scales")}
        absent = [key for key in triple.values() if key not in store]
        if absent:
            raise UserError(f"{root}: {absent[0]} is missing from the package; re-run quantize-talker")
        infos = {suffix: store.info(key) for suffix, key in triple.items()}
        groups = infos["scales"].shape[0] if len(infos["scales"].shape) == 2 else -1
        if module.in_features % group_size or (groups > 0 and module.in_features // groups != group_size):
            implied = module.in_features // groups if groups > 0 else "?"
            raise UserError(f"{config}: quantization_config.group_size is {group_size} but {name}.scales "
                            f"implies {implied}; restore config.json or re-run quantize-talker")
        want = {"qweight": ((module.in_features, module.out_features // 8), "I32"),
                "qzeros": ((module.in_features // group_size, module.out_features // 8), "I32"),
                "scales": ((module.in_features // group_size, module.out_features), "F16")}
        for suffix, (shape, dtype) in want.items():
            info = infos[suffix]
            if tuple(info.shape) != shape or info.dtype != dtype:
                raise UserError(f"{root / info.file}: {triple[suffix]} is {info.dtype}{list(info.shape)}, expected "
                                f"{dtype}{list(shape)} for AWQ GEMM at group size {group_size}; re-run quantize-talker")


def _load_int4_linears(model: nn.Module, store: TensorStore, quantized: list[str], kernel: str,
                       device: str) -> dict[str, int]:
    """Read each INT4 triple, move it to ``device`` and convert it to its kernel layout before the next one."""

    def fill(name: str, module: AwqInt4Linear) -> None:
        for suffix in ("qweight", "qzeros", "scales"):
            key = f"{name}.{suffix}"
            tensor = store.get(key)
            if suffix == "scales":
                require_finite(tensor, key, store.root / store.info(key).file)
            setattr(module, suffix, tensor.to(device))

    return prepare_int4_linears(model, kernel, fill)


def prepare_int4_linears(model: nn.Module, kernel: str,
                         fill: Callable[[str, AwqInt4Linear], None] | None = None) -> dict[str, int]:
    """Convert every AwqInt4Linear to its runtime kernel on its current device (``fill(name, module)`` first sets
    its AWQ buffers, one module at a time); log each fallback reason once."""
    from tqdm.auto import tqdm

    counts: dict[str, int] = {}
    reasons: dict[str, int] = {}
    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, AwqInt4Linear)]
    for name, module in tqdm(modules, desc=f"INT4 kernels ({kernel})", unit="linear", disable=len(modules) < 50):
        if fill is not None:
            fill(name, module)
        chosen = module.prepare(kernel)
        counts[chosen] = counts.get(chosen, 0) + 1
        if module.kernel_reason:
            reasons[module.kernel_reason] = reasons.get(module.kernel_reason, 0) + 1
    for reason, n in reasons.items():
        log.warning("kernel=auto: %d INT4 linear(s) use the dequant kernel: %s", n, reason)
    return counts


def _check_options(device: str, kernel: str, text_embedding_device: str | None) -> None:
    if kernel not in KERNELS:
        raise UserError(f"kernel={kernel!r}: expected one of {', '.join(KERNELS)}")
    for name, value in (("device", device), ("text_embedding_device", text_embedding_device)):
        if value is None:
            continue
        try:
            dev = torch.device(value)
        except RuntimeError as exc:
            raise UserError(f"{name}={value!r}: not a torch device (use 'cpu' or 'cuda[:N]')") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"{name}={value!r}: CUDA is not available on this machine; use 'cpu'")


def load_quantized(path: Any, device: str = "cpu", dtype: Any = None, kernel: str = "auto",
                   text_embedding_device: str | None = None, cached_dequant: bool = False,
                   verify: bool = False) -> Any:
    """Return a ``qwen_tts.Qwen3TTSModel`` for a tts-awq package directory (or Hub id).

    ``kernel``: see :class:`AwqInt4Linear`. ``text_embedding_device="cpu"`` keeps the talker's text embedding in
    host memory (only looked-up rows travel). ``verify=True`` first checks every file against
    ``provenance.json -> outputs_sha256`` (reads the whole package once); the cheap invariants (INT4 shapes vs
    ``quantization_config``, finite scales) are always checked. The returned object carries ``tts.tts_awq_kernels`` (kernel counts)
    and ``tts.tts_awq_bytes`` (``{device: {component: bytes}}``, see :func:`tts_awq.memory.component_bytes`).
    """
    from transformers import AutoProcessor


    _check_options(device, kernel, text_embedding_device)
    source = resolve_source(path, what="package")
    root = source.path
    layout = detect_layout(root)
    if layout.kind != TTS_KIND:
        raise UserError(f"{root}: not a Qwen3-TTS package (model_type {layout.config.get('model_type')!r})")
    qconfig = layout.config.get("quantization_config")
    if not isinstance(qconfig, dict) or qconfig.get("quant_method") != "awq" or qconfig.get("version") != "gemm":
        raise UserError(f"{root / 'config.json'}: no AWQ GEMM quantization_config; quantize it with quantize-talker")
    if qconfig.get("bits", 4) != 4 or not qconfig.get("zero_point", True):
        raise UserError(f"{root / 'config.json'}: quantization_config bits={qconfig.get('bits')} "
                        f"zero_point={qconfig.get('zero_point')}; only 4-bit zero-point AWQ GEMM is supported")
    layout.require_codec()
    if verify:
        prov = read_provenance(root)
        if prov is None or ("unreadable" in prov and len(prov) == 1):
            raise UserError(f"{root / 'provenance.json'}: missing or unreadable; verify=True needs the package's "
                            "provenance (or load with verify=False)")
        verify_outputs(root, prov)
    torch_dtype = _dtype(dtype, device)
    classes = qwen_tts_classes()
    config_dict = copy.deepcopy(layout.config)
    config_dict.pop("quantization_config")
    config = classes.Qwen3TTSConfig.from_dict(config_dict)
    config._attn_implementation = "sdpa"
    config.talker_config._attn_implementation = "sdpa"
    config.talker_config.code_predictor_config._attn_implementation = "sdpa"
    config.speaker_encoder_config._attn_implementation = "sdpa"

    spec = layout.decoder
    quantized = int4_linear_names(spec, qconfig)
    with torch.device("meta"):
        model = classes.Qwen3TTSForConditionalGeneration(config)
    group_size = qconfig.get("group_size")
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size <= 0 or group_size % 2:
        raise UserError(f"{root / 'config.json'}: quantization_config.group_size {group_size!r} is not a positive "
                        "even integer; restore config.json or re-run quantize-talker")
    store = TensorStore(root)
    _check_awq_tensors(root, store, model, quantized, group_size)
    store.require_finite((spec.layer_prefix, spec.final_norm))
    swap_int4_linears(model, "", quantized, group_size, cached_dequant)
    # Every tensor but the INT4 triples is memory-mapped copy-on-write, so what is never touched (most of the 0.6 GB
    # text embedding) is never resident. The triples are read and converted one linear at a time (below), so at most
    # one AWQ triple exists beside the converted kernel layouts.
    packed = {f"{n}.{suffix}" for n in quantized for suffix in ("qweight", "qzeros", "scales")}
    expected = set(model.state_dict().keys())
    missing = sorted(expected - set(store.keys()))
    unexpected = sorted(set(store.keys()) - expected)
    if missing or unexpected:
        raise UserError(f"{root}: package tensors do not match the model (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}); re-run quantize-talker")
    state = {name: store.get_mapped(name) for name in store.keys() if name not in packed}
    for name, tensor in state.items():
        if tensor.is_floating_point():
            state[name] = tensor.to(torch_dtype)
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys or set(result.missing_keys) != packed:
        raise RuntimeError(f"state dict mismatch: missing {sorted(set(result.missing_keys) - packed)[:3]}, "
                           f"unexpected {result.unexpected_keys[:3]}")
    del state
    _reset_rope_buffers(model, "cpu")
    if text_embedding_device is not None:
        talker_model = model.talker.model
        talker_model.text_embedding = HostEmbedding.from_embedding(talker_model.text_embedding, text_embedding_device)
    kernels_used = _load_int4_linears(model, store, quantized, kernel, device)
    still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if still_meta:
        raise RuntimeError(f"tensors left uninitialised after loading: {still_meta[:5]}")
    model.to(device)
    model.eval()
    release_free_memory()

    speech_tokenizer = classes.Qwen3TTSTokenizer.from_pretrained(
        str(root / CODEC_DIR), dtype=torch_dtype, device_map=device
    )
    model.load_speech_tokenizer(speech_tokenizer)
    generation_config = root / "generation_config.json"
    defaults = json.loads(generation_config.read_text(encoding="utf-8")) if generation_config.is_file() else {}
    model.load_generate_config(defaults)
    processor = AutoProcessor.from_pretrained(str(root), fix_mistral_regex=True)
    tts = classes.Qwen3TTSModel(model=model, processor=processor, generate_defaults=model.generate_config)
    tts.tts_awq_kernels = kernels_used
    tts.tts_awq_bytes = component_bytes(tts)
    log.info("INT4 kernels %s; resident %s", kernels_used, format_bytes(tts.tts_awq_bytes))
    return tts
