"""Built-in calibration/evaluation prompts, the prompt loader, and the reference voice clips."""

from __future__ import annotations

import hashlib
import json
import socket
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tts_awq import prompts as P
from tts_awq.errors import UserError
from tts_awq.prompts import CALIB_DATA_DIR, LANGUAGES, Prompt, load_prompts, load_voice_clips, read_voice

MIN_COUNTS = {"calib": 128, "eval": 40}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- built-in prompts


@pytest.mark.parametrize("split", ["calib", "eval"])
def test_builtin_split_counts_languages_and_long(split: str, no_network: None) -> None:
    prompts, _ = load_prompts(split=split)
    assert len(prompts) >= MIN_COUNTS[split]
    by_lang = Counter(p.lang for p in prompts)
    assert set(by_lang) == set(LANGUAGES)
    assert max(by_lang.values()) - min(by_lang.values()) <= 2, by_lang  # roughly balanced
    long_prompts = [p for p in prompts if p.kind == "long"]
    assert len(long_prompts) >= 5
    assert len({p.lang for p in long_prompts}) >= 5
    assert {p.kind for p in prompts} <= {"sentence", "long"}
    assert all(p.id.startswith(f"{split}-") for p in prompts)
    assert all(isinstance(p, Prompt) and p.text == p.text.strip() and p.text for p in prompts)


@pytest.mark.parametrize("split", ["calib", "eval"])
def test_builtin_file_is_canonical_jsonl(split: str) -> None:
    path = CALIB_DATA_DIR / f"{split}.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert all(set(r) == {"id", "lang", "text", "kind"} for r in rows)
    # File order is load order.
    prompts, _ = load_prompts(split=split)
    assert [p.id for p in prompts] == [r["id"] for r in rows]


def test_long_prompts_are_paragraphs() -> None:
    for split in ("calib", "eval"):
        for p in load_prompts(split=split)[0]:
            if p.kind != "long":
                continue
            if p.lang in ("japanese", "chinese"):
                assert len(p.text) >= 150, p.id  # ~60+ words equivalent in characters
            elif p.lang == "korean":
                assert len(p.text.split()) >= 50, p.id  # eojeol count
            else:
                assert 60 <= len(p.text.split()) <= 120, p.id


def test_scripts_match_languages() -> None:
    def has(text: str, lo: int, hi: int) -> bool:
        return any(lo <= ord(ch) <= hi for ch in text)

    for split in ("calib", "eval"):
        for p in load_prompts(split=split)[0]:
            if p.lang == "korean":
                assert has(p.text, 0xAC00, 0xD7A3), p.id
            elif p.lang == "japanese":
                assert has(p.text, 0x3040, 0x30FF), p.id
            elif p.lang == "chinese":
                assert has(p.text, 0x4E00, 0x9FFF) and not has(p.text, 0x3040, 0x30FF), p.id
            elif p.lang == "russian":
                assert has(p.text, 0x0400, 0x04FF), p.id


def test_calib_and_eval_are_disjoint() -> None:
    calib, _ = load_prompts(split="calib")
    evals, _ = load_prompts(split="eval")
    assert not {p.text for p in calib} & {p.text for p in evals}
    assert not {p.id for p in calib} & {p.id for p in evals}


@pytest.mark.parametrize("split", ["calib", "eval"])
def test_ids_and_texts_unique(split: str) -> None:
    prompts, _ = load_prompts(split=split)
    assert len({p.id for p in prompts}) == len(prompts)
    assert len({p.text for p in prompts}) == len(prompts)


@pytest.mark.parametrize("split", ["calib", "eval"])
def test_sha256_is_stable_and_equals_file_hash(split: str) -> None:
    first, sha_a = load_prompts(split=split)
    second, sha_b = load_prompts(split=split)
    assert first == second
    assert sha_a == sha_b == hashlib.sha256((CALIB_DATA_DIR / f"{split}.jsonl").read_bytes()).hexdigest()


def test_unknown_builtin_split() -> None:
    with pytest.raises(UserError, match="nope"):
        load_prompts(split="nope")


# ------------------------------------------------------------------------------------------------ user files


def test_user_jsonl_loads_with_defaults(tmp_path: Path, no_network: None) -> None:
    path = _write_jsonl(
        tmp_path / "mine.jsonl",
        [
            {"text": "  Hello there.  ", "lang": "English"},
            {"text": "", "lang": "english"},  # skipped: empty text
            {"text": "Bonjour.", "language": "fr", "id": "greet-fr", "kind": "long"},
            {"text": "Whatever language."},
        ],
    )
    prompts, sha = load_prompts(path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prompts == [
        Prompt(id="row-00000", lang="english", text="Hello there.", kind="sentence"),
        Prompt(id="greet-fr", lang="french", text="Bonjour.", kind="long"),
        Prompt(id="row-00003", lang="auto", text="Whatever language.", kind="sentence"),
    ]
    # str paths work too, and an edit is picked up (no stale cache).
    assert load_prompts(str(path))[0] == prompts
    _write_jsonl(path, [{"text": "Changed."}])
    changed, sha2 = load_prompts(str(path))
    assert [p.text for p in changed] == ["Changed."] and sha2 != sha


def test_user_json_array_loads(tmp_path: Path, no_network: None) -> None:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"text": "Eins.", "lang": "de"}, {"text": "Zwei."}]), encoding="utf-8")
    prompts, _ = load_prompts(path)
    assert [(p.lang, p.text) for p in prompts] == [("german", "Eins."), ("auto", "Zwei.")]


def test_local_file_ignores_user_offline_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    path = _write_jsonl(tmp_path / "a.jsonl", [{"text": "Hi."}])
    assert [p.text for p in load_prompts(path)[0]] == ["Hi."]


