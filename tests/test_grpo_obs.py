"""GRPO observation (issue #16, parts 4-6): the policy samples tracked with the one engine, the greedy y*'s accuracy,
the training reward per evaluation, the LLD alarm (hand-worked, live in lldyn train with an AlarmRow), the report's
GRPO figure and summary line, and the callback inside TRL's GRPOTrainer (same numbers and completions with it)."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from lldyn.data import load_prompts
from lldyn.errors import LldynError
from lldyn.generation import GenerationConfig, generate
from lldyn.policy_samples import PolicySampleConfig, draw_policy_samples
from lldyn.probes import ProbeSet
from lldyn.reference_answer import Reference, normalise
from lldyn.rewards import RewardFunction
from lldyn.rundir import RunDir, TrackSummary
from lldyn.scoring import EncodedPair, ScoreRequest, collate, score, sequence_logps
from lldyn.squeeze import LLDAlarmConfig, lld_alarm, lld_deltas, lld_flags, lld_intervals
from lldyn.summary import PhaseChange, verdict
from lldyn.tracking import Tracker
from lldyn.train import TrainConfig, train



def ids_reward(prompts, completions, completion_ids, **kwargs):
    """Varies on a random model's completions: a deterministic function of the tokens (0..4)."""
    return [float(sum(ids) % 5) for ids in completion_ids]


def rising_reward(prompts, completions, completion_ids, trainer_state, **kwargs):
    """The optimizer step plus a 0/1 parity of the tokens: it rises by construction while training, and the step-0
    draws (global_step 0) split into correct (even length, 1.0) and incorrect (odd, 0.0)."""
    return [trainer_state.global_step + float(sum(ids) % 2 == 0) for ids in completion_ids]


# --------------------------------------------------------------------------- the LLD alarm by hand


def sig(reward, correct, incorrect=-50.0):
    out = {"logp_sample_correct": correct, "logp_sample_incorrect": incorrect}
    if reward is not None:
        out["reward"] = reward
    return out


# step 0 has no reward window; the first window (step 10) is the reward's baseline, step 0 the log π's.
LAZY = [sig(None, -20.0),          # step 0
        sig(0.20, -19.0),          # step 10: first window: nothing to compare the reward with
        sig(0.35, -19.5),          # step 20: reward +0.15, correct +0.5 since step 0: rose, silent
        sig(0.50, -20.4),          # step 30: reward +0.30, correct −0.4: fires
        sig(0.60, -21.0),          # step 40: reward +0.40, correct −1.0: fires
        sig(0.15, -22.0),          # step 50: reward −0.05: silent
        sig(0.70, -20.1)]          # step 60: reward +0.50, correct −0.1: fires
STEPS = [10 * i for i in range(len(LAZY))]


def feed(signals, config=LLDAlarmConfig()):
    """The callback fed one evaluation at a time, as the Tracker does."""
    alarm, history, outs = lld_alarm(config), [], []
    for step, s in zip(STEPS, signals):
        summary = TrackSummary(step, {}, {}, s)
        out = alarm(summary, history + [summary])
        history.append(TrackSummary(step, {}, {}, s, out))
        outs.append(out)
    return outs, history


def test_lld_alarm_hand_worked(caplog):
    with caplog.at_level(logging.WARNING, logger="lldyn"):
        outs, history = feed(LAZY)
    assert [o["lld/alarm"] for o in outs] == [False, False, False, True, True, False, True]
    assert [o["lld/since_step"] for o in outs] == [None, None, None, 20, 20, None, 50]
    assert outs[3]["lld/d_reward"] == pytest.approx(0.30) and outs[3]["lld/d_logp_correct"] == pytest.approx(-0.4)
    assert outs[4]["lld/d_logp_incorrect"] == pytest.approx(0.0)
    assert math.isnan(outs[1]["lld/d_reward"])  # the first window has no earlier reward
    assert len([r for r in caplog.records if "LLD alarm" in r.getMessage()]) == 3
    assert lld_intervals(history) == [(20, 40), (50, 60)]
    # the thresholds: correct log π must rise by less than logp_rise; the reward by more than reward_rise
    loose = [o["lld/alarm"] for o in feed(LAZY, LLDAlarmConfig(logp_rise=0.75))[0]]
    assert loose == [False, False, True, True, True, False, True]  # step 20: +0.5 < 0.75 now counts
    strict = [o["lld/alarm"] for o in feed(LAZY, LLDAlarmConfig(reward_rise=0.35))[0]]
    assert strict == [False, False, False, False, True, False, True]
    with pytest.raises(LldynError, match="lld_reward_rise"):
        LLDAlarmConfig(reward_rise=-1.0)


