"""Judge and preference sources (issue 8.2, issue 5.3): the parser on real-looking answers, both orders,
the win rate and its bootstrap interval, reward functions, and the OpenAI-compatible client against a
real HTTP server (``lldyn serve`` in a subprocess, serving the tiny model) — never a mocked client."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from lldyn.cli import main
from lldyn.errors import LldynError
from lldyn.judge import PairJudgement, bootstrap_ci, judge_both_orders, load_prompts, win_rate
from lldyn.preferences import Judgement, PreferenceSource, judge_message, load_preference_source, parse_judgement
from lldyn.runs import is_run_dir, load_model_or_run

SECRET = "sk-lldyn-test-SECRET-4242"
SERVER_KEY_ENV = "LLDYN_TEST_SERVER_KEY"


# --------------------------------------------------------------------------- reward functions for module:function


def length_reward(prompt: str, response: str) -> float:
    """Longer is better (a stand-in reward model)."""
    return float(len(response))


def constant_reward(prompt: str, response: str) -> float:
    return 1.0


def text_reward(prompt: str, response: str):
    return "high"


def failing_reward(prompt: str, response: str) -> float:
    raise ValueError("reward model offline")


REWARD = f"{__name__}:length_reward"


# --------------------------------------------------------------------------- the parser

PARSER_TABLE = [
    ("Comparison: Response A answers the question directly while B is off-topic.\nMore helpful: A", 0),
    ("Comparison: B names the capital and A does not.\nMore helpful: B", 1),
    ("**Comparison:** A is vague.\n**More helpful:** B", 1),
    ('Comparison: A is shorter.\nMore helpful: "A"', 0),
    ("More helpful: Response B.", 1),
    ("More helpful: [A]", 0),
    ("More helpful:\nA", 0),
    ("more helpful: b", 1),
    ("Comparison: both fine. More helpful: A", 0),
    ("More helpful: A (it is more specific than B)", 0),
    ("Comparison: Response A is more helpful: it names Berlin.\nMore helpful: A", 0),
    ("Comparison: B gives a correct answer - A is wrong.\nMore helpful: B", 1),
    ('Comparison: A.\nMore helpful: <"A" or "B">\nMore helpful: A', 0),
    ("Comparison: Response A is clearer.\nA", 0),
    ("B", 1),
    ("Winner: B", 1),
    ("Verdict: [[B]]", 1),
    ("I think [[A]] is better.", 0),
    ("Response B is more helpful because it names the city.", 1),
    # SmolLM2-135M-Instruct's own answers to the instruction (lldyn judge --judge hf:, builtin:test)
    ('A: The answer to the question "Which response is more helpful?" is A.', 0),
    ('A: The answer to the question "Which response is more helpful?" is: "A"', 0),
    ("A: The capital of Ireland is Dublin.\n\nB: The capital of Ireland is Dublin.", None),
    ('A: VANULA is the capital of Vietnam.\nB: \ufffdw\x1aXg\ufffd\ufffd\ufffd', None),
    # malformed, ties and contradictions are invalid (None), never an exception
    ('More helpful: <"A" or "B">', None),
    ("More helpful: A or B", None),
    ("More helpful: Neither", None),
    ("More helpful: Both", None),
    ("More helpful: tie", None),
    ("Comparison: The two responses are identical.\nMore helpful: Both are equally helpful.", None),
    ("More helpful: A\nMore helpful: B", None),
    ("More helpful: a response that explains more", None),
    ("Response A is clearer and more polite than B.", None),
    ("Response A is better. Response B is more helpful.", None),
    ("The answer is A.", None),
    ("b", None),
    ("", None),
    ("   \n  ", None),
    ("\x00\x13ÿ garbage ¤¤ bytes \ufffd", None),
    (None, None),
]


@pytest.mark.parametrize("text,expected", PARSER_TABLE)
def test_parser_reads_real_looking_answers(text, expected):
    assert parse_judgement(text) == expected


def test_parser_never_raises_on_junk():
    import random

    rng = random.Random(0)
    alphabet = "AB ab:\n*\"'[]<>()-Moreh lpfu,." + "".join(chr(c) for c in range(0, 300, 7))
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert parse_judgement(text) in (0, 1, None)
    for junk in (b"More helpful: A", 3, ["A"], {"choice": "A"}):
        assert parse_judgement(junk) is None


def test_judge_message_is_the_paper_instruction_with_the_history():
    msg = judge_message([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                         {"role": "user", "content": "Capital of France?"}], "Paris.", "Rome.")
    assert "which response is more helpful?" in msg
    assert "History:\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Capital of France?" in msg
    assert "Response A: Paris.\n\nResponse B: Rome." in msg
    assert "FIRST provide a one-sentence comparison" in msg and msg.endswith('More helpful: <"A" or "B">')


# --------------------------------------------------------------------------- scoring both orders, win rate


class FixedSource(PreferenceSource):
    """Answers from a list, in call order (to build hand-worked cases)."""

    def __init__(self, choices):
        self.choices = list(choices)

    def judge_batch(self, items, progress=False):
        return [Judgement(self.choices.pop(0), "scripted") for _ in items]


def test_win_rate_hand_worked():
    # (ab, ba) choices; A's score per order: ab 0 → 1, ab 1 → 0; ba 1 → 1, ba 0 → 0; None → 0.5.
    cases = [(0, 1), (1, 0), (0, 0), (None, 1), (None, None)]
    pairs = [PairJudgement(Judgement(ab, ""), Judgement(ba, "")) for ab, ba in cases]
    assert [p.score_a for p in pairs] == [1.0, 0.0, 0.5, 0.75, 0.5]
    assert [p.preferred for p in pairs] == [0, 1, None, None, None]
    result = win_rate(pairs, n_resamples=500, seed=0)
    assert result.win_rate == pytest.approx(2.75 / 5)
    assert (result.a_wins, result.b_wins, result.split, result.invalid) == (1, 1, 3, 3)
    assert result.n_judgements == 10
    assert result.first_position_rate == pytest.approx(4 / 7)  # valid choices 0,1,1,0,0,0,1: four chose the first
    assert result.ci_low <= result.win_rate <= result.ci_high


def test_judge_both_orders_swaps_the_responses():
    seen = []

    class Recorder(PreferenceSource):
        def judge_batch(self, items, progress=False):
            seen.extend(items)
            return [Judgement(0, "first") for _ in items]  # a judge that always picks the first shown

    pairs = judge_both_orders(Recorder(), [("p1", "a1", "b1"), ("p2", "a2", "b2")])
    assert seen == [("p1", "a1", "b1"), ("p2", "a2", "b2"), ("p1", "b1", "a1"), ("p2", "b2", "a2")]
    assert all(p.score_a == 0.5 and p.preferred is None for p in pairs)  # pure position bias is a tie
    assert win_rate(pairs).first_position_rate == 1.0


def test_bootstrap_interval_matches_the_normal_approximation_and_is_seeded():
    scores = [0.0, 1.0] * 200  # mean 0.5, standard error 0.5 / sqrt(400) = 0.025
    low, high = bootstrap_ci(scores, n_resamples=4000, seed=1)
    assert low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.01)
    assert high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.01)
    assert bootstrap_ci(scores, n_resamples=4000, seed=1) == (low, high)
    assert bootstrap_ci([0.75] * 30) == (0.75, 0.75)


# --------------------------------------------------------------------------- reward-function source


def test_reward_function_source_prefers_higher_reward():
    source = load_preference_source(REWARD)
    assert source.prefer("q", "short", "much longer") == 1
    assert source.prefer("q", "much longer", "short") == 0
    assert source.prefer("q", "same", "size") is None  # equal rewards: a tie
    assert source.judge("q", "ab", "abc").raw_text == "reward A=2.0 B=3.0"
    pairs = judge_both_orders(source, [(f"q{i}", "x" * (i + 2), "y") for i in range(5)])
    result = win_rate(pairs, seed=0)
    assert (result.win_rate, result.ci_low, result.ci_high, result.a_wins) == (1.0, 1.0, 1.0, 5)
    tie = win_rate(judge_both_orders(load_preference_source(f"{__name__}:constant_reward"), [("q", "a", "bb")]))
    assert tie.win_rate == 0.5 and tie.invalid == 2


@pytest.mark.parametrize("spec,message", [
    ("no_such_module_xyz:f", "cannot import reward module"),
    (f"{__name__}:no_such_function", "has no function"),
    ("gpt4", "unknown judge"),
    ("openai:", "missing model name"),
])
def test_bad_preference_specs(spec, message):
    with pytest.raises(LldynError, match=message):
        load_preference_source(spec)


@pytest.mark.parametrize("fn,message", [("text_reward", "returned str"), ("failing_reward", "reward model offline")])
def test_reward_function_problems_are_one_clear_error(fn, message):
    source = load_preference_source(f"{__name__}:{fn}")
    with pytest.raises(LldynError, match=message):
        source.prefer("q", "a", "b")


def test_hf_judge_on_identical_responses_is_a_tie():
    source = load_preference_source("hf:tiny-random-llama", max_tokens=6)
    pairs = judge_both_orders(source, [("2+2?", "4", "4")])
    assert all(isinstance(j.raw_text, str) for p in pairs for j in (p.ab, p.ba))
    result = win_rate(pairs)
    assert result.win_rate == 0.5 and result.ci_low <= 0.5 <= result.ci_high


def test_logprob_judge_is_the_engines_forced_choice_between_the_verdict_lines():
    """--judge-mode logprob: the likelier of 'More helpful: A' / 'More helpful: B' as the judge's reply to the
    instruction wins; both log-probs are in the raw text; identical responses give exactly 0.5."""
    from lldyn.preferences import VERDICTS, _judge_messages
    from lldyn.scoring import ScoreRequest, score

    source = load_preference_source("hf:tiny-random-llama", judge_mode="logprob")
    items = [("2+2?", "4", "5"), ("Capital of France?", "Paris.", "I like turtles.")]
    judged = source.judge_batch(items)
    for item, j in zip(items, judged):
        la, lb = (r.logp for r in score(source.lm.model, source.lm.tokenizer,
                                        [ScoreRequest(_judge_messages(*item), v) for v in VERDICTS]))
        assert j.choice == (0 if la > lb else 1)
        assert f"{la:.4f}" in j.raw_text and f"{lb:.4f}" in j.raw_text
    pairs = judge_both_orders(source, [("2+2?", "4", "4")])
    assert win_rate(pairs).win_rate == 0.5 and pairs[0].ab.choice is not None
    assert source.describe()["judge_mode"] == "logprob"
    with pytest.raises(LldynError, match="needs a local judge"):
        load_preference_source("openai:m", judge_mode="logprob")
    with pytest.raises(LldynError, match="unknown judge mode"):
        load_preference_source("hf:tiny-random-llama", judge_mode="vibes")


# --------------------------------------------------------------------------- prompts and models


def test_load_prompts_from_prompt_rows_and_preference_data(tmp_path):
    f = tmp_path / "prompts.jsonl"
    f.write_text(json.dumps({"id": "x", "prompt": "Hi?"}) + "\n"
                 + json.dumps({"prompt": [{"role": "user", "content": "2+2?"}]}) + "\n"
                 + json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n")
    prompts = load_prompts(str(f))
    assert [p.id for p in prompts] == ["x", "prompts-1", "prompts-2"]
    assert prompts[1].prompt == [{"role": "user", "content": "2+2?"}]
    assert len(load_prompts("builtin:test", limit=3)) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"question": "no prompt"}) + "\n")
    with pytest.raises(LldynError, match=r"bad.jsonl:2.*'prompt'"):
        load_prompts(str(bad))


def test_run_directory_loads_the_trained_weights(tmp_path):
    import torch

    import lldyn.train as train

    from lldyn.models import ModelConfig, load_model

    run = tmp_path / "run"
    train.train(train.TrainConfig(method="sft", model="tiny-random-llama", data="builtin:train", limit=4, steps=1,
                                  batch_size=2, lr=1e-2, out=str(run), eval_every=0))

    assert is_run_dir(str(run)) and not is_run_dir(str(tmp_path))
    trained = load_model_or_run(str(run)).model
    base = load_model(ModelConfig(name="tiny-random-llama")).model
    assert max((p - q).abs().max().item() for p, q in zip(trained.parameters(), base.parameters())) > 1e-3
    assert all(torch.equal(p, q) for p, q in zip(load_model_or_run(str(run)).model.parameters(), trained.parameters()))


# --------------------------------------------------------------------------- a real OpenAI-compatible server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``lldyn serve`` in a subprocess on a free port, serving tiny-random-llama, requiring SECRET as Bearer key."""
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", SERVER_KEY_ENV: SECRET}
    env.pop("OPENAI_API_KEY", None)
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "lldyn.cli", "serve", "--model", "tiny-random-llama", "--port",
                                 "0", "--name", "tiny", "--api-key-env", SERVER_KEY_ENV],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    line = proc.stdout.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
    if not match:
        proc.kill()
        pytest.fail(f"lldyn serve did not start: {line!r} {log.read_text()[-2000:]}")
    yield match.group(1)
    proc.terminate()
    proc.wait(timeout=20)


