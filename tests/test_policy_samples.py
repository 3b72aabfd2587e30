"""The starting policy's own samples of the probe prompts (issue #16): drawn once with a seed, split by the reward
into sample_correct / sample_incorrect exactly as the reward says, stored in the run directory and read back
(never redrawn), the global RNG untouched; bad input is one clear error."""
from __future__ import annotations

import json
import math

import pytest
import torch

from lldyn.data import PromptExample, load_prompts
from lldyn.errors import LldynError
from lldyn.generation import sample
from lldyn.policy_samples import (PolicySampleConfig, draw_policy_samples, family_counts, gold_answers,
                                  policy_samples, probe_prompts)
from lldyn.rewards import RewardFunction, load_reward, states_gold_answer
from lldyn.rundir import RunDir

CFG = PolicySampleConfig(n=3, max_new_tokens=6, seed=11, max_prompt_tokens=48)


def parity_reward(prompts, completions, completion_ids, **kwargs):
    """1.0 for an even number of completion tokens, 0.0 for odd, None (unscorable) when the first token id is
    divisible by 7: a function of the tokens a test can recompute by hand."""
    return [None if ids and ids[0] % 7 == 0 else float(len(ids) % 2 == 0) for ids in completion_ids]


def prompts_(n: int = 2) -> list[PromptExample]:
    return load_prompts("builtin:train", limit=n)


def test_families_are_the_rewards_split_and_the_draws_are_generation_samples(tiny):
    prompts = prompts_()
    reward = RewardFunction("parity", parity_reward)
    state = torch.random.get_rng_state()
    rows = draw_policy_samples(tiny.model, tiny.tokenizer, prompts, reward, CFG)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left as it was
    # the same draws as lldyn.generation.sample with the config's seed, n per prompt, in prompt order
    direct = sample(tiny.model, tiny.tokenizer, [p.prompt for p in prompts for _ in range(3)], CFG.generation())
    expected = []
    for j, s in enumerate(direct):
        value = parity_reward(None, None, [list(s.completion_ids)])[0]
        if value is not None:
            expected.append((prompts[j // 3].id, j % 3, "sample_correct" if value >= 1.0 else "sample_incorrect",
                             s.text, value, s.completion_ids, s.eos))
    got = [(r.prompt_id, r.sample, r.family, r.response, r.reward, r.completion_ids, r.eos) for r in rows]
    assert got == expected
    # seed 11 gives both families and one unscorable draw (left out): the split is exercised, not vacuous
    assert family_counts(rows) == {"sample_correct": 4, "sample_incorrect": 1} and len(direct) == 6
    assert all(r.seed == 11 and r.prompt_ids == direct[0].prompt_ids for r in rows if r.prompt_id == prompts[0].id)
    # a seeded draw: the same rows again; another seed gives other draws
    assert draw_policy_samples(tiny.model, tiny.tokenizer, prompts, reward, CFG) == rows
    other = draw_policy_samples(tiny.model, tiny.tokenizer, prompts, reward,
                                PolicySampleConfig(n=3, max_new_tokens=6, seed=12, max_prompt_tokens=48))
    assert [r.completion_ids for r in other] != [r.completion_ids for r in rows]


def test_bad_config_is_one_clear_error():
    with pytest.raises(LldynError, match="probe_samples"):
        PolicySampleConfig(n=0)
    with pytest.raises(LldynError, match="correct_at"):
        PolicySampleConfig(correct_at=math.inf)


def test_threshold_split_on_real_draws(tiny):
    """The same draws split at 0.5 and at 2.0: the reward values decide, nothing else."""
    prompts = prompts_(1)
    reward = RewardFunction("parity", parity_reward)
    low = draw_policy_samples(tiny.model, tiny.tokenizer, prompts, reward, PolicySampleConfig(
        n=4, max_new_tokens=5, seed=3, correct_at=0.5, max_prompt_tokens=48))
    high = draw_policy_samples(tiny.model, tiny.tokenizer, prompts, reward, PolicySampleConfig(
        n=4, max_new_tokens=5, seed=3, correct_at=2.0, max_prompt_tokens=48))
    assert [r.reward for r in low] == [r.reward for r in high]
    assert [r.family for r in low] == ["sample_correct" if r.reward >= 0.5 else "sample_incorrect" for r in low]
    assert all(r.family == "sample_incorrect" for r in high)
    assert sum(family_counts(high).values()) == len(high)


def test_builtin_reward_splits_by_the_gold_answer(tiny):
    prompts = prompts_(2)
    rows = draw_policy_samples(tiny.model, tiny.tokenizer, prompts, load_reward("builtin"), CFG)
    assert len(rows) == 6  # the gold-answer reward scores every draw of a row with an answer
    by_id = {p.id: p for p in prompts}
    for r in rows:
        p = by_id[r.prompt_id]
        states = states_gold_answer(p.prompt, r.response, p.fields["answer"], p.fields.get("answer_aliases") or ())
        assert r.family == ("sample_correct" if states else "sample_incorrect")
    assert set(gold_answers(prompts)) == set(by_id)


def test_stored_once_and_read_back_never_redrawn(tiny, tmp_path):
    run = RunDir(tmp_path / "run")
    reward = RewardFunction("parity", parity_reward)
    first = policy_samples(run, tiny.model, tiny.tokenizer, prompts_(), reward, CFG)
    assert run.policy_samples() == first

    def refuse(*args, **kwargs):
        raise AssertionError("redrawn")

    again = policy_samples(run, tiny.model, tiny.tokenizer, prompts_(), RewardFunction("never", refuse),
                           PolicySampleConfig(n=5, seed=99))
    assert again == first
    assert policy_samples(None, tiny.model, tiny.tokenizer, prompts_(), reward, CFG) == first  # no run: drawn


def test_probe_prompts_are_the_data_rows_in_probe_order():
    prompts = prompts_(3)
    ids = [prompts[2].id, prompts[0].id]
    assert [p.id for p in probe_prompts(ids, prompts)] == ids
    with pytest.raises(LldynError, match="not a row of the training data") as err:
        probe_prompts(["nope"], prompts, where="probes.jsonl")
    assert err.value.file == "probes.jsonl" and err.value.field == "prompt_id"
    no_answer = [PromptExample("a", "Say hi.")]
    with pytest.raises(LldynError, match="no gold answer"):
        probe_prompts(["a"], no_answer, load_reward("builtin"))
    assert probe_prompts(["a"], no_answer, RewardFunction("parity", parity_reward)) == no_answer


def test_a_corrupt_policy_sample_file_is_one_clear_error(tiny, tmp_path):
    run = RunDir(tmp_path / "run")
    policy_samples(run, tiny.model, tiny.tokenizer, prompts_(1), RewardFunction("parity", parity_reward), CFG)
    path = run.path / "policy_samples.jsonl"
    lines = path.read_text().splitlines()
    bad = json.loads(lines[-1])
    del bad["completion_ids"]
    path.write_text("\n".join(lines[:-1] + [json.dumps(bad)]) + "\n")
    with pytest.raises(LldynError) as err:
        run.policy_samples()
    assert err.value.line == len(lines) and "corrupt policy sample" in err.value.message
