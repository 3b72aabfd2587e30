"""A judge with ground truth (``lldyn judge --judge reference``) and reward functions (``--judge reward:m:f``):
hand-judged verdicts, the win rate and its bootstrap interval worked by hand, symmetry of both orders, prompts
that keep their gold answers, and bad input through the CLI (one line, exit 2, nothing written)."""
from __future__ import annotations

import itertools
import json

import pytest

from lldyn.cli import main
from lldyn.errors import LldynError
from lldyn.judge import answer_accuracy, judge_both_orders, load_prompts, reference_table, win_rate
from lldyn.preferences import ReferenceSource, RewardFunctionSource, load_preference_source
from lldyn.reference_answer import Reference, states_answer


def nan_reward(prompt: str, response: str) -> float:
    return float("nan")


def vector_reward(prompt: str, response: str):
    import torch

    return torch.tensor([1.0, 2.0])


def infinite_reward(prompt: str, response: str) -> float:
    return float("inf") if "good" in response else -float("inf") if "bad" in response else 0.0


def text_reward(prompt: str, response: str):
    return "high"


def failing_reward(prompt: str, response: str) -> float:
    raise ValueError("reward model offline")


def length_reward(prompt: str, response: str) -> float:
    return float(len(response))


# --------------------------------------------------------------------------- the reference judge, by hand

# (prompt, answer, aliases, response A, response B, who wins: 0 = A, 1 = B, None = tie)
HAND_SET = [
    # "not Paris" is a negation: A states Paris, B only negates it
    ("What is the capital of France?", "Paris", [], "The capital of France is Paris.",
     "It is not Paris, it is Lyon.", 0),
    # numbers: "seventy-two" is 72 (alias and number words), "71" is not
    ("What is 8 times 9?", "72", ["seventy-two"], "Eight times nine is 71.", "It is seventy two.", 1),
    # aliases and accents: both state it, a tie
    ("What is the capital of Brazil?", "Brasília", ["Brasilia"], "Brasilia.", "The capital is Brasília.", None),
    # neither states it, a tie
    ("What is the opposite of hot?", "cold", [], "Warm.", "Lukewarm, I think.", None),
    # the prompt holds the answer: only B's second 8 counts, A only restates the prompt
    ("Divide 64 by 8.", "8", ["eight"], "Dividing 64 by 8 gives 9.", "Dividing 64 by 8 gives 8.", 1),
]


def hand_source():
    return ReferenceSource({prompt: Reference(answer, tuple(aliases)) for prompt, answer, aliases, *_ in HAND_SET})


def test_reference_verdicts_on_a_hand_made_set():
    source = hand_source()
    judged = source.judge_batch([(p, a, b) for p, _, _, a, b, _ in HAND_SET])
    assert [j.choice for j in judged] == [w for *_, w in HAND_SET]
    assert judged[0].raw_text == "gold 'Paris': A stated ('Paris' at 25), B only negated"
    assert judged[3].raw_text == "gold 'cold': A not mentioned, B not mentioned"
    assert judged[4].raw_text == "gold '8': A only the prompt's mentions, B stated ('8' at 23)"


def test_reference_win_rate_and_interval_worked_by_hand():
    """A's prompt scores are 1, 0, 0.5, 0.5, 0 → win rate 2/5 = 0.4 (A won 1, B won 2, tied 2).

    The percentile bootstrap of the mean of 5 scores drawn from {1 (p 1/5), 0.5 (p 2/5), 0 (p 2/5)}: in half
    points, the sum S of 5 draws of {2, 1, 0} with p (.2, .4, .4), mean = S / 10.
    Lower tail: P(S=0) = .4^5 = .01024 < .025, P(S<=1) = .01024 + 5·.4·.4^4 = .06144 > .025 → low = 0.1.
    Upper tail: P(S=10) = .2^5 = .00032, P(S=9) = 5·.4·.2^4 = .0032, P(S=8) = 10·.4²·.2³ + 5·.4·.2^4
    = .0128 + .0032 = .016, so P(S>=8) = .01952 < .025; P(S=7) = 10·.4³·.2² (three 1s, two 2s)
    + 20·.4·.4·.2³ (one 0, one 1, three 2s) = .0256 + .0256 → P(S>=7) = .07072 > .025 → high = 0.7.
    With 20,000 resamples the empirical tails are within ±0.002 of these, far from the 0.025 cut.
    """
    pairs = judge_both_orders(hand_source(), [(p, a, b) for p, _, _, a, b, _ in HAND_SET])
    assert [p.score_a for p in pairs] == [1.0, 0.0, 0.5, 0.5, 0.0]
    result = win_rate(pairs, n_resamples=20_000, seed=0)
    assert result.win_rate == pytest.approx(0.4)
    assert (result.a_wins, result.b_wins, result.split) == (1, 2, 2)
    assert (result.ci_low, result.ci_high) == (pytest.approx(0.1), pytest.approx(0.7))
    assert result.first_position_rate == 0.5  # symmetric: exactly as many first as second picks
    assert "tied 2 (both or neither state the gold answer)" in result.reference_line()


