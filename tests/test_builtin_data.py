"""The built-in data set (src/lldyn/builtin/): shape, invariants the probes rely on, reproducibility.

The pairs are generated from data/builtin/ by scripts/make_builtin_data.py; the generator checks
nothing itself, so every invariant of the data is asserted here.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from lldyn import data

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = ROOT / "src" / "lldyn" / "builtin"
SOURCE = ROOT / "data" / "builtin"
GENERATOR = ROOT / "scripts" / "make_builtin_data.py"
KEYS = {"id", "category", "split", "prompt", "chosen", "rejected", "rejected_kind",
        "chosen_rephrase_semantic", "chosen_rephrase_format",
        "rejected_rephrase_semantic", "rejected_rephrase_format"}
REPHRASES = [(side, f"{side}_rephrase_{how}") for side in ("chosen", "rejected") for how in ("semantic", "format")]
STOPWORDS = set("""a an the of in on at to for from by with and or but is are was were be it its this that
these those there as so if then than into onto one i you he she we they my your his her our their""".split())


def _rows() -> list[dict]:
    with open(BUILTIN / "preferences.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _sentences() -> list[str]:
    return (BUILTIN / "sentences.txt").read_text(encoding="utf-8").splitlines()


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[\w']+", text.lower()) if w not in STOPWORDS}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return _rows()


def test_size_and_categories(rows):
    assert 250 <= len(rows) <= 400
    per_category = Counter(r["category"] for r in rows)
    assert len(per_category) >= 8, per_category
    assert min(per_category.values()) >= 15, per_category


def test_every_row_has_exactly_the_keys_and_non_empty_strings(rows):
    for r in rows:
        assert set(r) == KEYS, r.get("id")
        for key, value in r.items():
            assert isinstance(value, str) and value.strip() == value and value, (r["id"], key)


def test_ids_and_prompts_are_unique(rows):
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"builtin-\d{4}", i) for i in ids)
    prompts = [r["prompt"].strip().lower() for r in rows]
    assert len(set(prompts)) == len(prompts)


def test_prompts_are_plain_user_messages(rows):
    for r in rows:
        assert "<|" not in r["prompt"] and "Human:" not in r["prompt"] and "Assistant:" not in r["prompt"]
        assert len(r["prompt"].split()) <= 30, r["id"]


def test_responses_are_short_single_sentences(rows):
    for r in rows:
        for key in ("chosen", "rejected", *(k for _, k in REPHRASES)):
            n = len(r[key].split())
            assert 3 <= n <= 25, (r["id"], key, n)
            assert "\n" not in r[key]


def test_chosen_and_rejected_differ_in_content(rows):
    for r in rows:
        assert r["chosen"] != r["rejected"], r["id"]
        assert _content_words(r["chosen"]) ^ _content_words(r["rejected"]), r["id"]


def test_rejected_kinds(rows):
    kinds = Counter(r["rejected_kind"] for r in rows)
    assert set(kinds) <= {"wrong_fact", "unhelpful", "off_topic", "rude", "harmful"}
    assert len(kinds) >= 4, kinds
    # a mix, not one kind with a token sprinkle of the others
    assert kinds.most_common(1)[0][1] <= 0.8 * len(rows), kinds


def test_splits_are_stratified_by_category(rows):
    by_category: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        assert r["split"] in {"train", "test"}, r["id"]
        by_category[r["category"]][r["split"]] += 1
    for category, counts in by_category.items():
        assert counts["train"] > 0 and counts["test"] > 0, category
    n_test = sum(c["test"] for c in by_category.values())
    assert 0.10 <= n_test / len(rows) <= 0.25


def test_rephrases_differ_from_their_source_and_from_each_other(rows):
    for r in rows:
        for source, key in REPHRASES:
            assert r[key].lower() != r[source].lower(), (r["id"], key)
        for side in ("chosen", "rejected"):
            assert r[f"{side}_rephrase_semantic"] != r[f"{side}_rephrase_format"], (r["id"], side)
        assert r["chosen_rephrase_format"] != r["rejected_rephrase_format"], r["id"]


def test_rephrases_keep_or_drop_the_distinguishing_words(rows):
    # What tells chosen from rejected (a wrong city, number, word) survives a meaning-preserving
    # rephrase when it is a name or a number, which cannot be paraphrased away; a format rephrase,
    # which changes the meaning, keeps none of it. Checked where the difference is one short phrase.
    names_and_numbers = {"capital", "arithmetic", "unit_conversion", "translation", "antonym", "example"}
    checked = 0
    for r in rows:
        if r["rejected_kind"] != "wrong_fact":
            continue
        only_chosen = _content_words(r["chosen"]) - _content_words(r["rejected"])
        if not 0 < len(only_chosen) <= 2:
            continue
        checked += 1
        if r["category"] in names_and_numbers:
            assert only_chosen & _content_words(r["chosen_rephrase_semantic"]), r["id"]
        assert not only_chosen & _content_words(r["chosen_rephrase_format"]), r["id"]
    assert checked >= 100


def test_rephrases_are_not_another_rows_answer(rows):
    # Otherwise a "rephrase" probe would silently duplicate the y_j+ / y- probes of another prompt.
    answers = {r[k] for r in rows for k in ("chosen", "rejected")}
    for r in rows:
        for _, key in REPHRASES:
            assert r[key] not in answers, (r["id"], key)


def test_sentences_file():
    sentences = _sentences()
    assert len(sentences) >= 250
    assert all(s and s == s.strip() for s in sentences)
    assert len(set(sentences)) == len(sentences)
    lengths = [len(s.split()) for s in sentences]
    assert min(lengths) <= 6 and max(lengths) >= 30
    buckets = Counter(min(n // 5, 6) for n in lengths)  # 0-4, 5-9, ..., 30+
    assert sum(1 for b in range(1, 7) if buckets[b] >= 5) >= 6, buckets


def test_sentences_are_not_answers():
    answers = {r[k] for r in _rows() for k in KEYS if k not in {"id", "category", "split", "rejected_kind"}}
    assert not answers & set(_sentences())


def test_generator_reproduces_committed_file(tmp_path):
    # preferences.jsonl is data/builtin/ + the generator; sentences.txt is hand-edited, not generated.
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp_path)], check=True, capture_output=True)
    assert [p.name for p in tmp_path.iterdir()] == ["preferences.jsonl"]
    assert (tmp_path / "preferences.jsonl").read_bytes() == (BUILTIN / "preferences.jsonl").read_bytes()


def test_source_files_have_named_fields():
    # Hand-edited JSONL: every row of a file is an object with the same keys, all of them non-empty,
    # so a typo in a key or a forgotten field fails here rather than as a KeyError in the generator.
    files = sorted(SOURCE.rglob("*.jsonl"))
    assert len(files) >= 10
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()
        assert lines and all(line.strip() for line in lines), path
        rows = [json.loads(line) for line in lines]
        for i, row in enumerate(rows, 1):
            assert isinstance(row, dict) and set(row) == set(rows[0]), (path.name, i)
            assert all(isinstance(v, str) and v.strip() == v and v for v in row.values()), (path.name, i)


def test_loads_through_the_data_module():
    train = data.load_preferences("builtin:train")
    test = data.load_preferences("builtin:test")
    rows = _rows()
    assert len(train) + len(test) == len(rows)
    assert not {ex.id for ex in train} & {ex.id for ex in test}
    first = next(r for r in rows if r["split"] == "train")
    ex = next(ex for ex in train if ex.id == first["id"])
    assert (ex.prompt, ex.chosen, ex.rejected) == (first["prompt"], first["chosen"], first["rejected"])
    assert ex.extra.get("chosen_rephrase_semantic") == first["chosen_rephrase_semantic"]
