"""Calibration / evaluation prompts and reference voice clips.

``load_prompts()`` reads the built-in ``calib_data/{split}.jsonl`` (written for this project, see
``calib_data/README.md``), a user JSONL/JSON file, or a Hugging Face dataset id, and returns the prompts in file
order together with a sha256 of the content for provenance:

* local file: sha256 of the file bytes;
* Hub dataset: sha256 of the canonical JSON dump (sorted keys, UTF-8, compact separators) of the rows, restricted
  to the columns used here (``id``, ``lang``, ``language``, ``text``, ``kind``).

Local files never touch the network; Hub ids honour ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``, read when
``load_prompts`` is called.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tts_awq.errors import UserError


def _calib_data_dir() -> Path:
    """``tts_awq/calib_data`` inside an installed wheel (package data), else the repository's ``calib_data/``."""
    here = Path(__file__).resolve().parent
    installed = here / "calib_data"
    return installed if (installed / "calib.jsonl").is_file() else here.parent / "calib_data"


CALIB_DATA_DIR = _calib_data_dir()
VOICES_DIR = CALIB_DATA_DIR / "voices"

#: Language names accepted by the Qwen3-TTS talker's ``codec_language_id`` (plus ``auto``).
LANGUAGES: tuple[str, ...] = (
    "korean", "english", "japanese", "chinese", "german", "french", "russian", "portuguese", "spanish", "italian",
)
_LANG_ALIASES = {
    "ko": "korean", "en": "english", "ja": "japanese", "zh": "chinese", "de": "german",
    "fr": "french", "ru": "russian", "pt": "portuguese", "es": "spanish", "it": "italian",
}
_COLUMNS = ("id", "lang", "language", "text", "kind")
_LOCAL_SUFFIXES = (".jsonl", ".json")
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class Prompt:
    id: str
    lang: str
    text: str
    kind: str


@dataclass(frozen=True)
class VoiceClip:
    name: str
    path: Path
    lang: str
    ref_text: str


def normalize_lang(value: object) -> str:
    """``"English"``/``"en"`` -> ``"english"``; empty or missing -> ``"auto"``. Unknown names pass through lower-cased."""
    if value is None:
        return "auto"
    lang = str(value).strip().lower()
    if not lang:
        return "auto"
    return _LANG_ALIASES.get(lang, lang)


# ----------------------------------------------------------------------------------------------------- prompts


def load_prompts(source: str | Path | None = None, split: str = "calib") -> tuple[list[Prompt], str]:
    """Load prompts in file order and return ``(prompts, sha256)``.

    ``source`` is ``None`` (built-in ``calib_data/{split}.jsonl``), a local ``.jsonl``/``.json`` file, or a
    Hugging Face dataset id (loaded with ``split`` if the dataset has it, else ``train``).
    """
    if source is None:
        path = CALIB_DATA_DIR / f"{split}.jsonl"
        if not path.is_file():
            raise UserError(f"{path}: built-in split '{split}' not found; use split='calib' or split='eval'")
        return _load_local(path)

    if isinstance(source, Path) or _looks_like_path(str(source)):
        path = Path(source).expanduser()
        if path.is_dir():
            candidate = path / f"{split}.jsonl"
            if candidate.is_file():
                return _load_local(candidate)
            raise UserError(f"{path} is a folder without {split}.jsonl; pass a .jsonl file of prompts instead")
        if not path.is_file():
            raise UserError(f"{path}: prompt file not found; check the path or pass a Hugging Face dataset id")
        if path.suffix.lower() not in _LOCAL_SUFFIXES:
            raise UserError(f"{path}: unsupported prompt file type; use a .jsonl file with rows like {{\"text\": ...}}")
        return _load_local(path)

    return _load_hub(str(source), split)


def _looks_like_path(source: str) -> bool:
    if Path(source).expanduser().exists():
        return True
    if source.lower().endswith(_LOCAL_SUFFIXES):
        return True
    # Hub ids are "name" or "owner/name"; anything else that mentions a folder is meant as a path.
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or (os.sep != "/" and os.sep in source)


def _load_local(path: Path) -> tuple[list[Prompt], str]:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    return _to_prompts(_read_rows(path, data), where=str(path)), digest


