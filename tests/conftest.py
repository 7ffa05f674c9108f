"""Shared fixtures: tiny random checkpoints built once per test session with the real qwen-tts classes."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def qwen_tts() -> types.SimpleNamespace:
    """``qwen_tts_classes()``: Qwen3TTSModel, Qwen3TTSConfig, ... (imported with the torchaudio stub)."""
    from tts_awq.qwen_tts import qwen_tts_classes

    return qwen_tts_classes()


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"tiny-tts-base": ..., "tiny-qwen3-lm": ..., "tiny-darwin": ...}`` (seed 0, alpha 0.03). Read-only: copy
    a directory before modifying it."""
    from tts_awq.testing.tiny import build_tiny_darwin

    return build_tiny_darwin(tmp_path_factory.mktemp("tiny"), seed=0, alpha=0.03)


@pytest.fixture(scope="module")
def one_thread() -> Any:
    """Tiny tensors: one intra-op thread is faster and immune to OpenMP stalls on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_stops(tiny_root: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Darwin blend with its codec head's EOS row boosted (x3) so that it stops by itself within a few
    dozen frames, like a real talker (teacher and speak tests). Read-only."""
    import shutil

    from tts_awq.testing.damage import edit_weights, scale_eos_row

    ref = shutil.copytree(tiny_root["tiny-darwin"], tmp_path_factory.mktemp("stops") / "tiny-darwin-stops")
    edit_weights(ref, scale_eos_row(3.0))
    return ref