def test_lld_alarm_is_silent_without_correct_samples_or_a_second_window_and_intervals_recompute():
    no_correct = [sig(r, math.nan) for r in (None, 0.1, 0.9, 1.0)]
    assert lld_flags(no_correct) == [False] * 4
    assert lld_flags([sig(None, -1.0), sig(0.5, -9.0)]) == [False, False]
    # a run tracked without the callback: the report recomputes the same intervals from the signals
    bare = [TrackSummary(s, {}, {}, x) for s, x in zip(STEPS, LAZY)]
    assert lld_intervals(bare) == [(20, 40), (50, 60)]
    assert lld_deltas([sig(None, -2.0), sig(0.3, -2.5), sig(0.1, -1.0)]) == pytest.approx(
        {"d_reward": -0.2, "d_logp_correct": 1.0, "d_logp_incorrect": 0.0})


# --------------------------------------------------------------------------- the tracker


def test_tracker_scores_the_exact_sampled_tokens_per_sample_and_the_y_star_accuracy(tiny_fresh, builtin_probes):
    model, tok = tiny_fresh.model, tiny_fresh.tokenizer
    probes = ProbeSet.load(builtin_probes)
    prompts = [p for p in load_prompts("builtin:train", limit=8) if p.id in probes.prompt_ids]
    samples = draw_policy_samples(model, tok, prompts, RewardFunction("ids", ids_reward),
                                  PolicySampleConfig(n=3, max_new_tokens=6, seed=2, correct_at=2.0,
                                                     max_prompt_tokens=48))
    assert {s.family for s in samples} == {"sample_correct", "sample_incorrect"}
    tracker = Tracker(model, tok, probes, every=1, initial_sample=False, policy_samples=samples)
    first = tracker.track(0, {"reward": 0.25})
    rows = [r for r in tracker.last_rows if r["family"].startswith("sample_")]
    assert [(r["prompt_id"], r["family"], r["sample"]) for r in rows] == sorted(
        [(s.prompt_id, s.family, s.sample) for s in samples],
        key=lambda k: (probes.prompt_ids.index(k[0]), k[1] != "sample_correct", k[2]))
    # a naive reference: each sample alone through sequence_logps on its exact tokens
    by_key = {(s.prompt_id, s.family, s.sample): s for s in samples}
    for r in rows:
        s = by_key[(r["prompt_id"], r["family"], r["sample"])]
        with torch.no_grad():
            ref = sequence_logps(model, collate([EncodedPair(s.prompt_ids, s.completion_ids)], tok.pad_token_id))
        assert r["logp"] == pytest.approx(float(ref.logps[0]), abs=1e-4) and r["n_tokens"] == len(s.completion_ids)
    for fam in ("sample_correct", "sample_incorrect"):
        vals = [r["logp"] for r in rows if r["family"] == fam]
        assert first.family_mean[fam] == pytest.approx(sum(vals) / len(vals))
        assert first.signals[f"logp_{fam}"] == first.family_mean[fam]
    assert first.signals["reward"] == 0.25 and "accuracy_argmax" not in first.signals
    # move the weights: each sample's change is measured against its own step-0 value
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    second = tracker.track(1)
    base = {(r["prompt_id"], r["family"], r["sample"]): r["logp"] for r in rows}
    now = [r for r in tracker.last_rows if r["family"] == "sample_correct"]
    assert second.family_delta["sample_correct"] == pytest.approx(
        sum(r["logp"] - base[(r["prompt_id"], r["family"], r["sample"])] for r in now) / len(now))
    assert "reward" not in second.signals
    # y*'s accuracy: gold answers made from one prompt's y* text (stated) and a word no y* holds (not stated)
    argmax = {r["prompt_id"]: r["text"] for r in tracker.last_rows if r["family"] == "argmax"}
    a, b = probes.prompt_ids
    word = max((w for w in normalise(argmax[a]).split() if w.isalpha()), key=len)  # "vy" for the tiny model
    gold = {a: Reference(word), b: Reference("zyzzyva")}
    scored = Tracker(model, tok, probes, every=1, initial_sample=False, gold=gold).track(0)
    assert scored.signals["accuracy_argmax"] == pytest.approx(0.5) and "accuracy_greedy" not in scored.signals
    # the greedy answers: generated now (as lldyn.generation.generate), scored by the engine like any response
    gen = GenerationConfig(max_new_tokens=12, max_prompt_tokens=48)
    tracker = Tracker(model, tok, probes, every=1, initial_sample=False, greedy=gen)
    tracker.track(0)
    greedy = [r for r in tracker.last_rows if r["family"] == "greedy"]
    prompts_ = [probes.get(pid, "chosen").prompt for pid in probes.prompt_ids]
    texts = generate(model, tok, prompts_, gen)
    assert [(r["prompt_id"], r["text"]) for r in greedy] == list(zip(probes.prompt_ids, texts))
    ref = score(model, tok, [ScoreRequest(x, t) for x, t in zip(prompts_, texts)])
    assert [r["logp"] for r in greedy] == pytest.approx([r.logp for r in ref], abs=1e-4)
    word = max(normalise(texts[0]).split(), key=len)  # a word of prompt a's greedy answer ("xg")
    gold = {a: Reference(word), b: Reference("zyzzyva")}
    scored = Tracker(model, tok, probes, every=1, initial_sample=False, gold=gold, greedy=gen).track(0)
    assert scored.signals["accuracy_greedy"] == pytest.approx(0.5)


