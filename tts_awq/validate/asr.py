"""WER/CER by ASR round trip, only with a local ASR model the user passes (``--asr-model DIR``).

Supported: a transformers speech-recognition checkpoint (e.g. a Whisper directory with config.json) or a
faster-whisper (CTranslate2) directory when ``faster_whisper`` is installed. Nothing is downloaded. Without
``--asr-model`` the report says "not measured".
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tts_awq.errors import UserError

NOT_MEASURED = "not measured (pass --asr-model DIR with a local ASR model)"
Transcriber = Callable[[np.ndarray, int], str]


def load_asr(path: str | Path, device: str = "cpu") -> tuple[Transcriber, str]:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: --asr-model directory not found; pass a local Whisper/faster-whisper directory")
    if (root / "config.json").is_file():
        try:
            from transformers import pipeline

            asr = pipeline("automatic-speech-recognition", model=str(root), device=device)
        except Exception as exc:
            reason = " ".join(str(exc).split())[:160]
            raise UserError(f"{root}: --asr-model could not be loaded as a transformers ASR model ({reason})") from exc

        def transformers_asr(wav: np.ndarray, sr: int) -> str:
            out = asr({"raw": np.asarray(wav, dtype=np.float32), "sampling_rate": sr})
            return str(out.get("text", "")) if isinstance(out, dict) else str(out)

        return transformers_asr, f"transformers pipeline: {root.name}"
    if (root / "model.bin").is_file():
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise UserError(f"{root}: looks like a faster-whisper model but faster_whisper is not installed; "
                            "pip install faster-whisper") from exc
        model = WhisperModel(str(root), device="cuda" if device.startswith("cuda") else "cpu")

        def faster_asr(wav: np.ndarray, sr: int) -> str:
            from tts_awq.validate.audio import resample

            segments, _ = model.transcribe(resample(wav, sr, 16000), beam_size=1)
            return " ".join(s.text for s in segments)

        return faster_asr, f"faster-whisper: {root.name}"
    raise UserError(f"{root}: --asr-model has neither config.json (transformers) nor model.bin (faster-whisper)")


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(text.split())


def _edits(ref: list[str], hyp: list[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def error_counts(reference_text: str, hypothesis: str) -> dict[str, int]:
    ref, hyp = normalize(reference_text), normalize(hypothesis)
    ref_chars, hyp_chars = list(ref.replace(" ", "")), list(hyp.replace(" ", ""))
    return {"word_edits": _edits(ref.split(), hyp.split()), "words": len(ref.split()),
            "char_edits": _edits(ref_chars, hyp_chars), "chars": len(ref_chars)}


def summarize(entries: list[dict[str, Any]], name: str | None) -> dict[str, Any]:
    if name is None:
        return {"measured": False, "note": NOT_MEASURED, "wer_increase": None, "cer_increase": None}

    def rate(side: str, unit: str) -> float | None:
        edits = sum(e[f"{side}_{unit}_edits"] for e in entries)
        total = sum(e[f"{side}_{unit}s"] for e in entries)
        return edits / total if total else None

    out: dict[str, Any] = {"measured": True, "model": name}
    for unit, label in (("word", "wer"), ("char", "cer")):
        ref, pkg = rate("reference", unit), rate("package", unit)
        out[f"{label}_reference"] = ref
        out[f"{label}_package"] = pkg
        out[f"{label}_increase"] = None if ref is None or pkg is None else pkg - ref
    return out