def _read_rows(path: Path, data: bytes) -> list[dict[str, Any]]:
    """The rows of a JSON Lines file (or a ``.json`` array of objects), with a line number on the first bad row.
    Parsed directly (no ``datasets`` JSON builder: its import and Arrow round trip cost over a second per run)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8") from exc
    if not text.strip():
        raise _no_prompts(path)
    if path.suffix.lower() == ".json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            document = None  # may be JSON Lines with a .json suffix; read per line below
        if isinstance(document, dict):
            return [document]
        if isinstance(document, list):
            for index, row in enumerate(document):
                if not isinstance(row, dict):
                    raise UserError(f"{path}: item {index + 1} is a {type(row).__name__}, not an object; "
                                    "write a JSON array of objects like [{\"text\": \"...\"}]")
            return document
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path}:{lineno}: malformed JSON ({exc.msg}, column {exc.colno}); "
                "write one JSON object per line, like {\"text\": \"...\", \"lang\": \"english\"}"
            ) from exc
        if not isinstance(row, dict):
            raise UserError(
                f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}; "
                "write one object per line, like {\"text\": \"...\"}"
            )
        rows.append(row)
    return rows


def _no_prompts(where: object) -> UserError:
    return UserError(f"{where} has no prompts with a non-empty 'text' field; add JSONL rows like {{\"text\": ...}}")


def _load_hub(dataset_id: str, split: str) -> tuple[list[Prompt], str]:
    import datasets

    offline = _env_offline()
    hint = "download it while online first, or pass a local .jsonl file"
    with _offline(offline):
        try:
            try:
                ds = datasets.load_dataset(dataset_id, split=split)
            except ValueError as exc:
                if split == "train" or "split" not in str(exc).lower():
                    raise
                ds = datasets.load_dataset(dataset_id, split="train")
        except Exception as exc:
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            mode = " with HF_HUB_OFFLINE=1" if offline else ""
            raise UserError(f"dataset '{dataset_id}' could not be loaded{mode} ({reason}); {hint}") from exc
    if "text" not in ds.column_names:
        raise UserError(
            f"dataset '{dataset_id}' has no 'text' column (columns: {', '.join(ds.column_names)}); "
            "use a dataset with a 'text' column or a local .jsonl file"
        )
    ds = ds.select_columns([c for c in _COLUMNS if c in ds.column_names])
    rows = [dict(row) for row in ds]
    canonical = json.dumps(rows, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return _to_prompts(rows, where=f"dataset '{dataset_id}'"), digest


def _to_prompts(rows: list[Mapping[str, Any]], where: str) -> list[Prompt]:
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for index, row in enumerate(rows):
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            continue
        lang = row.get("lang")
        if lang is None or (isinstance(lang, str) and not lang.strip()):
            lang = row.get("language")
        raw_id = row.get("id")
        prompt_id = str(raw_id).strip() if raw_id is not None and str(raw_id).strip() else f"row-{index:05d}"
        if prompt_id in seen:
            raise UserError(f"{where}: duplicate id '{prompt_id}'; make every 'id' unique or leave 'id' out")
        seen.add(prompt_id)
        kind = row.get("kind")
        kind = str(kind).strip() if kind is not None and str(kind).strip() else "sentence"
        lang = normalize_lang(lang)
        if lang != "auto" and lang not in LANGUAGES:
            accepted = ", ".join((*LANGUAGES, "auto"))
            raise UserError(f"{where}: row {index + 1} ('{prompt_id}') has unknown language {lang!r}; use one of "
                            f"{accepted} (or a two-letter code such as 'en'), or leave 'lang' out for auto")
        prompts.append(Prompt(id=prompt_id, lang=lang, text=text.strip(), kind=kind))
    if not prompts:
        raise _no_prompts(where)
    return prompts


def _env_offline() -> bool:
    return any(os.environ.get(name, "").upper() in _TRUE for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


@contextmanager
def _offline(enabled: bool) -> Iterator[None]:
    """Force offline mode for the duration of a load.

    ``datasets`` and ``huggingface_hub`` read HF_HUB_OFFLINE once at import; this makes a value set later (or the
    forced offline mode for local files) take effect too.
    """
    if not enabled:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    saved = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


# ------------------------------------------------------------------------------------------------ voice clips


def load_voice_clips(voices_dir: Path | None = None) -> list[VoiceClip]:
    """The reference clips listed in ``voices.json`` (built-in ``calib_data/voices/`` by default), in file order."""
    directory = Path(voices_dir) if voices_dir is not None else VOICES_DIR
    index = directory / "voices.json"
    if not index.is_file():
        raise UserError(f"{index} not found; regenerate it with: python scripts/make_voice_clips.py")
    try:
        entries = json.loads(index.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{index}: malformed JSON ({exc.msg}, line {exc.lineno}); regenerate it with scripts/make_voice_clips.py"
        ) from exc
    clips: list[VoiceClip] = []
    for entry in entries if isinstance(entries, list) else []:
        try:
            clips.append(
                VoiceClip(
                    name=str(entry["name"]),
                    path=directory / str(entry["file"]),
                    lang=normalize_lang(entry.get("lang")),
                    ref_text=str(entry["ref_text"]),
                )
            )
        except (KeyError, TypeError) as exc:
            raise UserError(
                f"{index}: entry {entry!r} lacks 'name', 'file' or 'ref_text'; regenerate with scripts/make_voice_clips.py"
            ) from exc
    if not clips:
        raise UserError(f"{index} lists no clips; regenerate it with: python scripts/make_voice_clips.py")
    return clips


def read_voice(clip: VoiceClip) -> tuple[np.ndarray, int]:
    """Read a clip as mono float32 in [-1, 1] and its sample rate."""
    import soundfile as sf

    if not clip.path.is_file():
        raise UserError(f"{clip.path}: voice clip not found; regenerate it with: python scripts/make_voice_clips.py")
    audio, sample_rate = sf.read(str(clip.path), dtype="float32", always_2d=False)
    if audio.ndim == 2:
        audio = audio.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(audio, dtype=np.float32), int(sample_rate)