def test_policy_samples_of_other_prompts_are_refused(tiny, builtin_probes):
    prompts = load_prompts("builtin:train", limit=8)
    samples = draw_policy_samples(tiny.model, tiny.tokenizer, prompts[5:6], RewardFunction("ids", ids_reward),
                                  PolicySampleConfig(n=1, max_new_tokens=3, max_prompt_tokens=48))
    with pytest.raises(LldynError, match="probe set does not have"):
        Tracker(tiny.model, tiny.tokenizer, builtin_probes, policy_samples=samples)


# --------------------------------------------------------------------------- lldyn train --method grpo


TINY = dict(method="grpo", model="tiny-random-llama", data="builtin:train", limit=8, batch_size=4, grad_accum=2,
            num_generations=4, max_completion_length=10, reward="test_grpo_obs:rising_reward", seed=5, max_length=96,
            max_prompt_tokens=48, eval_every=2, initial_sample=False, lr=1e-3, probe_samples=3, steps=6)


def test_grpo_run_tracks_samples_reward_and_fires_the_lld_alarm_as_its_rule_says(tmp_path, builtin_probes):
    cfg = TrainConfig(**{**TINY, "probes": str(builtin_probes), "out": str(tmp_path / "run")})
    result = train(cfg, progress=False)
    run = result.run
    samples = run.policy_samples()
    assert len(samples) == 2 * 3 and {s.family for s in samples} == {"sample_correct", "sample_incorrect"}
    evals = run.probe_summaries()
    assert [e.step for e in evals] == [0, 2, 4, 6]
    rewards = {r.step: r.stats["reward"] for r in run.train_rows()}
    assert "reward" not in evals[0].signals
    for e in evals[1:]:  # the mean training reward of the steps since the previous evaluation
        assert e.signals["reward"] == pytest.approx((rewards[e.step - 1] + rewards[e.step]) / 2)
    table = run.probe_table()
    for e in evals:
        correct = [r["logp"] for r in table if r["step"] == e.step and r["family"] == "sample_correct"]
        assert len(correct) == sum(s.family == "sample_correct" for s in samples)
        assert e.signals["logp_sample_correct"] == pytest.approx(sum(correct) / len(correct))
        assert "accuracy_argmax" in e.signals and "accuracy_greedy" in e.signals  # builtin rows have gold answers
        greedy = [r for r in table if r["step"] == e.step and r["family"] == "greedy"]
        assert len(greedy) == 2 and all("text" in r for r in greedy)
    # the rule, recomputed from the recorded signals by hand
    l0, r1 = evals[0].signals["logp_sample_correct"], evals[1].signals["reward"]
    expected = [False, False] + [e.signals["reward"] - r1 > 0 and e.signals["logp_sample_correct"] - l0 < 0
                                 for e in evals[2:]]
    assert [e.extra["lld/alarm"] for e in evals] == expected
    assert [a.step for a in run.alarm_rows()] == [e.step for e, x in zip(evals, expected) if x]
    # a threshold no change can meet: the alarm fires wherever the reward rose (it does, by construction)
    loose = train(TrainConfig(**{**TINY, "probes": str(builtin_probes), "out": str(tmp_path / "loose"),
                                 "lld_logp_rise": 1e9}), progress=False).run
    alarms = loose.alarm_rows()
    assert [a.step for a in alarms] == [4, 6] and all(a.alarm == "lld" and a.since_step == 2 for a in alarms)
    assert alarms[0].stats["lld/d_reward"] == pytest.approx(
        loose.probe_summaries()[2].signals["reward"] - loose.probe_summaries()[1].signals["reward"])