def test_reference_judge_is_symmetric_in_both_orders():
    """Every ordered pair of responses, both orders: the verdicts mirror each other, never position bias."""
    prompt = "What is the capital of France?"
    responses = ["Paris.", "Not Paris.", "Lyon.", "Paris, not Lyon.", "Paris? No, Lyon.", "", "PARIS!",
                 "It is not Lyon but Paris.", "Parisian food is good."]
    source = ReferenceSource({prompt: Reference("Paris")})
    items = [(prompt, a, b) for a, b in itertools.permutations(responses, 2)]
    pairs = judge_both_orders(source, items)
    for pair in pairs:
        assert pair.ab.choice == (None if pair.ba.choice is None else 1 - pair.ba.choice)
        assert pair.score_a in (0.0, 0.5, 1.0)
    result = win_rate(pairs)
    assert result.win_rate == pytest.approx(0.5)  # all ordered pairs: every win has its mirrored loss
    assert result.first_position_rate == 0.5


def test_answer_accuracy_counts_responses_that_state_the_gold_answer():
    source = hand_source()
    prompts = [p for p, *_ in HAND_SET]
    acc_a = answer_accuracy(source, prompts, [a for *_, a, _, _ in HAND_SET], n_resamples=500)
    acc_b = answer_accuracy(source, prompts, [b for *_, b, _ in HAND_SET], n_resamples=500)
    assert (acc_a.stated, acc_a.n_prompts, acc_a.accuracy) == (2, 5, 0.4)  # Paris, Brasilia
    assert (acc_b.stated, acc_b.accuracy) == (3, 0.6)  # seventy two, Brasília, the second 8
    assert acc_a.ci_low <= 0.4 <= acc_a.ci_high
    assert acc_b.line().endswith("(3/5 state the gold answer)")


def test_a_prompt_without_a_gold_answer_is_an_error_not_a_tie():
    with pytest.raises(LldynError, match="no gold answer"):
        hand_source().judge_batch([("Unknown prompt?", "a", "b")])
    with pytest.raises(LldynError, match="needs the prompts' gold answers"):
        load_preference_source("reference")
    chat = [{"role": "user", "content": "Capital of Italy?"}]
    source = load_preference_source("reference", references=reference_table(
        [load_prompts_row("c1", chat, {"answer": "Rome"})]))
    assert source.prefer(chat, "Rome.", "Milan.") == 0


def load_prompts_row(pid, prompt, fields):
    from lldyn.judge import HeldOutPrompt

    return HeldOutPrompt(pid, prompt, Reference.from_row(fields))


# --------------------------------------------------------------------------- prompts keep their gold answers


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_prompts_keeps_gold_answers_from_prompt_rows_and_preference_rows(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "a", "prompt": "Capital of France?", "answer": "Paris"},
        {"id": "b", "prompt": "Say hi."},
        {"id": "c", "prompt": "8 times 9?", "chosen": "72.", "rejected": "71.", "answer": "72",
         "answer_aliases": ["seventy-two"]},
    ])
    assert [p.reference for p in load_prompts(str(f))] == [None, None, None]  # not read unless asked
    only = load_prompts(str(f), gold="only")
    assert [(p.id, p.reference) for p in only] == [("a", Reference("Paris")), ("c", Reference("72", ("seventy-two",)))]
    assert [p.id for p in load_prompts(str(f), gold="only", limit=2)] == ["a", "c"]  # the limit counts answered
    with pytest.raises(LldynError) as err:
        load_prompts(str(f), gold="require")
    assert (err.value.file, err.value.line, err.value.field) == (str(f), 2, "answer")
    assert "prompt 'b' has no gold answer" in str(err.value)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x?", "answer": "72", "answer_aliases": "seventy-two"}])
    with pytest.raises(LldynError) as err:
        load_prompts(str(bad), gold="only")
    assert (err.value.line, err.value.field) == (1, "answer_aliases")
    none = write_jsonl(tmp_path / "none.jsonl", [{"prompt": "x?"}])
    with pytest.raises(LldynError, match="no prompt carries a gold answer"):
        load_prompts(str(none), gold="only")


