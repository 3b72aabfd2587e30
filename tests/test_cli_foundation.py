"""`lldyn score` end to end, and the foundation's bad-input cases through the real CLI (exit 2, one line)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lldyn.cli import main


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "lldyn.cli", *args], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                               "HOME": str(__import__("pathlib").Path.home())})
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture()
def pairs_file(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"id": "a", "prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome."}) + "\n"
                 + json.dumps({"id": "b", "prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n")
    return f


def test_help_lists_subcommands():
    code, out, _ = run_cli("--help")
    assert code == 0 and "score" in out


def test_score_writes_rows(tmp_path, pairs_file, capsys):
    out = tmp_path / "o.jsonl"
    assert main(["score", "--model", "tiny-random-llama", "--data", str(pairs_file), "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["id"], r["kind"]) for r in rows] == [("a", "chosen"), ("a", "rejected"), ("b", "chosen"), ("b", "rejected")]
    assert all(r["logp"] < 0 and r["n_tokens"] >= 2 for r in rows)
    raw = tmp_path / "raw.jsonl"
    assert main(["score", "--model", "tiny-random-llama", "--data", str(pairs_file), "--out", str(raw), "--raw"]) == 0
    assert json.loads(raw.read_text().splitlines()[0])["logp"] != rows[0]["logp"]  # no chat template
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    assert main(["score", "--model", "tiny-random-llama", "--data", str(sft), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["kind"] == "response"
    # --skip-invalid on SFT data: still read as SFT data (its rows are not "invalid pairs"), bad rows skipped
    sft.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n" + json.dumps({"prompt": "q", "response": ""})
                   + "\n" + json.dumps({"prompt": "s", "response": "t"}) + "\n")
    assert main(["score", "--model", "tiny-random-llama", "--data", str(sft), "--out", str(out), "--skip-invalid"]) == 0
    assert [json.loads(x)["kind"] for x in out.read_text().splitlines()] == ["response", "response"]


def test_score_counts_truncated_rows(tmp_path, capsys):
    """The truncation policy is applied, counted in the output rows and printed, never silent."""
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text(json.dumps({"id": "a", "prompt": "Capital of France?", "chosen": "Paris. " * 30,
                                      "rejected": "Rome."}) + "\n"
                          + json.dumps({"id": "b", "prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n")
    out = tmp_path / "o.jsonl"
    assert main(["score", "--model", "tiny-random-llama", "--data", str(pairs_file), "--out", str(out),
                 "--max-length", "40", "--max-prompt-tokens", "30"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    full = tmp_path / "full.jsonl"
    assert main(["score", "--model", "tiny-random-llama", "--data", str(pairs_file), "--out", str(full)]) == 0
    lengths = {(r["id"], r["kind"]): r["n_tokens"] for r in map(json.loads, full.read_text().splitlines())}
    n_cut = sum(r["truncated"] for r in rows)
    assert n_cut >= 1 and not all(r["truncated"] for r in rows)
    for r in rows:  # untouched rows keep every token; a cut response (prompts cut too count) keeps fewer
        assert r["n_tokens"] == lengths[(r["id"], r["kind"])] or r["truncated"]
    assert any(r["n_tokens"] < lengths[(r["id"], r["kind"])] for r in rows)
    assert f"({n_cut} truncated by the max-length policy)" in capsys.readouterr().out


STRICT_TEMPLATE = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                   "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}"
                   "{% endif %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
                   "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")


@pytest.mark.parametrize("case", ["template_refuses", "corrupt_weights"])
def test_model_side_bad_input_is_one_clear_line(tmp_path, case):
    """A conversation the model's chat template refuses, and truncated weights: one line, exit 2."""
    from lldyn.models import build_tiny_model, build_tiny_tokenizer

    model_dir = tmp_path / "model"
    build_tiny_model(0).save_pretrained(model_dir)
    tok = build_tiny_tokenizer()
    tok.chat_template = STRICT_TEMPLATE
    tok.save_pretrained(model_dir)
    data = tmp_path / "chat.jsonl"
    prompt = [{"role": "user", "content": "hi"}]
    if case == "template_refuses":
        prompt = [{"role": "user", "content": "hi"}, {"role": "user", "content": "again?"}]
    else:
        weights = model_dir / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    data.write_text(json.dumps({"prompt": "fine", "chosen": "a", "rejected": "b"}) + "\n"
                    + json.dumps({"prompt": prompt, "chosen": "yes", "rejected": "no"}) + "\n")
    out = tmp_path / "o.jsonl"
    code, _, stderr = run_cli("score", "--model", str(model_dir), "--data", str(data), "--out", str(out))
    assert code == 2 and "Traceback" not in stderr, stderr
    line = stderr.strip().splitlines()[-1]
    expect = {"template_refuses": ["chat.jsonl:2", "'prompt'", "chat template refused", "must alternate", "expected"],
              "corrupt_weights": [str(model_dir), "cannot read the model's weights", "expected"]}[case]
    for piece in expect:
        assert piece in line, line
    assert not out.exists()


@pytest.mark.parametrize("case", ["malformed", "missing", "empty_field", "not_string", "unknown_format", "empty_file",
                                  "long_prompt", "unknown_model", "bad_gguf", "missing_gguf"])
def test_bad_input_one_clear_line_exit_2_nothing_written(tmp_path, pairs_file, case):
    data, model, extra = str(pairs_file), "tiny-random-llama", []
    bad = tmp_path / "bad.jsonl"
    rows = {"malformed": '{"prompt": "p", "chosen": "c",', "missing": '{"prompt": "p", "chosen": "c"}',
            "empty_field": '{"prompt": "p", "chosen": "c", "rejected": ""}',
            "not_string": '{"prompt": "p", "chosen": "c", "rejected": ["x"]}'}
    expect = {"malformed": ["bad.jsonl:2", "malformed JSON"], "missing": ["bad.jsonl:2", "'rejected'", "missing"],
              "empty_field": ["bad.jsonl:2", "'rejected'", "empty"],
              "not_string": ["bad.jsonl:2", "'rejected[0]'", "chat message"],
              "unknown_format": ["data.csv", "unknown data file format"], "empty_file": ["bad.jsonl", "no preference"],
              "long_prompt": ["pairs.jsonl:1", "'prompt'", "max_length"], "unknown_model": ["unknown model", "expected"],
              "bad_gguf": ["m.gguf", "cannot read GGUF"], "missing_gguf": ["GGUF file not found"]}[case]
    if case in rows:
        bad.write_text('{"prompt": "ok", "chosen": "a", "rejected": "b"}\n' + rows[case] + "\n")
        data = str(bad)
    elif case == "unknown_format":
        data = str(tmp_path / "data.csv")
        (tmp_path / "data.csv").write_text("prompt,chosen\n")
    elif case == "empty_file":
        bad.write_text("")
        data = str(bad)
    elif case == "long_prompt":
        extra = ["--max-length", "8"]
    elif case == "unknown_model":
        model = "no-such-model-alias"
    elif case == "bad_gguf":
        (tmp_path / "m.gguf").write_bytes(b"GGUF\x03\x00garbage")
        model = str(tmp_path / "m.gguf")
    elif case == "missing_gguf":
        model = str(tmp_path / "absent.gguf")
    out = tmp_path / "out.jsonl"
    code, stdout, stderr = run_cli("score", "--model", model, "--data", data, "--out", str(out), *extra)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("lldyn score: error:")
    for piece in expect:
        assert piece in line, line
    assert not out.exists()