class Kill(Exception):
    pass


def test_resumed_run_reads_its_policy_samples_back(tmp_path, builtin_probes, monkeypatch):
    cfg = TrainConfig(**{**TINY, "probes": str(builtin_probes), "out": str(tmp_path / "run"), "checkpoint_every": 2,
                         "steps": 4})

    class KillAt:
        def before_step(self, step, model, terms, optimizer=None):
            if step == 3:
                raise Kill

        def after_step(self, step, model, optimizer):
            return None

    with pytest.raises(Kill):
        train(cfg, decomposer=KillAt(), progress=False)
    path = RunDir(cfg.out).path / "policy_samples.jsonl"
    before = path.read_bytes()

    import lldyn.policy_samples as ps

    def never(*args, **kwargs):
        raise AssertionError("policy samples redrawn on resume")

    monkeypatch.setattr(ps, "draw_policy_samples", never)
    resumed = train(cfg, resume=True, progress=False)
    assert path.read_bytes() == before
    assert [e.step for e in resumed.run.probe_summaries()] == [0, 2, 4]


def failing_on_probes(prompts, completions, completion_ids, trainer_state, **kwargs):
    """Scores the training batches, fails on the policy samples' draw (global_step 0 and max_steps 0)."""
    if trainer_state.max_steps == 0:
        raise ValueError("cannot score this")
    return [0.0] * len(completions)


