"""Data loaders: every supported format, and one clear error per kind of bad input."""
from __future__ import annotations

import gzip
import json

import pytest

from conftest import HH_PAIRS, requires_shared
from lldyn.data import load_preferences, load_sft, parse_hh_dialogue, sft_from_preferences
from lldyn.errors import LldynError, Where


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_trl_explicit_prompt_string_and_messages(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "Q?", "chosen": "yes", "rejected": "no"},
        {"id": "b", "prompt": [{"role": "user", "content": "Q2?"}],
         "chosen": [{"role": "assistant", "content": "A"}], "rejected": [{"role": "assistant", "content": "B"}]},
    ])
    a, b = load_preferences(str(f))
    assert (a.id, a.prompt, a.chosen, a.rejected) == ("d-0", "Q?", "yes", "no")
    assert b.id == "b" and b.prompt == [{"role": "user", "content": "Q2?"}] and (b.chosen, b.rejected) == ("A", "B")


def test_extra_fields_keep_scalars_and_lists_of_strings(tmp_path):
    # e.g. the built-in data's curated rephrases (str) and gold answer_aliases (list of str)
    f = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "Q?", "chosen": "yes", "rejected": "no", "answer": "yes", "answer_aliases": ["y", "yeah"],
         "no_aliases": [], "score": 0.5, "rank": 2, "mixed": ["a", 1], "nested": {"a": "b"}, "none": None},
    ])
    (ex,) = load_preferences(str(f))
    assert ex.extra == {"answer": "yes", "answer_aliases": ["y", "yeah"], "no_aliases": [], "score": 0.5, "rank": 2}
    assert ex.to_json()["answer_aliases"] == ["y", "yeah"]


def test_trl_implicit_prompt_conversations(tmp_path):
    conv = [{"role": "user", "content": "hi"}]
    f = write_jsonl(tmp_path / "d.jsonl", [{"chosen": conv + [{"role": "assistant", "content": "hello"}],
                                             "rejected": conv + [{"role": "assistant", "content": "go away"}]}])
    (ex,) = load_preferences(str(f))
    assert ex.prompt == conv and ex.chosen == "hello" and ex.rejected == "go away"


def test_hh_dialogue_prompt_is_shared_prefix_up_to_last_assistant():
    text = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour and water."
    msgs, resp = parse_hh_dialogue(text, Where("x", 1), "chosen")
    assert msgs == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "How do I bake bread?"}]
    assert resp == "Mix flour and water."


@requires_shared
def test_real_hh_rlhf_file_loads(caplog):
    with pytest.raises(LldynError, match=r"harmless-base-test.jsonl.gz:87, field 'chosen': empty final assistant turn"):
        load_preferences(str(HH_PAIRS))
    pairs = load_preferences(str(HH_PAIRS), skip_invalid=True)
    assert len(pairs) == 1806 and "skipped 6 invalid row(s)" in caplog.text
    assert all(p.chosen.strip() and p.rejected.strip() and p.prompt[-1]["role"] == "user" for p in pairs[:200])


def test_json_parquet_and_gz(tmp_path):
    rows = [{"prompt": "p", "chosen": "c", "rejected": "r"}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    assert load_preferences(str(tmp_path / "d.json"))[0].chosen == "c"
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as fh:
        fh.write(json.dumps(rows[0]) + "\n")
    assert load_preferences(str(tmp_path / "d.jsonl.gz"))[0].rejected == "r"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert load_preferences(str(tmp_path / "d.parquet"))[0].prompt == "p"


def test_sft_formats_and_extend(tmp_path):
    f = write_jsonl(tmp_path / "s.jsonl", [
        {"prompt": "p", "response": "r"}, {"prompt": "p2", "completion": "c2"},
        {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]},
    ])
    a, b, c = load_sft(str(f))
    assert (a.response, b.response, c.response, c.prompt) == ("r", "c2", "a", [{"role": "user", "content": "u"}])
    pairs = load_preferences(str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}])))
    ext = sft_from_preferences(pairs, include_rejected=True)
    assert [e.response for e in ext] == ["c", "r"]


