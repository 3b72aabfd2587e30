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
GOLD = {"answer", "answer_aliases"}
# Categories whose every prompt has one checkable answer; science_fact has one for most rows.
CHECKABLE = {"capital", "antonym", "arithmetic", "unit_conversion", "translation"}
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


def _non_empty(value) -> bool:
    return isinstance(value, str) and value.strip() == value and bool(value)


def test_every_row_has_exactly_the_keys_and_non_empty_strings(rows):
    for r in rows:
        assert set(r) in (KEYS, KEYS | GOLD), r.get("id")
        for key, value in r.items():
            if key == "answer_aliases":
                assert isinstance(value, list) and all(_non_empty(v) for v in value), r["id"]
            else:
                assert _non_empty(value), (r["id"], key)


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


def _times_stated(forms: list[str], text: str) -> int:
    # Whole-word, case-insensitive occurrences of any accepted form of the answer.
    return sum(len(re.findall(rf"(?<!\w){re.escape(f)}(?!\w)", text, re.IGNORECASE)) for f in forms)


def test_gold_answers_where_the_prompt_has_one(rows):
    with_answer = Counter(r["category"] for r in rows if "answer" in r)
    for category in CHECKABLE:
        assert with_answer[category] == sum(r["category"] == category for r in rows), category
    assert with_answer["science_fact"] >= 25
    # several right answers (example), or none that a string can check (definition, how_to, harmful_request)
    assert set(with_answer) == CHECKABLE | {"science_fact"}


def test_gold_answer_is_stated_by_chosen_and_not_by_rejected(rows):
    # What a reference judge or an exact-match reward relies on. "Stated" means more often than the
    # prompt already says it: "Divide 64 by 8." -> rejected "Dividing 64 by 8 gives 9." repeats the 8.
    # A semantic rephrase keeps the meaning, so it states the answer exactly when its source does.
    for r in (r for r in rows if "answer" in r):
        forms = [r["answer"], *r["answer_aliases"]]
        in_prompt = _times_stated(forms, r["prompt"])
        assert _times_stated([r["answer"]], r["chosen"]) > in_prompt, r["id"]
        assert _times_stated(forms, r["chosen_rephrase_semantic"]) > in_prompt, r["id"]
        assert _times_stated(forms, r["rejected"]) <= in_prompt, r["id"]
        if r["rejected_kind"] == "wrong_fact":
            assert _times_stated(forms, r["rejected_rephrase_semantic"]) <= in_prompt, r["id"]


def test_gold_answer_aliases_are_distinct(rows):
    for r in (r for r in rows if "answer" in r):
        forms = [r["answer"].lower(), *(a.lower() for a in r["answer_aliases"])]
        assert len(set(forms)) == len(forms), r["id"]


def test_number_answers_have_their_digit_and_word_forms(rows):
    by_answer = {r["answer"]: r["answer_aliases"] for r in rows if r["category"] in {"arithmetic", "unit_conversion"}}
    assert by_answer["1,000"] == ["1000", "one thousand"]
    assert by_answer["5,280"] == ["5280", "five thousand two hundred and eighty"]
    assert by_answer["60"] == ["sixty"] and by_answer["24"] == ["twenty-four"] and by_answer["7"] == ["seven"]
    for answer, aliases in by_answer.items():
        assert answer.replace(",", "").isdigit() and aliases, answer


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
    # Hand-edited JSONL: every row of a file is an object with the same keys (gold answer fields aside),
    # all non-empty, so a typo in a key or a forgotten field fails here, not in the generator.
    files = sorted(SOURCE.rglob("*.jsonl"))
    assert len(files) >= 10
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()
        assert lines and all(line.strip() for line in lines), path
        rows = [json.loads(line) for line in lines]
        keys = set().union(*rows) - GOLD
        for i, row in enumerate(rows, 1):
            assert isinstance(row, dict) and set(row) - GOLD == keys, (path.name, i)
            assert ("answer" in row) <= ("answer_aliases" in row), (path.name, i)
            for key, value in row.items():
                if key == "answer_aliases":
                    assert isinstance(value, list) and all(_non_empty(v) for v in value), (path.name, i)
                else:
                    assert _non_empty(value), (path.name, i, key)


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
    aliased = next(r for r in rows if r["split"] == "train" and r.get("answer_aliases"))
    ex = next(ex for ex in train if ex.id == aliased["id"])
    assert (ex.extra["answer"], ex.extra["answer_aliases"]) == (aliased["answer"], aliased["answer_aliases"])