def test_builtin_test_prompts_carry_the_data_sets_gold_answers():
    from lldyn.data import load_preferences

    rows = {p.id: p for p in load_preferences("builtin:test")}
    prompts = load_prompts("builtin:test", gold="only")
    assert len(prompts) == sum("answer" in p.extra for p in rows.values()) == 32
    for p in prompts:
        extra = rows[p.id].extra
        assert p.reference == Reference(extra["answer"], tuple(extra["answer_aliases"]))
        assert p.reference.states(rows[p.id].chosen, p.prompt).matched  # the data's chosen states it
        assert not p.reference.states(rows[p.id].rejected, p.prompt).matched
    with pytest.raises(LldynError, match="has no gold answer") as err:
        load_prompts("builtin:test", gold="require")
    assert err.value.file.endswith("preferences.jsonl") and err.value.line > 0


def test_the_same_prompt_with_two_gold_answers_is_refused(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "Largest planet?", "answer": "Jupiter"},
                                          {"id": "b", "prompt": "Largest planet?", "answer": "Saturn"}])
    with pytest.raises(LldynError, match="another gold answer") as err:
        reference_table(load_prompts(str(f), gold="require"))
    assert err.value.line == 2


# --------------------------------------------------------------------------- reward:module:function


def test_reward_spec_explicit_and_short_spelling_are_the_same_source():
    explicit = load_preference_source(f"reward:{__name__}:length_reward")
    short = load_preference_source(f"{__name__}:length_reward")
    assert isinstance(explicit, RewardFunctionSource) and isinstance(short, RewardFunctionSource)
    assert explicit.name == short.name == f"reward:{__name__}:length_reward"
    for source in (explicit, short):
        assert source.prefer("q", "short", "much longer") == 1
    with pytest.raises(LldynError, match="names no reward function"):
        load_preference_source("reward:length_reward")
    with pytest.raises(LldynError, match="cannot import reward module"):
        load_preference_source("reward:no_such_module_xyz:f")


def test_infinite_rewards_are_numbers_and_compare():
    source = load_preference_source(f"reward:{__name__}:infinite_reward")
    assert source.prefer("q", "good", "meh") == 0 and source.prefer("q", "bad", "meh") == 1
    assert source.prefer("q", "good", "good too") is None  # inf == inf: a tie


@pytest.mark.parametrize("fn,message", [("nan_reward", "returned nan"), ("vector_reward", "returned Tensor"),
                                        ("text_reward", "returned str"), ("failing_reward", "reward model offline")])
def test_reward_function_that_is_not_a_number_is_one_clear_error(fn, message):
    source = load_preference_source(f"reward:{__name__}:{fn}")
    with pytest.raises(LldynError, match=message):
        source.prefer("q", "a", "b")


# --------------------------------------------------------------------------- through the CLI


@pytest.fixture(scope="module")
def tiny_b(tmp_path_factory):
    """A second tiny model (seed 1), so A and B answer differently."""
    from lldyn.models import build_tiny_model, build_tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny-seed1")
    build_tiny_model(seed=1).save_pretrained(path)
    build_tiny_tokenizer().save_pretrained(path)
    return path


