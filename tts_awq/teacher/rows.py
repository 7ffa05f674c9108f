"""Input tables of ``teacher`` and ``speak``: JSONL / JSON / CSV / parquet / plain text files, a Hub dataset id or a
local dataset folder (both read with ``datasets``).

A row has ``text``, optionally ``id``, ``lang`` (or ``language``), ``seed``, a voice (``ref_audio`` / ``voice``: a
path relative to the table's folder, or an ``audio`` column holding ``{"array", "sampling_rate"}`` or
``{"path"|"bytes"}``), ``ref_text`` (ICL voice cloning when present, else x-vector only) and, for ``teacher``,
``codes`` (16 x T codec ids to teacher-force instead of sampling). Each voice is read once and named by the
sha256 of its samples, so the same clip always seeds the same draws.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tts_awq.checkpoint.files import sha256_file
from tts_awq.errors import UserError
from tts_awq.prompts import LANGUAGES, _env_offline, _offline, _read_rows, normalize_lang

LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


@dataclass(frozen=True)
class Voice:
    name: str  # "sha256:<digest of the samples>"
    audio: tuple[np.ndarray, int]


@dataclass(frozen=True)
class Row:
    index: int
    id: str
    text: str
    lang: str
    voice: Voice
    ref_text: str
    seed: int
    codes: np.ndarray | None = None  # [T, 16] int64 when given

    @property
    def icl(self) -> bool:
        return bool(self.ref_text)


@dataclass(frozen=True)
class Table:
    rows: list[Row]
    source: dict[str, Any]  # {"source", "sha256", "revision"?, "voices": {name: origin}}


def read_table(source: str, base_seed: int, default_voice: str | None = None, default_ref_text: str = "",
               split: str = "train", revision: str | None = None, allow_codes: bool = True,
               voice_hint: str = "") -> Table:
    """Rows of a local table or a Hub dataset, voices loaded; ``default_voice`` fills rows without one
    (``voice_hint`` names the flag that gives it, for the error of a row without a voice)."""
    path = Path(source).expanduser()
    if path.is_dir():  # a local dataset folder (parquet / JSON / CSV files, or a saved card): datasets reads it
        raw, digest, info = _read_hub(str(path), split, revision)
        base = path
    elif path.exists() or path.suffix.lower() in LOCAL_SUFFIXES or source.startswith((".", "/", "~")):
        raw, digest = _read_local(path)
        info: dict[str, Any] = {"source": str(path), "sha256": digest}
        base = path.parent
    else:
        raw, digest, info = _read_hub(source, split, revision)
        base = Path.cwd()
    voices = _VoiceReader(base)
    rows = [_row(index, entry, voices, base_seed, default_voice, default_ref_text, allow_codes,
                 where=info["source"], voice_hint=voice_hint) for index, entry in enumerate(raw)]
    rows = [r for r in rows if r is not None]
    if not rows:
        raise UserError(f"{info['source']}: no rows with a non-empty 'text'; add rows like {{\"text\": \"...\"}}")
    seen: set[str] = set()
    for row in rows:
        if row.id in seen:
            raise UserError(f"{info['source']}: duplicate id {row.id!r}; make every 'id' unique or leave 'id' out")
        seen.add(row.id)
    info["voices"] = voices.origins
    return Table(rows=rows, source=info)


def _read_local(path: Path) -> tuple[list[dict[str, Any]], str]:
    if not path.is_file():
        raise UserError(f"{path}: data file not found; pass a .jsonl, .csv, .parquet or .txt file or a Hub dataset id")
    suffix = path.suffix.lower()
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if suffix in (".jsonl", ".json"):
        return _read_rows(path, data), digest
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(io.BytesIO(data)).to_pylist(), digest
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise UserError(f"{path}: not a readable parquet file ({exc}); write it with pyarrow or datasets") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text; save the file as UTF-8") from exc
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "text" not in reader.fieldnames:
            raise UserError(f"{path}: the CSV header has no 'text' column; add a header line like text,lang")
        return [dict(r) for r in reader], digest
    if suffix == ".txt":
        return [{"text": line} for line in text.splitlines() if line.strip()], digest
    raise UserError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .csv, .parquet or .txt")


def _read_hub(dataset_id: str, split: str, revision: str | None) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    import datasets

    offline = _env_offline()
    with _offline(offline):
        try:
            ds = datasets.load_dataset(dataset_id, split=split, revision=revision)
        except Exception as exc:  # noqa: BLE001 - datasets raises many types; all mean "cannot load"
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise UserError(f"dataset '{dataset_id}' could not be loaded ({reason}); pass a local file or check the "
                            "id, --split and --revision") from exc
    if "text" not in ds.column_names:
        raise UserError(f"dataset '{dataset_id}' has no 'text' column (columns: {', '.join(ds.column_names)})")
    rows = [dict(r) for r in ds]
    digest = hashlib.sha256()
    for r in rows:
        digest.update(json.dumps(r, sort_keys=True, ensure_ascii=False, default=_canonical).encode())
    info = {"source": dataset_id, "sha256": digest.hexdigest(), "split": split,
            "revision": revision or "default", "fingerprint": getattr(ds, "_fingerprint", None)}
    return rows, digest.hexdigest(), info


def _canonical(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
    if isinstance(value, bytes):
        return hashlib.sha256(value).hexdigest()
    return str(value)


class _VoiceReader:
    """Reads each distinct clip once; ``origins`` maps voice name -> where it came from (for provenance)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.by_key: dict[str, Voice] = {}
        self.origins: dict[str, str] = {}

    def path(self, value: str, where: str) -> Voice:
        path = Path(value).expanduser()
        path = path if path.is_absolute() else self.base / path
        key = f"path:{path}"
        if key not in self.by_key:
            if not path.is_file():
                raise UserError(f"{where}: voice clip {path} not found; fix 'ref_audio' (paths are relative to the "
                                "data file's folder)")
            self.by_key[key] = self._voice(_decode_audio(path.read_bytes(), str(path)), f"file {path} "
                                           f"(sha256 {sha256_file(path)})")
        return self.by_key[key]

    def column(self, value: Any, where: str) -> Voice:
        if isinstance(value, dict) and value.get("array") is not None:
            audio = (np.asarray(value["array"], dtype=np.float32), int(value["sampling_rate"]))
            return self._voice(audio, "audio column")
        if isinstance(value, dict) and value.get("bytes"):
            return self._voice(_decode_audio(value["bytes"], where), "audio column (bytes)")
        if isinstance(value, dict) and value.get("path"):
            return self.path(str(value["path"]), where)
        raise UserError(f"{where}: the 'audio' column holds {type(value).__name__}; expected "
                        "{'array', 'sampling_rate'} or {'path'} / {'bytes'}")

    def _voice(self, audio: tuple[np.ndarray, int], origin: str) -> Voice:
        samples, rate = audio
        if samples.ndim == 2:
            samples = samples.mean(axis=1, dtype=np.float32)
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        digest = hashlib.sha256(samples.tobytes() + str(rate).encode()).hexdigest()
        name = f"sha256:{digest[:16]}"
        self.origins.setdefault(name, origin)
        return Voice(name=name, audio=(samples, rate))


