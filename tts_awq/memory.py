"""Memory accounting: bytes held by a loaded Qwen3-TTS model per component and device (what decides whether it
fits a GPU), and this process's resident set size."""

from __future__ import annotations

import os
import resource
import sys
from typing import Any

import torch
from torch import nn

from tts_awq.offload import HostEmbedding
from tts_awq.quantize.linear import AwqInt4Linear

#: Component names in report order; the first prefix that matches a tensor's name wins.
COMPONENTS = (
    ("text_embedding", "talker.model.text_embedding."),
    ("code_predictor", "talker.code_predictor."),
    ("talker_layers_other", "talker.model.layers."),  # dense tensors of the decoder layers (norms; BF16 linears)
    ("talker_other", "talker."),
    ("speaker_encoder", "speaker_encoder."),
    ("other", ""),
)


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters, buffers (persistent or not) and host-side tables, by full name, each storage once."""
    out: dict[str, torch.Tensor] = {}
    for name, sub in module.named_modules():
        prefix = f"{name}." if name else ""
        for key, tensor in [*sub._parameters.items(), *sub._buffers.items()]:
            if tensor is not None:
                out[prefix + key] = tensor
        if isinstance(sub, HostEmbedding):
            out[prefix + "host_weight"] = sub.host_weight
    return out


def component_bytes(tts: Any) -> dict[str, dict[str, int]]:
    """``{device: {component: bytes}}`` for a ``Qwen3TTSModel`` (INT4 talker linears reported on their own)."""
    model = tts.model
    int4 = {f"{name}." for name, sub in model.named_modules() if isinstance(sub, AwqInt4Linear)}
    report: dict[str, dict[str, int]] = {}
    seen: set[int] = set()

    def add(device: torch.device, component: str, tensor: torch.Tensor) -> None:
        key = tensor.untyped_storage().data_ptr() if tensor.device.type != "meta" else id(tensor)
        if key in seen:
            return
        seen.add(key)
        per_device = report.setdefault(str(device), {})
        per_device[component] = per_device.get(component, 0) + tensor.untyped_storage().nbytes()

    for name, tensor in _tensors(model).items():
        if any(name.startswith(p) for p in int4):
            component = "talker_int4_linears"
        else:
            component = next(c for c, prefix in COMPONENTS if name.startswith(prefix))
        add(tensor.device, component, tensor)
    codec = getattr(getattr(model, "speech_tokenizer", None), "model", None)
    if isinstance(codec, nn.Module):
        for tensor in _tensors(codec).values():
            add(tensor.device, "codec", tensor)
    return report


def format_bytes(report: dict[str, dict[str, int]]) -> str:
    parts = []
    for device, components in report.items():
        total = sum(components.values())
        inner = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sorted(components.items()))
        parts.append(f"{device}: {total / 2**20:.1f} MiB ({inner})")
    return "; ".join(parts)


def current_rss_bytes() -> int:
    """Resident set size now (Linux ``/proc``), else the peak so far."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS. glibc keeps the pages of many mid-sized frees (a dropped model, the
    converted AWQ triples), so without this RSS would report memory nobody holds."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