def test_judge_cli_reference_matches_a_hand_count(tmp_path, tiny, tiny_b):
    """Gold answers picked from the models' own greedy responses: a word only A says, a word only B says, a word
    neither says; the summary's win rate and accuracies are counted by hand from the responses."""
    from lldyn.generation import GenerationConfig, generate
    from lldyn.models import ModelConfig, load_model

    prompts = ["What is the capital of France?", "Name a colour.", "What is the opposite of hot?"]
    cfg = GenerationConfig(max_new_tokens=8)
    ra = generate(tiny.model, tiny.tokenizer, prompts, cfg)
    lm_b = load_model(ModelConfig(name=str(tiny_b)))
    rb = generate(lm_b.model, lm_b.tokenizer, prompts, cfg)

    def words(text):
        from lldyn.reference_answer import normalise

        return normalise(text).split()

    only_a = [w for w in words(ra[0]) if w not in words(rb[0]) and states_answer(ra[0], w, prompt=prompts[0]).matched]
    only_b = [w for w in words(rb[1]) if w not in words(ra[1]) and states_answer(rb[1], w, prompt=prompts[1]).matched]
    assert only_a and only_b, (ra, rb)  # the tiny models' byte soup has words; else pick other prompts
    answers = [only_a[0], only_b[0], "zzzq"]
    f = write_jsonl(tmp_path / "gold.jsonl", [{"id": f"g{i}", "prompt": p, "answer": a}
                                              for i, (p, a) in enumerate(zip(prompts, answers))])
    out = tmp_path / "judged"
    assert main(["judge", "--a", "tiny-random-llama", "--b", str(tiny_b), "--prompts", str(f), "--judge", "reference",
                 "--max-new-tokens", "8", "--bootstrap", "500", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    stated_a = [states_answer(r, a, prompt=p).matched for p, r, a in zip(prompts, ra, answers)]
    stated_b = [states_answer(r, a, prompt=p).matched for p, r, a in zip(prompts, rb, answers)]
    assert stated_a[0] and not stated_b[0] and stated_b[1] and not stated_a[1] and not stated_a[2] + stated_b[2]
    expected = sum(1.0 if a > b else 0.0 if a < b else 0.5 for a, b in zip(stated_a, stated_b)) / 3
    assert summary["win_rate"] == pytest.approx(expected) == pytest.approx(0.5)
    assert (summary["a_wins"], summary["b_wins"], summary["split"]) == (1, 1, 1)
    assert summary["judge"] == "reference" and summary["first_position_rate"] == 0.5
    assert summary["accuracy"]["a"]["stated"] == sum(stated_a) and summary["accuracy"]["a"]["n_prompts"] == 3
    assert summary["accuracy"]["b"]["accuracy"] == pytest.approx(sum(stated_b) / 3)
    rows = [json.loads(x) for x in (out / "judgements.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and rows[0]["raw_text"].startswith(f"gold {answers[0]!r}: A stated")


@pytest.mark.parametrize("case", ["no_gold", "answered_only_without_reference", "reward_without_function",
                                  "reward_raises", "reward_text", "reward_nan"])
def test_judge_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    out = tmp_path / "out"
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"id": "a", "prompt": "Capital of France?", "answer": "Paris"},
                                                       {"id": "b", "prompt": "Say hi."}])
    judge, extra = {
        "no_gold": ("reference", []),
        "answered_only_without_reference": (f"reward:{__name__}:length_reward", ["--answered-only"]),
        "reward_without_function": ("reward:length_reward", []),
        "reward_raises": (f"reward:{__name__}:failing_reward", []),
        "reward_text": (f"reward:{__name__}:text_reward", []),
        "reward_nan": (f"reward:{__name__}:nan_reward", []),
    }[case]
    expect = {"no_gold": f"{prompts}:2, field 'answer': prompt 'b' has no gold answer",
              "answered_only_without_reference": "--answered-only goes with --judge reference",
              "reward_without_function": "names no reward function",
              "reward_raises": "reward function raised ValueError: reward model offline",
              "reward_text": "reward function returned str", "reward_nan": "reward function returned nan"}[case]
    argv = ["judge", "--a", "tiny-random-llama", "--b", "tiny-random-llama", "--prompts", str(prompts),
            "--judge", judge, "--max-new-tokens", "4", "--out", str(out)] + extra
    assert main(argv) == 2
    captured = capsys.readouterr()
    # a reward function fails once the responses exist: the generation's progress bars come first, then one line
    lines = [line for line in captured.err.splitlines() if line.strip() and "batch/s]" not in line]
    assert len(lines) == 1 and lines[0].startswith("lldyn judge: error:") and expect in lines[0], captured.err
    assert "Traceback" not in captured.err
    assert not out.exists()