@pytest.mark.parametrize("line, field, expect", [
    ('{"prompt": "p", "chosen": "c"', None, "malformed JSON line"),
    ('{"prompt": "p", "rejected": "r"}', "chosen", "missing field"),
    ('{"prompt": "p", "chosen": "", "rejected": "r"}', "chosen", "empty"),
    ('{"prompt": "p", "chosen": 3, "rejected": "r"}', "chosen", "got int"),
    ('{"prompt": 5, "chosen": "c", "rejected": "r"}', "prompt", "got int"),
    ('{"prompt": "  ", "chosen": "c", "rejected": "r"}', "prompt", "empty"),
    ('{"chosen": "plain text", "rejected": "other"}', "prompt", "no prompt"),
    ('[1, 2]', None, "JSON list"),
    # a message list beside a 'prompt' is one assistant message, not a conversation whose turns would be lost
    ('{"prompt": "p", "chosen": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}], '
     '"rejected": [{"role": "assistant", "content": "b"}]}', "chosen", "2 messages beside a 'prompt'"),
    ('{"prompt": [{"role": "user", "content": " "}], "chosen": "c", "rejected": "r"}', "prompt[0].content",
     "empty user message"),
    # HH-RLHF dialogues: text before the first Human turn, a dialogue that starts with the Assistant, empty turns
    ('{"chosen": "Preamble\\n\\nHuman: Hi\\n\\nAssistant: A", "rejected": "Preamble\\n\\nHuman: Hi\\n\\nAssistant: B"}',
     "chosen", "does not start with a '\\n\\nHuman:' turn"),
    ('{"chosen": "\\n\\nAssistant: Hi\\n\\nHuman: Q\\n\\nAssistant: A", '
     '"rejected": "\\n\\nAssistant: Hi\\n\\nHuman: Q\\n\\nAssistant: B"}', "chosen", "does not start with"),
    ('{"chosen": "\\n\\nHuman:  \\n\\nAssistant: A", "rejected": "\\n\\nHuman:  \\n\\nAssistant: B"}',
     "chosen", "empty Human turn (exchange 1)"),
])
def test_bad_rows_name_file_line_field(tmp_path, line, field, expect):
    f = write_jsonl(tmp_path / "bad.jsonl", ['{"prompt": "ok", "chosen": "a", "rejected": "b"}', line])
    with pytest.raises(LldynError) as err:
        load_preferences(str(f))
    msg = str(err.value)
    assert f"{f}:2" in msg and expect in msg
    if field:
        assert f"field '{field}'" in msg


def test_empty_unknown_missing_and_duplicate(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(LldynError, match="no preference pairs"):
        load_preferences(str(tmp_path / "e.jsonl"))
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(LldynError, match="unknown data file format"):
        load_preferences(str(tmp_path / "d.csv"))
    with pytest.raises(LldynError, match="data file not found"):
        load_preferences(str(tmp_path / "nope.jsonl"))
    f = write_jsonl(tmp_path / "dup.jsonl", [{"id": "x", "prompt": "p", "chosen": "c", "rejected": "r"}] * 2)
    with pytest.raises(LldynError, match="duplicate id 'x'"):
        load_preferences(str(f))


def test_hf_dataset_by_name_with_a_split(tmp_path, monkeypatch):
    """hf:NAME goes through datasets.load_dataset (offline here: a local data set folder with two splits)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = tmp_path / "my-prefs"
    folder.mkdir()
    for split, n in (("train", 3), ("test", 2)):
        rows = [{"prompt": f"{split} question {i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = load_preferences(f"hf:{folder}", "train")
    test = load_preferences(f"hf:{folder}", "test")
    assert [p.prompt for p in train] == [f"train question {i}?" for i in range(3)]
    assert [(p.chosen, p.rejected) for p in test] == [("good 0", "bad 0"), ("good 1", "bad 1")]
    assert len({p.id for p in train}) == 3
    with pytest.raises(LldynError, match="cannot load Hugging Face data set") as err:
        load_preferences("hf:nobody/no-such-dataset-offline", "train")
    assert "nobody/no-such-dataset-offline" in str(err.value)