def _decode_audio(data: bytes, where: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except Exception as exc:  # noqa: BLE001 - libsndfile errors
        raise UserError(f"{where}: not a readable audio file ({exc}); pass a WAV/FLAC clip") from exc
    return np.asarray(samples, dtype=np.float32), int(rate)


def _row(index: int, entry: dict[str, Any], voices: _VoiceReader, base_seed: int, default_voice: str | None,
         default_ref_text: str, allow_codes: bool, where: str, voice_hint: str = "") -> Row | None:
    text = entry.get("text")
    if not isinstance(text, str) or not text.strip():
        return None
    at = f"{where}: row {index + 1}"
    lang = normalize_lang(entry.get("lang") if entry.get("lang") not in (None, "") else entry.get("language"))
    if lang != "auto" and lang not in LANGUAGES:
        raise UserError(f"{at} has unknown language {lang!r}; use one of {', '.join(LANGUAGES)}, a two-letter code "
                        "or leave 'lang' out")
    ref = entry.get("ref_audio") or entry.get("voice")
    from_default = False
    if entry.get("audio") is not None:
        voice = voices.column(entry["audio"], at)
    elif ref:
        voice = voices.path(str(ref), at)
    elif default_voice is not None:
        voice, from_default = voices.path(default_voice, at), True
    else:
        raise UserError(f"{at} has no voice; add a 'ref_audio' path or an 'audio' column"
                        + (f" (or pass {voice_hint})" if voice_hint else ""))
    ref_text = entry.get("ref_text")
    ref_text = str(ref_text).strip() if ref_text not in (None, "") else (default_ref_text if from_default else "")
    raw_id = entry.get("id")
    row_id = str(raw_id).strip() if raw_id not in (None, "") else f"row-{index:06d}"
    seed = _int(entry.get("seed"), f"{at} 'seed'") if entry.get("seed") not in (None, "") else base_seed + index
    codes = None
    if entry.get("codes") is not None:
        if not allow_codes:
            raise UserError(f"{at} has a 'codes' column; only `tts-awq teacher` takes given codes")
        codes = _codes(entry["codes"], at)
    return Row(index=index, id=row_id, text=text.strip(), lang=lang, voice=voice, ref_text=ref_text, seed=seed,
               codes=codes)


def _int(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} is {value!r}, not an integer") from None


def _codes(value: Any, at: str) -> np.ndarray:
    """``codes`` as 16 x T (a JSON string is accepted, for CSV files) -> ``[T, 16]``."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise UserError(f"{at}: 'codes' is not a JSON list of 16 lists") from None
    try:
        array = np.asarray(value, dtype=np.int64)
    except (TypeError, ValueError):
        raise UserError(f"{at}: 'codes' must be 16 lists of equal length T (16 x T codec ids)") from None
    if array.ndim != 2 or array.shape[0] != 16 or array.shape[1] < 1:
        raise UserError(f"{at}: 'codes' has shape {list(array.shape)}; expected 16 x T codec ids (T >= 1)")
    return np.ascontiguousarray(array.T)
