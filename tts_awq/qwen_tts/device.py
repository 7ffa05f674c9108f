"""Device and dtype rules shared by quantize-talker, validate-awq and load_quantized."""

from __future__ import annotations

import torch

from tts_awq.errors import UserError


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; an unusable or unknown device is a UserError."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"--device {device}: expected auto, cpu or cuda[:N]")
    return device


def default_dtype(device: str) -> torch.dtype:
    """bfloat16 on CUDA (the precision real checkpoints ship in), float32 on CPU (exact and deterministic; CPU
    bfloat16 matmuls are slower and round differently across machines)."""
    return torch.bfloat16 if device.startswith("cuda") else torch.float32
