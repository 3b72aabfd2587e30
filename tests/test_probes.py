"""Probe sets: every family for every prompt, the right sources, rephrasers, atomic files, bad input."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lldyn.data import PreferenceExample, load_preferences
from lldyn.errors import LldynError
from lldyn.probes import (FILE_FAMILIES, REPHRASE_FAMILIES, STATIC_FAMILIES, Probe, ProbeSet, build_probes,
                          load_sentences, shuffle_words, split_held_out)
from lldyn.rephrase import (INSTRUCTIONS, OpenAIRephraser, RephraseRequest, RuleRephraser, clean_reply,
                            rule_format, rule_semantic)


def run_cli(*args, env_extra=None):
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(Path.home()),
           **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "lldyn.cli", *args], capture_output=True, text=True, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def words(text: str) -> list[str]:
    return sorted(text.split())


SAME = "Yes, that is right."


@pytest.fixture()
def plain_pairs() -> list[PreferenceExample]:
    """Pairs with no curated rephrases; five share the chosen answer SAME, so other_chosen must skip them."""
    rows = [("p1", "Is the sky blue on a clear day?", SAME, "No, it is green."),
            ("p2", "Is water wet?", SAME, "Water is dry."),
            ("p3", "Do birds lay eggs?", SAME, "Birds never lay eggs."),
            ("p4", "Is ice cold?", SAME, "Ice is hot."),
            ("p5", "Is the sun a star?", SAME, "The sun is a planet."),
            ("p6", "Name a big city.", "Tokyo is a very big city.", "A city is small."),
            ("p7", "How do I start a garden?", "Begin with good soil, then plant seeds.", "Gardens are pointless."),
            ("p8", "What colour is grass?", "Grass is usually green.", "Grass is purple.")]
    return [PreferenceExample(i, p, c, r) for i, p, c, r in rows]


@pytest.fixture()
def held_out() -> list[PreferenceExample]:
    return [PreferenceExample("t1", "What do cows drink?", "Cows drink water every single day.", "Milk."),
            PreferenceExample("t2", "Name a fruit.", "An apple is a fruit.", "A carrot.")]


# --------------------------------------------------------------------------- families


def test_every_family_for_every_prompt_builtin():
    pairs = load_preferences("builtin")
    train = [p for p in pairs if p.extra.get("split") != "test"]
    test = [p for p in pairs if p.extra.get("split") == "test"]
    probes = build_probes(train, test, RuleRephraser(train), limit=40, seed=3)
    assert len(probes.prompt_ids) == 40 and len(probes) == 40 * len(STATIC_FAMILIES)
    by_id = {p.id: p for p in train}
    for pid in probes.prompt_ids:
        fams = [p.family for p in probes if p.prompt_id == pid]
        assert sorted(fams) == sorted(STATIC_FAMILIES), pid
        pair = by_id[pid]
        assert probes.get(pid, "chosen").response == pair.chosen
        assert probes.get(pid, "rejected").response == pair.rejected
        assert all(p.prompt == pair.prompt for p in probes if p.prompt_id == pid)
        for fam in REPHRASE_FAMILIES:  # the built-in data ships curated rephrases: used verbatim
            probe = probes.get(pid, fam)
            assert probe.method == "curated" and probe.response == pair.extra[fam]
        sentence = probes.get(pid, "random_sentence")
        assert sentence.response in load_sentences() and sentence.source_ids == ("sentences",)
    assert probes.prompt_ids == [p.id for p in train[:40]]  # the first --limit training pairs, in order


def test_spread_selection_takes_every_category_in_turn():
    """--select spread: the built-in file is sorted by category, so the first 32 are all capitals;
    a spread takes one pair of each of the 10 categories in turn, seeded, without repeats."""
    from collections import Counter

    from lldyn.probes import select_probe_pairs

    train = [p for p in load_preferences("builtin") if p.extra.get("split") != "test"]
    assert Counter(p.extra["category"] for p in select_probe_pairs(train, 32)) == Counter({"capital": 32})
    spread = select_probe_pairs(train, 32, "spread", seed=0)
    counts = Counter(p.extra["category"] for p in spread)
    assert len(counts) == 10 and max(counts.values()) - min(counts.values()) <= 1
    assert len({p.id for p in spread}) == 32
    assert [p.id for p in select_probe_pairs(train, 32, "spread", seed=0)] == [p.id for p in spread]
    assert [p.id for p in select_probe_pairs(train, 32, "spread", seed=1)] != [p.id for p in spread]
    assert len(select_probe_pairs(train, 10_000, "spread")) == len(train)  # more than there are: all of them
    plain = [PreferenceExample(f"q{i}", f"prompt {i}", "a", "b") for i in range(20)]  # no categories: a sample
    sample = select_probe_pairs(plain, 5, "spread", seed=0)
    assert len({p.id for p in sample}) == 5 and [p.id for p in sample] != ["q0", "q1", "q2", "q3", "q4"]
    with pytest.raises(LldynError, match="unknown probe selection"):
        select_probe_pairs(train, 3, "best")


@pytest.mark.parametrize("seed", range(8))
def test_other_chosen_never_equals_own_chosen(plain_pairs, held_out, seed):
    probes = build_probes(plain_pairs, held_out, RuleRephraser(plain_pairs, seed), seed=seed)
    by_id = {p.id: p for p in plain_pairs}
    for pid in probes.prompt_ids:
        other = probes.get(pid, "other_chosen")
        own = by_id[pid].chosen
        assert other.response.strip() != own.strip()
        (src,) = other.source_ids
        assert src != pid and by_id[src].chosen == other.response  # really another training prompt's y+


@pytest.mark.parametrize("seed", range(4))
def test_shuffles_are_permutations_of_the_right_words(plain_pairs, held_out, seed):
    probes = build_probes(plain_pairs, held_out, RuleRephraser(plain_pairs), seed=seed)
    test_by_id = {p.id: p for p in held_out}
    for pid in probes.prompt_ids:
        chosen = probes.get(pid, "chosen").response
        shuffled = probes.get(pid, "chosen_shuffled").response
        assert words(shuffled) == words(chosen) and shuffled != chosen
        test_chosen = probes.get(pid, "test_chosen")
        (src,) = test_chosen.source_ids
        assert src in test_by_id and test_chosen.response == test_by_id[src].chosen  # held out, not a training pair
        test_shuffled = probes.get(pid, "test_shuffled")
        assert test_shuffled.source_ids == (src,)
        assert words(test_shuffled.response) == words(test_chosen.response)
        assert test_shuffled.response != test_chosen.response


def test_shuffle_words_edge_cases():
    rng = random.Random(0)
    assert shuffle_words("same same same", rng) == "same same same"  # nothing to permute
    assert shuffle_words("one", rng) == "one"
    assert shuffle_words("left right", rng) == "right left"  # the only other permutation
    text = "a b c d e f"
    for _ in range(20):
        out = shuffle_words(text, rng)
        assert out != text and words(out) == words(text)


def test_split_held_out_is_disjoint_and_seeded(plain_pairs):
    train, test = split_held_out(plain_pairs, seed=1)
    assert {p.id for p in train} | {p.id for p in test} == {p.id for p in plain_pairs}
    assert not {p.id for p in train} & {p.id for p in test} and len(test) == 1  # round(0.15 * 8)
    assert split_held_out(plain_pairs, seed=1) == (train, test)
    with pytest.raises(LldynError, match="at least 3"):
        split_held_out(plain_pairs[:2], seed=0)


def test_build_refuses_overlapping_or_missing_held_out(plain_pairs, held_out):
    rule = RuleRephraser(plain_pairs)
    with pytest.raises(LldynError, match="also a training pair"):
        build_probes(plain_pairs, [plain_pairs[0]], rule)
    with pytest.raises(LldynError, match="no held-out pairs"):
        build_probes(plain_pairs, [], rule)
    with pytest.raises(LldynError, match="two training pairs with different chosen"):
        build_probes(plain_pairs[:5], held_out, rule)  # all five share one chosen answer


# --------------------------------------------------------------------------- rephrasers


def test_rule_semantic_hand_worked():
    assert rule_semantic("The big city is very quick.") == ("The large town is really fast.", "rule:synonyms")
    assert rule_semantic("If it rains, take an umbrella.") == ("Take an umbrella, if it rains.", "rule:clause_reorder")
    assert rule_semantic("Tokyo glows.") == ("Put differently, tokyo glows.", "rule:lead_in")
    assert rule_semantic("NASA launched it.") == ("Put differently, NASA launched it.", "rule:lead_in")


def test_rule_format_keeps_shape_changes_content():
    vocab = ["apple", "river", "mountain", "yellow"]
    text = "The capital of France is Paris."
    out, how = rule_format(text, vocab, random.Random(0))
    assert how == "rule:content_swap"
    a, b = text.rstrip(".").split(), out.rstrip(".").split()
    assert len(a) == len(b) and out.endswith(".")
    for old, new in zip(a, b):
        if old.lower() in ("the", "of", "is"):
            assert new == old  # function words stay: the format is kept
        else:
            assert new.lower() in vocab and new[0].isupper() == old[0].isupper()  # content words swapped
    assert rule_format("It is so.", vocab, random.Random(0)) == ("so. is It", "rule:word_order")


def test_rule_rephraser_deterministic_for_a_seed(plain_pairs, held_out):
    def build(seed):
        return build_probes(plain_pairs, held_out, RuleRephraser(plain_pairs, seed), seed=seed).rows()

    first = build(5)
    assert build(5) == first
    other = build(6)
    fmt = lambda rows: [r["response"] for r in rows if r["family"].endswith("_format")]  # noqa: E731
    assert fmt(other) != fmt(first)  # the seed drives the format rewrites
    assert all(r["method"].startswith("rule:") for r in first if r["family"] in REPHRASE_FAMILIES)


def test_clean_reply_and_paper_instructions():
    assert clean_reply('Rewritten response: "Paris is the capital."\n\nHope this helps!') == "Paris is the capital."
    assert clean_reply("  Answer: fine  ") == "fine"
    assert "use different words as much as possible while keeping the meaning unchanged" in INSTRUCTIONS["semantic"].lower()
    assert "change the meaning as much as possible while keeping the format" in INSTRUCTIONS["format"].lower()


def test_hf_rephraser_asks_a_local_model_with_the_paper_instructions(plain_pairs, held_out):
    from lldyn.generation import GenerationConfig, generate
    from lldyn.models import ModelConfig, load_model
    from lldyn.rephrase import HFRephraser, instruction_message

    reph = HFRephraser("tiny-random-llama", max_new_tokens=8)
    probes = build_probes(plain_pairs[5:], held_out, reph, seed=0)
    lm = load_model(ModelConfig(name="tiny-random-llama"))
    for pid in probes.prompt_ids:
        chosen = probes.get(pid, "chosen").response
        for fam, mode in (("chosen_rephrase_semantic", "semantic"), ("chosen_rephrase_format", "format")):
            probe = probes.get(pid, fam)
            (reply,) = generate(lm.model, lm.tokenizer, [instruction_message(chosen, mode)],
                                GenerationConfig(max_new_tokens=8))
            assert probe.method == "hf:tiny-random-llama" and probe.response == clean_reply(reply)


class _ChatServer:
    """A local OpenAI-compatible endpoint (no network): records requests, answers a fixed rewrite."""

    def __init__(self, status: int = 200):
        self.requests: list[tuple[dict, dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append((dict(self.headers), body))
                text = body["messages"][0]["content"].rsplit("Response: ", 1)[1]
                payload = json.dumps({"choices": [{"message": {"content": f'Rewritten response: "{text.upper()}"'}}]})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_openai_rephraser_against_a_local_endpoint(plain_pairs, held_out, tmp_path, monkeypatch):
    server = _ChatServer()
    try:
        monkeypatch.setenv("MY_KEY", "sk-secret-123")
        reph = OpenAIRephraser("tiny-chat", server.url, api_key_env="MY_KEY")
        probes = build_probes(plain_pairs[4:], held_out, reph, seed=0)
    finally:
        server.close()
    assert len(server.requests) == 4 * 4  # four rewrites per probe prompt
    headers, body = server.requests[0]
    assert headers["Authorization"] == "Bearer sk-secret-123"
    assert body["model"] == "tiny-chat" and body["temperature"] == 0
    assert INSTRUCTIONS["semantic"] in body["messages"][0]["content"]
    for pid in probes.prompt_ids:
        chosen = probes.get(pid, "chosen").response
        assert probes.get(pid, "chosen_rephrase_semantic").response == chosen.upper()
        assert probes.get(pid, "chosen_rephrase_format").method == "openai:tiny-chat"
    saved = probes.save(tmp_path / "probes.jsonl").read_text()
    assert "sk-secret" not in saved  # the key is never written


def test_openai_rephraser_http_error_names_the_key_variable(plain_pairs):
    server = _ChatServer(status=401)
    try:
        reph = OpenAIRephraser("m", server.url + "/v1", api_key_env="NO_SUCH_KEY_VAR")
        with pytest.raises(LldynError, match="HTTP 401.*NO_SUCH_KEY_VAR"):
            reph.rephrase([RephraseRequest(plain_pairs[0], "chosen", "semantic")])
    finally:
        server.close()


# --------------------------------------------------------------------------- files


def test_probe_file_round_trip_and_atomic_write(plain_pairs, held_out, tmp_path, monkeypatch):
    probes = build_probes(plain_pairs, held_out, RuleRephraser(plain_pairs), seed=0)
    path = probes.save(tmp_path / "probes.jsonl")
    loaded = ProbeSet.load(path)
    assert loaded.probes == probes.probes and loaded.fingerprint() == probes.fingerprint()
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [p.id for p in probes]
    assert sorted(os.listdir(tmp_path)) == ["probes.jsonl"]  # no temp file left behind
    before = path.read_bytes()

    def crash(fd):  # the disk fails while the new file is being written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("lldyn.io.os.fsync", crash)
    other = build_probes(plain_pairs, held_out, RuleRephraser(plain_pairs, 9), seed=9)
    with pytest.raises(LldynError, match="cannot write: No space left"):
        other.save(path)
    assert path.read_bytes() == before  # the old file is intact, never half-written
    assert sorted(os.listdir(tmp_path)) == ["probes.jsonl"]


def test_probe_set_invariants():
    p = lambda pid, fam: Probe(pid, fam, "x?", "y.")  # noqa: E731
    with pytest.raises(LldynError, match="unknown probe family 'argmax'"):
        ProbeSet((p("a", "chosen"), p("a", "argmax")))
    with pytest.raises(LldynError, match="duplicate probe id 'a/chosen'"):
        ProbeSet((p("a", "chosen"), p("a", "chosen")))
    with pytest.raises(LldynError, match="prompt 'b' has no 'chosen'"):
        ProbeSet((p("a", "chosen"), p("b", "rejected")))
    ok = ProbeSet((p("a", "chosen"), p("a", "initial_sample"), p("b", "chosen")))
    assert ok.families == ["chosen", "initial_sample"] and ok.select(["b"]).prompt_ids == ["b"]
    assert set(FILE_FAMILIES) == set(STATIC_FAMILIES) | {"initial_sample"}


# --------------------------------------------------------------------------- the real CLI


def test_cli_build_then_check(tmp_path):
    out = tmp_path / "probes.jsonl"
    code, stdout, stderr = run_cli("probes", "build", "--data", "builtin", "--out", str(out), "--limit", "5",
                                   "--seed", "2")
    assert code == 0, stderr
    assert "5 prompts, 55 probes" in stdout
    probes = ProbeSet.load(out)
    assert len(probes.prompt_ids) == 5
    test_ids = {p.id for p in load_preferences("builtin:test")}
    assert all(p.source_ids[0] in test_ids for p in probes if p.family == "test_chosen")  # the data's own test split
    code, stdout, _ = run_cli("probes", "check", str(out))
    assert code == 0 and "5 prompts, 55 probes" in stdout
    again = tmp_path / "again.jsonl"
    assert run_cli("probes", "build", "--data", "builtin", "--out", str(again), "--limit", "5", "--seed", "2")[0] == 0
    assert again.read_bytes() == out.read_bytes()  # same seed, same file


def _probe_lines(n_prompts: int = 2) -> list[dict]:
    rows = []
    for i in range(n_prompts):
        for fam in ("chosen", "rejected"):
            rows.append({"id": f"q{i}/{fam}", "prompt_id": f"q{i}", "family": fam, "prompt": "Hi?", "response": "Hello."})
    return rows


@pytest.mark.parametrize("case", ["unknown_family", "argmax_stored", "duplicate_id", "missing_field", "id_mismatch",
                                  "not_object", "no_chosen", "source_ids_string", "method_not_text"])
def test_cli_check_bad_probe_file(tmp_path, case):
    rows = _probe_lines()
    expect = {"unknown_family": ["bad.jsonl:3", "field 'family'", "unknown probe family 'chosen_paraphrase'"],
              "argmax_stored": ["bad.jsonl:3", "field 'family'", "evaluation time"],
              "duplicate_id": ["bad.jsonl:4", "field 'id'", "duplicate probe id 'q0/chosen' (first on line 1)"],
              "missing_field": ["bad.jsonl:2", "field 'response'", "missing field"],
              "id_mismatch": ["bad.jsonl:1", "field 'id'", "does not match"],
              "not_object": ["bad.jsonl:2", "JSON object"],
              "no_chosen": ["bad.jsonl", "field 'family'", "prompt 'q1' has no 'chosen'"],
              "source_ids_string": ["bad.jsonl:2", "field 'source_ids'", "bad source_ids 'a12'", "a list of example ids"],
              "method_not_text": ["bad.jsonl:1", "field 'method'", "bad method 3"]}[case]
    if case == "unknown_family":
        rows[2]["family"], rows[2]["id"] = "chosen_paraphrase", "q1/chosen_paraphrase"
    elif case == "argmax_stored":
        rows[2]["family"], rows[2]["id"] = "argmax", "q1/argmax"
    elif case == "duplicate_id":
        rows[3] = dict(rows[0])
    elif case == "missing_field":
        del rows[1]["response"]
    elif case == "id_mismatch":
        rows[0]["id"] = "q0/rejected"
    elif case == "no_chosen":
        rows = [r for r in rows if r["id"] != "q1/chosen"]
    elif case == "source_ids_string":
        rows[1]["source_ids"] = "a12"  # was read as ('a', '1', '2')
    elif case == "method_not_text":
        rows[0]["method"] = 3
    lines = [json.dumps(r) for r in rows]
    if case == "not_object":
        lines[1] = "[1, 2]"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    code, stdout, stderr = run_cli("probes", "check", str(bad))
    assert code == 2 and "Traceback" not in stderr
    (line,) = stderr.strip().splitlines()  # one clear line
    assert line.startswith("lldyn probes: error:")
    for piece in expect:
        assert piece in line, line


@pytest.mark.parametrize("case", ["missing_data", "missing_test_data", "unreachable_endpoint", "unknown_rephraser",
                                  "bad_limit"])
def test_cli_build_bad_input_leaves_no_file(tmp_path, case):
    out = tmp_path / "probes.jsonl"
    args = ["probes", "build", "--data", "builtin", "--out", str(out), "--limit", "3"]
    expect = {"missing_data": ["nope.jsonl", "data file not found"],
              "missing_test_data": ["held.jsonl", "not found"],
              "unreachable_endpoint": ["http://127.0.0.1:9/v1/chat/completions", "field 'base-url'",
                                       "cannot reach rephrase endpoint"],
              "unknown_rephraser": ["field 'rephraser'", "unknown rephraser 'gpt'"],
              "bad_limit": ["field 'limit'", "--limit must be >= 1"]}[case]
    if case == "missing_data":
        args[3] = str(tmp_path / "nope.jsonl")
    elif case == "missing_test_data":
        args += ["--test-data", str(tmp_path / "held.jsonl")]
    elif case == "unreachable_endpoint":
        args += ["--rephraser", "openai:gpt-4o-mini", "--base-url", "http://127.0.0.1:9"]
    elif case == "unknown_rephraser":
        args += ["--rephraser", "gpt"]
    elif case == "bad_limit":
        args[-1] = "0"
    code, stdout, stderr = run_cli(*args, env_extra={"OPENAI_API_KEY": "sk-never-printed"})
    assert code == 2 and "Traceback" not in stderr
    (line,) = stderr.strip().splitlines()  # one clear line (no progress bar drawn before the failure)
    assert line.startswith("lldyn probes: error:")
    for piece in expect:
        assert piece in line, line
    assert "sk-never-printed" not in stderr
    assert os.listdir(tmp_path) == []  # no partial or temp file
