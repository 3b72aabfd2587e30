"""Resources: data and probe files are streamed, and one too large for memory is refused with
a clear message naming the file and the limit (LLDYN_MAX_ROWS, LLDYN_MAX_JSON_BYTES), never an OOM.

The limits are set small here; the defaults (1,000,000 rows, 512 MiB for a .json document) are in
docs/reliability.md.
"""
from __future__ import annotations

import json

import pytest

from lldyn.data import DEFAULT_MAX_ROWS, load_preferences, load_sft, max_rows
from lldyn.errors import LldynError
from lldyn.io import read_jsonl
from lldyn.probes import ProbeSet

ROWS = [{"id": f"p{i}", "prompt": f"Q{i}?", "chosen": f"A{i}.", "rejected": f"B{i}."} for i in range(5)]


def jsonl(path, rows, tail: str = ""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return path


def test_default_limit_and_its_override(monkeypatch):
    monkeypatch.delenv("LLDYN_MAX_ROWS", raising=False)
    assert max_rows() == DEFAULT_MAX_ROWS == 1_000_000
    monkeypatch.setenv("LLDYN_MAX_ROWS", "7")
    assert max_rows() == 7
    for bad in ("0", "-3", "many"):
        monkeypatch.setenv("LLDYN_MAX_ROWS", bad)
        with pytest.raises(LldynError, match="LLDYN_MAX_ROWS.*bad value"):
            max_rows()


def test_a_file_over_the_row_limit_is_refused_naming_file_and_limit(tmp_path, monkeypatch):
    path = jsonl(tmp_path / "big.jsonl", ROWS)
    monkeypatch.setenv("LLDYN_MAX_ROWS", "3")
    with pytest.raises(LldynError) as info:
        load_preferences(str(path))
    message = str(info.value)
    assert "big.jsonl" in message and "more than 3 rows" in message and "LLDYN_MAX_ROWS=3" in message
    assert "--limit" in message
    with pytest.raises(LldynError, match="more than 3 rows"):
        load_sft(str(path))
    assert [p.id for p in load_preferences(str(path), limit=3)] == ["p0", "p1", "p2"]  # --limit: first rows only
    monkeypatch.setenv("LLDYN_MAX_ROWS", "5")
    assert len(load_preferences(str(path))) == 5  # exactly at the limit is fine


def test_rows_are_streamed_rows_after_the_limit_are_never_read(tmp_path, monkeypatch):
    """A malformed line after the rows a --limit asks for is never parsed: the file is read row by row."""
    path = jsonl(tmp_path / "data.jsonl", ROWS[:2], tail='{"broken": \n' + "x" * 1000 + "\n")
    assert [p.id for p in load_preferences(str(path), limit=2)] == ["p0", "p1"]
    with pytest.raises(LldynError, match="data.jsonl:3"):
        load_preferences(str(path))
    own = jsonl(tmp_path / "metrics.jsonl", [{"step": 1}], tail='{"step": 2, "torn\n{"step": 3}\n')
    assert next(iter(read_jsonl(own))) == {"step": 1}  # lldyn's own files are streamed too


def test_parquet_is_streamed_in_batches(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 2500  # three record batches of 1024 rows
    table = pa.table({"prompt": [f"Q{i}?" for i in range(n)], "chosen": ["a"] * n, "rejected": ["b"] * n})
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=500)
    monkeypatch.setenv("LLDYN_MAX_ROWS", "2000")
    with pytest.raises(LldynError, match="big.parquet.*more than 2,000 rows"):
        load_preferences(str(tmp_path / "big.parquet"))
    pairs = load_preferences(str(tmp_path / "big.parquet"), limit=1500)
    assert len(pairs) == 1500 and pairs[-1].prompt == "Q1499?"


def test_a_json_document_over_the_byte_limit_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(ROWS))
    assert len(load_preferences(str(path))) == 5
    monkeypatch.setenv("LLDYN_MAX_JSON_BYTES", str(path.stat().st_size - 1))
    with pytest.raises(LldynError, match="data.json.*too large to parse as one JSON document") as info:
        load_preferences(str(path))
    assert "LLDYN_MAX_JSON_BYTES" in str(info.value) and ".jsonl" in str(info.value)


def test_a_small_gzip_of_a_huge_json_document_is_refused_by_its_decompressed_size(tmp_path, monkeypatch):
    import gzip

    path = tmp_path / "bomb.json.gz"
    with gzip.open(path, "wt") as fh:
        json.dump(ROWS + [{"prompt": "p", "chosen": "x" * 200_000, "rejected": "y"}], fh)
    assert path.stat().st_size < 10_000
    monkeypatch.setenv("LLDYN_MAX_JSON_BYTES", "100000")
    with pytest.raises(LldynError, match=r"bomb.json.gz.*more than 100,000 \(decompressed\) bytes is too large"):
        load_preferences(str(path))


def test_one_huge_jsonl_line_is_refused_without_reading_it_whole(tmp_path, monkeypatch):
    path = jsonl(tmp_path / "data.jsonl", ROWS[:2], tail=json.dumps({"prompt": "p", "chosen": "x" * 5000,
                                                                      "rejected": "y"}) + "\n")
    assert len(load_preferences(str(path))) == 3
    monkeypatch.setenv("LLDYN_MAX_JSON_BYTES", "1000")
    with pytest.raises(LldynError, match=r"data.jsonl:3.*line longer than 1,000 bytes"):
        load_preferences(str(path))
    assert len(load_preferences(str(path), limit=2)) == 2


def test_a_probe_set_over_the_row_limit_is_refused(tmp_path, monkeypatch):
    probe = {"prompt_id": "a", "prompt": "Hi?", "response": "Hello."}
    path = jsonl(tmp_path / "probes.jsonl", [{**probe, "family": "chosen"}, {**probe, "family": "rejected"}])
    assert len(ProbeSet.load(path)) == 2
    monkeypatch.setenv("LLDYN_MAX_ROWS", "1")
    with pytest.raises(LldynError, match="probes.jsonl.*more than 1 probes.*LLDYN_MAX_ROWS=1"):
        ProbeSet.load(path)


def test_held_out_prompts_for_the_judge_obey_the_limit(tmp_path, monkeypatch):
    from lldyn.judge import load_prompts

    path = jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Q{i}?"} for i in range(4)])
    monkeypatch.setenv("LLDYN_MAX_ROWS", "3")
    with pytest.raises(LldynError, match="prompts.jsonl.*more than 3 rows"):
        load_prompts(str(path))
    assert len(load_prompts(str(path), limit=3)) == 3