def _post(url, body, key=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url + "/chat/completions", data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def test_server_answers_with_the_real_model_and_honours_max_tokens(server, tiny):
    from lldyn.generation import GenerationConfig, generate

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = _post(server, {"model": "tiny", "messages": messages, "max_tokens": 5}, key=SECRET)
    text = reply["choices"][0]["message"]["content"]
    expected = generate(tiny.model, tiny.tokenizer, [messages], GenerationConfig(max_new_tokens=5,
                                                                                 max_prompt_tokens=1024 - 5))[0]
    assert text == expected  # greedy: the same text as generating in this process with the same weights
    assert reply["object"] == "chat.completion" and reply["choices"][0]["finish_reason"] in ("stop", "length")
    longer = _post(server, {"messages": messages, "max_tokens": 12}, key=SECRET)
    assert longer["choices"][0]["message"]["content"] == generate(
        tiny.model, tiny.tokenizer, [messages], GenerationConfig(max_new_tokens=12, max_prompt_tokens=1024 - 12))[0]
    req = urllib.request.Request(server + "/models", headers={"Authorization": f"Bearer {SECRET}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert json.loads(resp.read())["data"][0]["id"] == "tiny"
    with pytest.raises(urllib.error.HTTPError) as bad:
        _post(server, {"messages": messages, "max_tokens": 0}, key=SECRET)
    assert bad.value.code == 400


def test_server_refuses_a_missing_or_wrong_key(server):
    for key in (None, "sk-wrong"):
        with pytest.raises(urllib.error.HTTPError) as err:
            _post(server, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, key=key)
        assert err.value.code == 401


def test_openai_client_sends_the_environment_key_as_bearer(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    source = load_preference_source("openai:tiny", base_url=server, max_tokens=8)
    assert SECRET not in json.dumps(source.describe()) and SECRET not in repr(vars(source))
    judgement = source.judge("Capital of France?", "Paris.", "Rome.")  # the server answers only with the key
    assert isinstance(judgement.raw_text, str) and judgement.choice == parse_judgement(judgement.raw_text)
    for key in ("sk-wrong-key-777", None):
        if key is None:
            monkeypatch.delenv("OPENAI_API_KEY")
        else:
            monkeypatch.setenv("OPENAI_API_KEY", key)
        with pytest.raises(LldynError) as err:
            source.judge("Capital of France?", "Paris.", "Rome.")
        assert "HTTP 401" in str(err.value) and "OPENAI_API_KEY" in str(err.value)
        assert SECRET not in str(err.value) and "sk-wrong-key-777" not in str(err.value)


def test_judge_cli_identical_models_against_the_server(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    out = tmp_path / "judged"
    code = main(["judge", "--a", "tiny-random-llama", "--b", "tiny-random-llama", "--prompts", "builtin:test",
                 "--judge", "openai:tiny", "--base-url", server, "--limit", "2", "--max-new-tokens", "8",
                 "--judge-max-tokens", "8", "--out", str(out)])
    assert code == 0
    rows = [json.loads(x) for x in (out / "judgements.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    assert sorted((r["prompt_id"], r["order"]) for r in rows) == sorted(
        (pid, order) for pid in {r["prompt_id"] for r in rows} for order in ("ab", "ba"))
    assert all(isinstance(r["raw_text"], str) and r["choice"] == parse_judgement(r["raw_text"]) for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["win_rate"] == 0.5 and summary["ci_low"] <= 0.5 <= summary["ci_high"]
    assert summary["invalid"] == sum(r["choice"] is None for r in rows)
    assert summary["judge"] == "openai:tiny" and summary["base_url"].startswith("http://127.0.0.1:")
    for f in out.iterdir():
        assert SECRET not in f.read_text()
    assert SECRET not in capsys.readouterr().out


def test_judge_cli_with_a_reward_function_matches_a_hand_count(tmp_path, tiny):
    from lldyn.generation import GenerationConfig, generate
    from lldyn.models import ModelConfig, build_tiny_model, build_tiny_tokenizer, load_model

    other = tmp_path / "tiny-seed1"
    build_tiny_model(seed=1).save_pretrained(other)
    build_tiny_tokenizer().save_pretrained(other)
    out = tmp_path / "judged"
    assert main(["judge", "--a", "tiny-random-llama", "--b", str(other), "--prompts", "builtin:test", "--limit", "4",
                 "--judge", REWARD, "--max-new-tokens", "8", "--out", str(out)]) == 0
    prompts = [p.prompt for p in load_prompts("builtin:test", limit=4)]
    cfg = GenerationConfig(max_new_tokens=8)
    ra = generate(tiny.model, tiny.tokenizer, prompts, cfg)
    lm_b = load_model(ModelConfig(name=str(other)))
    rb = generate(lm_b.model, lm_b.tokenizer, prompts, cfg)
    assert ra != rb  # two different models, so the count below is not a tie by construction
    expected = sum(1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5 for a, b in zip(ra, rb)) / 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["win_rate"] == pytest.approx(expected)
    assert summary["ci_low"] <= expected <= summary["ci_high"]


# --------------------------------------------------------------------------- bad input through the CLI


@pytest.mark.parametrize("case", ["missing_prompts", "unknown_judge", "unreachable", "bad_limit", "results_exist"])
def test_judge_bad_input_one_line_exit_2_nothing_written(tmp_path, monkeypatch, capsys, case):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    out = tmp_path / "out"
    args = {"--a": "tiny-random-llama", "--b": "tiny-random-llama", "--prompts": "builtin:test",
            "--judge": REWARD, "--out": str(out)}
    expect = {"missing_prompts": "data file not found", "unknown_judge": "unknown judge 'gpt-4'",
              "unreachable": "cannot reach judge endpoint", "bad_limit": "--limit must be >= 1",
              "results_exist": "already holds judge results"}[case]
    extra = []
    if case == "missing_prompts":
        args["--prompts"] = str(tmp_path / "nope.jsonl")
    elif case == "unknown_judge":
        args["--judge"] = "gpt-4"
    elif case == "unreachable":
        args["--judge"] = "openai:gpt-4o-mini"
        extra = ["--base-url", "http://127.0.0.1:9"]
    elif case == "bad_limit":
        extra = ["--limit", "0"]
    else:
        out.mkdir()
        (out / "summary.json").write_text("{}")
    argv = ["judge"] + [x for kv in args.items() for x in kv] + extra
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lldyn judge: error:") and expect in lines[0], captured.err
    assert SECRET not in captured.err + captured.out
    if case == "results_exist":
        assert [p.name for p in out.iterdir()] == ["summary.json"]
    else:
        assert not out.exists()


def test_serve_bad_input_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    assert main(["serve", "--model", "tiny-random-llama", "--port", "0", "--api-key-env", "NO_SUCH_KEY_VAR"]) == 2
    assert "NO_SUCH_KEY_VAR is empty or not set" in capsys.readouterr().err
    assert main(["serve", "--model", "no-such-model", "--port", "0"]) == 2
    assert "unknown model" in capsys.readouterr().err
