"""The built-in held-out evaluation set ``calib_data/eval.jsonl``: size, balance, order, disjointness from calib."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from tts_awq.prompts import CALIB_DATA_DIR, LANGUAGES, load_prompts

EVAL_PATH = CALIB_DATA_DIR / "eval.jsonl"
CALIB_PATH = CALIB_DATA_DIR / "calib.jsonl"
ISO = {
    "korean": "ko", "english": "en", "japanese": "ja", "chinese": "zh", "german": "de",
    "french": "fr", "russian": "ru", "portuguese": "pt", "spanish": "es", "italian": "it",
}
PER_LANGUAGE = 50
MIN_LONG_PER_LANGUAGE = 5
WORD_RUN = 8  # words, for languages written with spaces (Korean: eojeol)
CHAR_RUN = 12  # characters, for Chinese and Japanese
CJK = {"chinese", "japanese"}


def _rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    return _rows(EVAL_PATH)


@pytest.fixture(scope="module")
def calib_rows() -> list[dict[str, str]]:
    return _rows(CALIB_PATH)


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def _runs(row: dict[str, str]) -> set[object]:
    """Every run of 8 words (12 word characters for zh/ja), ignoring case and punctuation."""
    text = row["text"].casefold()
    if row["lang"] in CJK:
        chars = "".join(re.findall(r"\w", text))
        return {chars[i : i + CHAR_RUN] for i in range(len(chars) - CHAR_RUN + 1)}
    words = re.findall(r"\w+", text)
    return {tuple(words[i : i + WORD_RUN]) for i in range(len(words) - WORD_RUN + 1)}


def test_file_is_canonical_utf8_jsonl() -> None:
    data = EVAL_PATH.read_bytes()
    text = data.decode("utf-8")  # strict: raises on invalid UTF-8
    assert text.endswith("\n") and not text.startswith("\ufeff")
    for lineno, line in enumerate(text.splitlines(), 1):
        assert line == line.rstrip(), f"line {lineno}: trailing whitespace"
        row = json.loads(line)
        assert list(row) == ["id", "lang", "text", "kind"], lineno
        assert line == json.dumps(row, ensure_ascii=False), f"line {lineno}: not written with ensure_ascii=False"


def test_counts_per_language_and_kind(rows: list[dict[str, str]]) -> None:
    assert len(rows) >= PER_LANGUAGE * len(LANGUAGES)
    assert Counter(r["lang"] for r in rows) == {lang: PER_LANGUAGE for lang in LANGUAGES}
    assert {r["kind"] for r in rows} == {"sentence", "long"}
    long_by_lang = Counter(r["lang"] for r in rows if r["kind"] == "long")
    for lang in LANGUAGES:
        assert long_by_lang[lang] >= MIN_LONG_PER_LANGUAGE, (lang, long_by_lang[lang])
    assert sum(long_by_lang.values()) >= MIN_LONG_PER_LANGUAGE * len(LANGUAGES)


def test_ids_follow_pattern_and_are_numbered_per_language(rows: list[dict[str, str]]) -> None:
    pattern = re.compile(r"eval-([a-z]{2})-(\d{3})")
    numbers: dict[str, list[int]] = {}
    for r in rows:
        match = pattern.fullmatch(r["id"])
        assert match, r["id"]
        assert match.group(1) == ISO[r["lang"]], r["id"]
        numbers.setdefault(r["lang"], []).append(int(match.group(2)))
    for lang, nums in numbers.items():
        assert nums == list(range(1, len(nums) + 1)), lang  # 001, 002, ... in file order, no gaps


def test_ids_and_texts_unique(rows: list[dict[str, str]]) -> None:
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids), [i for i, n in Counter(ids).items() if n > 1]
    texts = [_norm(r["text"]) for r in rows]
    assert len(set(texts)) == len(texts), [t for t, n in Counter(texts).items() if n > 1]


def test_no_long_run_shared_between_eval_prompts(rows: list[dict[str, str]]) -> None:
    owner: dict[object, str] = {}
    for r in rows:
        for run in _runs(r):
            assert owner.setdefault(run, r["id"]) == r["id"], (owner[run], r["id"], run)


def test_every_window_of_100_covers_at_least_8_languages(rows: list[dict[str, str]]) -> None:
    # A "quick" profile takes the first N rows: every prefix (and every window) of 100 rows must be multilingual.
    for start in range(len(rows) - 100 + 1):
        langs = {r["lang"] for r in rows[start : start + 100]}
        assert len(langs) >= 8, (start, sorted(langs))


def test_prefixes_are_balanced(rows: list[dict[str, str]]) -> None:
    counts: Counter[str] = Counter()
    for n, r in enumerate(rows, 1):
        counts[r["lang"]] += 1
        if n >= 100:
            per_lang = [counts[lang] for lang in LANGUAGES]
            assert max(per_lang) - min(per_lang) <= 2, (n, dict(counts))


def test_disjoint_from_calibration(rows: list[dict[str, str]], calib_rows: list[dict[str, str]]) -> None:
    assert not {r["id"] for r in rows} & {c["id"] for c in calib_rows}
    assert not {_norm(r["text"]) for r in rows} & {_norm(c["text"]) for c in calib_rows}
    calib_runs: dict[object, str] = {}
    for c in calib_rows:
        for run in _runs(c):
            calib_runs.setdefault(run, c["id"])
    shared = [(r["id"], calib_runs[run], run) for r in rows for run in _runs(r) if run in calib_runs]
    assert not shared, shared[:5]


def test_long_paragraph_lengths(rows: list[dict[str, str]]) -> None:
    for r in rows:
        if r["kind"] != "long":
            continue
        if r["lang"] in CJK:
            assert 150 <= len(r["text"]) <= 400, r["id"]  # ~60-120 words' worth of characters
        elif r["lang"] == "korean":
            assert 50 <= len(r["text"].split()) <= 120, r["id"]  # eojeol
        else:
            assert 60 <= len(r["text"].split()) <= 120, r["id"]


def test_load_prompts_returns_every_row_in_file_order(rows: list[dict[str, str]]) -> None:
    prompts, sha = load_prompts(split="eval")  # source=None: the built-in calib_data/eval.jsonl
    assert sha == hashlib.sha256(EVAL_PATH.read_bytes()).hexdigest()
    assert [(p.id, p.lang, p.text, p.kind) for p in prompts] == [
        (r["id"], r["lang"], r["text"], r["kind"]) for r in rows
    ]