@pytest.mark.parametrize("case", ["no data row", "reward fails on the samples"])
def test_bad_probe_input_is_refused_before_anything_is_written(tmp_path, builtin_probes, case):
    probes = tmp_path / "probes.jsonl"
    probes.write_text('{"prompt_id": "nowhere", "family": "chosen", "prompt": "Hi?", "response": "Hello."}\n')
    kw = ({"probes": str(probes)} if case == "no data row" else
          {"probes": str(builtin_probes), "reward": "test_grpo_obs:failing_on_probes"})
    cfg = TrainConfig(**{**TINY, **kw, "out": str(tmp_path / "run")})
    with pytest.raises(LldynError, match="not a row of the training data" if case == "no data row" else
                       "reward function raised ValueError: cannot score this"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- report and summary


def test_report_draws_the_grpo_figure_and_the_summary_names_lld(tmp_path, builtin_probes):
    from lldyn.report import GRPO_FIGURE, write_report
    from lldyn.summary import what_moved

    run = train(TrainConfig(**{**TINY, "probes": str(builtin_probes), "out": str(tmp_path / "run"),
                               "lld_logp_rise": 1e9, "steps": 4}), progress=False).run
    page = write_report([run.path], tmp_path / "report").read_text()
    assert (tmp_path / "report" / "figures" / GRPO_FIGURE).is_file()
    assert "LLD alarm steps 2–4" in page
    line = what_moved([run.path])[0]
    assert line.startswith("GRPO (steps 0→4)") and "sample_correct" in line and "reward +" in line
    lazy = PhaseChange("grpo", 0, 4, {"sample_correct": -0.3}, 0.0, {"reward": 0.2})
    assert verdict(lazy).startswith("lazy likelihood displacement")
    assert verdict(lazy._replace(delta={"sample_correct": 0.3})).startswith("the reward rose and")
    assert verdict(lazy._replace(signal_delta={"reward": -0.1})) == "the reward did not rise"


# --------------------------------------------------------------------------- the callback in TRL's GRPOTrainer


def test_callback_in_grpo_trainer_changes_no_number_and_no_completion(tmp_path, builtin_probes):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from lldyn.integrations import LearningDynamicsCallback
    from lldyn.models import ModelConfig, load_model

    prompts = load_prompts("builtin:train", limit=4)
    data = Dataset.from_list([{"prompt": p.prompt, "answer": p.fields["answer"]} for p in prompts])
    seen: list[list[str]] = []

    def reward(prompts, completions, completion_ids, **kwargs):
        seen.append(list(completions))
        return ids_reward(prompts, completions, completion_ids)

    def run(callbacks, name):
        lm = load_model(ModelConfig(name="tiny-random-llama", seed=0))
        args = GRPOConfig(output_dir=str(tmp_path / name), per_device_train_batch_size=4, num_generations=4,
                          max_completion_length=8, max_steps=3, learning_rate=5e-2, logging_steps=1, report_to=[],
                          save_strategy="no", use_cpu=True, bf16=False, seed=0, disable_tqdm=True)
        trainer = GRPOTrainer(model=lm.model, reward_funcs=reward, args=args, train_dataset=data,
                              processing_class=lm.tokenizer, callbacks=callbacks)
        trainer.train()
        return trainer

    plain = run([], "plain")
    plain_completions = list(seen)
    seen.clear()
    cb = LearningDynamicsCallback(probes=builtin_probes, every=1, out=tmp_path / "run", initial_sample=False,
                                  policy_samples=3, reward=reward, prompts=prompts)
    tracked = run([cb], "tracked")
    assert len(seen[0]) == 2 * 3  # the callback's own draw of the policy samples comes first, then TRL's
    assert seen[1:] == plain_completions and len(plain_completions) == 3

    def trl_logs(trainer):
        skip = ("step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second")
        return [{k: v for k, v in h.items() if k not in skip} for h in trainer.state.log_history
                if not any(k.startswith("lldyn/") for k in h)]

    a, b = trl_logs(plain), trl_logs(tracked)
    assert a == b and any(h.get("loss") for h in a) and any(h.get("grad_norm") for h in a)
    run_dir = RunDir(tmp_path / "run")
    samples = run_dir.policy_samples()
    assert len(samples) == 6 and all(s.family in ("sample_correct", "sample_incorrect") for s in samples)
    evals = run_dir.probe_summaries()
    assert [e.step for e in evals] == [0, 1, 2, 3]
    assert all("logp_sample_correct" in e.signals or "logp_sample_incorrect" in e.signals for e in evals)
    families = {r["family"] for r in run_dir.probe_table()}
    assert {s.family for s in samples} <= families
    # the reward TRL logged for step k reaches the evaluation after it (TRL logs after on_step_end)
    logged = [h["reward"] for h in tracked.state.log_history if "reward" in h]
    assert [e.signals.get("reward") for e in evals] == [None, None, pytest.approx(logged[0]),
                                                        pytest.approx(logged[1])]
    assert all("lld/alarm" in e.extra for e in evals)
    logs = [h for h in tracked.state.log_history if "lldyn/family_mean/sample_correct" in h
            or "lldyn/family_mean/sample_incorrect" in h]
    assert len(logs) == 4