def test_directory_with_split_file(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "eval.jsonl", [{"text": "One."}])
    assert [p.text for p in load_prompts(tmp_path, split="eval")[0]] == ["One."]
    with pytest.raises(UserError, match="calib.jsonl"):
        load_prompts(tmp_path, split="calib")


def test_missing_file_raises(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(UserError, match="nope.jsonl") as info:
        load_prompts(missing)
    assert "not found" in str(info.value)
    with pytest.raises(UserError, match="nope.jsonl"):
        load_prompts(str(missing))


@pytest.mark.parametrize("content", ["", "\n\n  \n", '{"text": ""}\n{"text": "   "}\n', '{"lang": "english"}\n'])
def test_empty_file_raises(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty_prompts.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_prompts(path)
    message = str(info.value)
    assert "empty_prompts.jsonl" in message
    assert "non-empty 'text'" in message
    assert "\n" not in message


def test_malformed_json_raises(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "oops",\n', encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_prompts(path)
    message = str(info.value)
    assert "broken.jsonl:2" in message and "malformed JSON" in message
    assert "\n" not in message


def test_non_object_row_raises(tmp_path: Path) -> None:
    path = tmp_path / "list.jsonl"
    path.write_text('["text", "no"]\n', encoding="utf-8")
    with pytest.raises(UserError, match="list.jsonl:1"):
        load_prompts(path)


def test_duplicate_ids_raise(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    with pytest.raises(UserError, match="duplicate id 'a'"):
        load_prompts(path)


def test_unsupported_suffix_raises(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("hello\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"prompts\.txt"):
        load_prompts(path)


# ----------------------------------------------------------------------------------------------- Hub datasets


def test_hub_id_offline_raises_user_error(monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    # Set after datasets was imported: the loader must still honour it.
    import datasets  # noqa: F401

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        load_prompts("tts-awq-test/definitely-not-cached")
    message = str(info.value)
    assert "tts-awq-test/definitely-not-cached" in message and "HF_HUB_OFFLINE=1" in message
    assert "\n" not in message


def test_hub_rows_hash_and_split_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    rows = [
        {"text": "Hola.", "language": "Spanish", "audio_path": "a.wav"},
        {"text": "Ciao.", "language": "it", "audio_path": "b.wav"},
    ]
    calls: list[str] = []

    def fake_load_dataset(name: str, split: str) -> datasets.Dataset:
        calls.append(split)
        if split != "train":
            raise ValueError(f'Unknown split "{split}". Should be one of [\'train\'].')
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    prompts, sha = load_prompts("someone/tts-prompts", split="calib")
    assert calls == ["calib", "train"]
    assert [(p.id, p.lang, p.text) for p in prompts] == [("row-00000", "spanish", "Hola."), ("row-00001", "italian", "Ciao.")]
    used = [{"language": r["language"], "text": r["text"]} for r in rows]
    canonical = json.dumps(used, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert sha == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert load_prompts("someone/tts-prompts", split="calib")[1] == sha


def test_hub_dataset_without_text_column(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(
        datasets, "load_dataset", lambda name, split: datasets.Dataset.from_list([{"sentence": "x"}])
    )
    with pytest.raises(UserError, match="no 'text' column"):
        load_prompts("someone/other")


# ------------------------------------------------------------------------------------------------ voice clips


def test_voice_clips_exist_and_are_valid() -> None:
    clips = load_voice_clips()
    assert len(clips) >= 4
    assert len({c.name for c in clips}) == len(clips)
    index = json.loads((CALIB_DATA_DIR / "voices" / "voices.json").read_text(encoding="utf-8"))
    total_bytes = 0
    for clip, entry in zip(clips, index, strict=True):
        assert clip.path.is_file(), clip.path
        assert clip.ref_text.strip() and clip.lang in LANGUAGES
        data = clip.path.read_bytes()
        total_bytes += len(data)
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], clip.name
        info = sf.info(str(clip.path))
        assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16"), clip.name

        audio, sr = read_voice(clip)
        assert sr == 24000 and audio.dtype == np.float32 and audio.ndim == 1
        seconds = len(audio) / sr
        assert 2.0 <= seconds <= 4.0, (clip.name, seconds)
        rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
        assert rms > 0.01, (clip.name, rms)
        assert float(np.max(np.abs(audio))) <= 1.0
    assert total_bytes < 1_000_000


def test_missing_voice_index_raises(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="voices.json"):
        load_voice_clips(tmp_path)


def test_calib_data_dir_is_repo_relative() -> None:
    assert CALIB_DATA_DIR == Path(P.__file__).resolve().parent.parent / "calib_data"
    assert (CALIB_DATA_DIR / "README.md").is_file()


def test_unknown_language_is_refused_with_the_accepted_names(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "Hola.", "lang": "es"}\n{"text": "Dag.", "lang": "dutch"}\n', encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_prompts(path)
    message = str(info.value)
    assert "row 2" in message and "'dutch'" in message and "english" in message and "auto" in message
    assert "\n" not in message


def test_json_array_of_non_objects_and_single_object(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"text": "ok"}, "oops"]), encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.json: item 2 is a str"):
        load_prompts(path)
    path.write_text(json.dumps({"text": "Only one.", "lang": "en"}), encoding="utf-8")
    assert [(p.lang, p.text) for p in load_prompts(path)[0]] == [("english", "Only one.")]


def test_builtin_prompts_load_without_the_datasets_library() -> None:
    """Local files are parsed directly: loading them must not import ``datasets`` (seconds per process)."""
    import subprocess
    import sys

    code = ("import sys; from tts_awq.prompts import load_prompts; load_prompts(None, 'eval'); "
            "print('datasets' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
