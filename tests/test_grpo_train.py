"""GRPO training: a real step's advantages and loss against hand computation from what it saved, kill-and-resume,
LoRA, a frozen reference for β > 0, the decomposition's positive/negative split, rewards, and bad input."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lldyn.decompose.llm import term_gradients
from lldyn.errors import LldynError
from lldyn.generation import GenerationConfig, generate, sample
from lldyn.losses import grpo_loss
from lldyn.models import ModelConfig, load_model
from lldyn.rewards import RewardFunction, gold_answer_reward, load_reward, states_gold_answer
from lldyn.rundir import RunDir
from lldyn.runs import load_run_model
from lldyn.scoring import EncodedPair, Encoder, collate, sequence_logps
from lldyn.train import TrainConfig, run_config, train

# Seed 5 samples completions of different lengths (some reach EOS) at steps 1 and 2: the on-policy loss
# −Σ A_i·|y_i| / N is then not zero (with equal lengths the advantages of a group cancel).
TINY = dict(method="grpo", model="tiny-random-llama", data="builtin:train", limit=8, batch_size=4, grad_accum=2,
            num_generations=4, max_completion_length=12, reward="test_grpo_train:ids_reward", seed=5, max_length=96,
            max_prompt_tokens=48, eval_every=0, initial_sample=False, lr=1e-3)


def ids_reward(prompts, completions, completion_ids, **kwargs):
    """A reward that varies on a random model's completions (a deterministic function of the tokens)."""
    return [float(sum(ids) % 5) for ids in completion_ids]


def cfg_(tmp_path: Path, name: str = "run", **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "out": str(tmp_path / name), **kw})


def train_rows(run: str | Path) -> list[dict]:
    return [r.to_json() for r in RunDir(run).train_rows()]


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def prompt_ids(tokenizer, cfg: TrainConfig, prompt) -> tuple[int, ...]:
    """The prompt's tokens as sampling saw them: the chat template, cut to the last max_prompt_tokens."""
    return tuple(Encoder(tokenizer, cfg.scoring()).prompt(prompt)[-cfg.max_prompt_tokens:])


def recomputed_loss(model, tokenizer, cfg: TrainConfig, rows, ref_model=None) -> torch.Tensor:
    """grpo_loss on the whole generation batch, from the saved completions, with the engine's log-probs."""
    encoded = [EncodedPair(prompt_ids(tokenizer, cfg, r.prompt), r.completion_ids) for r in rows]
    batch = collate(encoded, tokenizer.pad_token_id)
    with torch.no_grad():
        st = sequence_logps(model, batch)
        ref = None if ref_model is None else sequence_logps(ref_model, batch).token_logps
    return grpo_loss(st.token_logps, torch.tensor([r.advantage for r in rows]), st.mask, ref_token_logps=ref,
                     beta=cfg.beta, loss_type=cfg.loss_type, max_completion_length=cfg.max_completion_length).loss


# --------------------------------------------------------------------------- a real step against hand computation


@pytest.mark.parametrize("loss_type, beta", [("dapo", 0.0), ("dr_grpo", 0.1), ("grpo", 0.2)])
def test_a_real_step_against_hand_computation_from_its_saved_groups(tmp_path, loss_type, beta):
    """Step 1 and 2 of a run (two micro-batches per step): the saved advantages are (r − group mean) / (Bessel std
    + 1e-4) of the saved rewards, the logged reward statistics are theirs, and the logged loss is grpo_loss on the
    whole generation batch recomputed with the engine from the saved completions (the step-1 checkpoint's weights
    for step 2; the starting model as the reference of the KL term). On-policy with β = 0 the loss's value does not
    depend on the log-probs (ρ = 1: dapo's is −Σ A_i·|y_i| / N, grpo's −mean(A) = 0), so β > 0 runs check them
    through the KL term (0 at step 1, where policy = reference, and not at step 2)."""
    cfg = cfg_(tmp_path, steps=2, checkpoint_every=1, keep_checkpoints=3, loss_type=loss_type, beta=beta)
    result = train(cfg, progress=False)
    rows = train_rows(cfg.out)
    run = RunDir(cfg.out)
    assert run.grpo_steps() == [1, 2]
    start = load_model(cfg.model_config())  # the tiny model is initialised from the run's seed
    losses = []
    for step, model in ((1, start.model), (2, load_run_model(cfg.out, run.checkpoints / "step-00000001").model)):
        saved = run.grpo_step(step)
        assert len(saved) == 8 and [r.group for r in saved] == [0, 0, 0, 0, 1, 1, 1, 1]
        assert all(r.step == step for r in saved)
        for g in (0, 1):
            rewards = [r.reward for r in saved if r.group == g]
            mean = sum(rewards) / 4
            std = math.sqrt(sum((x - mean) ** 2 for x in rewards) / 3)
            assert std > 0  # the check is not vacuous
            for r in (r for r in saved if r.group == g):
                assert r.advantage == pytest.approx((r.reward - mean) / (std + 1e-4), abs=1e-5)
        all_rewards = [r.reward for r in saved]
        assert rows[step - 1]["reward"] == pytest.approx(sum(all_rewards) / 8, abs=1e-6)
        assert rows[step - 1]["frac_reward_zero_std"] == 0.0
        assert rows[step - 1]["completions/mean_length"] == pytest.approx(sum(r.n_tokens for r in saved) / 8)
        assert rows[step - 1]["completions/clipped_ratio"] == pytest.approx(sum(not r.eos for r in saved) / 8)
        assert len({r.n_tokens for r in saved}) > 1  # lengths differ, so the loss is not zero
        assert all(r.eos == (r.completion_ids[-1] == start.tokenizer.eos_token_id) for r in saved)
        expected = float(recomputed_loss(model, start.tokenizer, cfg, saved, start.model if beta else None))
        assert rows[step - 1]["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-8)
        losses.append(expected)
        if beta:
            assert (rows[step - 1]["kl"] > 1e-4) == (step == 2)
    assert max(abs(x) for x in losses) > 1e-5  # the check is not vacuous
    assert result.steps == 2


def test_gradient_equals_the_sum_of_its_per_token_terms():
    """∇θ of a GRPO micro-batch's loss (autograd) = Σ_terms ∇θ Σ_t w_t log π(y_t) over the exact sampled tokens
    (what the decomposition differentiates), here with β > 0 so the KL term is in the coefficients too."""
    from lldyn.train.grpo import load_grpo_prompts, sample_generation, with_reference
    from lldyn.train.steps import grpo_step

    cfg = TrainConfig(**{**TINY, "beta": 0.3, "out": "unused"})
    lm = load_model(ModelConfig(name="tiny-random-llama"))
    ref = load_model(ModelConfig(name="tiny-random-llama"))
    with torch.no_grad():  # a reference that differs from the policy, so the KL term does not vanish
        for p in ref.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    prompts, reward = load_grpo_prompts(cfg)
    generation = with_reference(sample_generation(lm.model, lm.tokenizer, prompts, reward, cfg, 0, 0, 0, 1),
                                ref.model, lm.tokenizer.pad_token_id, cfg)
    out = grpo_step(lm.model, generation.micro_batch(0, 4), lm.tokenizer.pad_token_id, cfg, generation.num_items)
    params = [p for p in lm.model.parameters()]
    full = torch.autograd.grad(out.loss, params)
    assert len(out.terms) == 4 and {t.part for t in out.terms} <= {"positive", "negative", "zero_advantage"}
    assert all(len(t.token_weights) == len(t.response_ids) for t in out.terms)
    parts = term_gradients(lm.model, lm.tokenizer, out.terms)
    names = [n for n, _ in lm.model.named_parameters()]
    total = [sum(g[n] for g in parts) for n in names]
    num = sum(float((a - b).norm() ** 2) for a, b in zip(full, total)) ** 0.5
    den = sum(float(a.norm() ** 2) for a in full) ** 0.5
    assert den > 0 and num / den < 1e-5


# --------------------------------------------------------------------------- resume, LoRA, reference


class Kill(Exception):
    pass


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    """Killed at step 3 (after the step-2 checkpoint; step 3's generation batch already written), resumed: the
    same completions are sampled again, and losses, rewards, saved batches and weights equal the uninterrupted
    run's (AdamW state restored; β > 0, so the reference is the starting model reloaded)."""
    base = dict(steps=4, checkpoint_every=2, beta=0.1, optimizer="adamw")
    full = train(cfg_(tmp_path, "full", **base), progress=False)

    class KillAt:
        def before_step(self, step, model, terms, optimizer=None):
            if step == 3:
                raise Kill

        def after_step(self, step, model, optimizer):
            return None

    cut = cfg_(tmp_path, "cut", **base)
    with pytest.raises(Kill):
        train(cut, decomposer=KillAt(), progress=False)
    assert RunDir(cut.out).grpo_steps() == [1, 2, 3]
    resumed = train(cut, resume=True, progress=False)
    a, b = train_rows(full.run.path), train_rows(resumed.run.path)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for key in ("loss", "reward", "reward_std", "kl", "completions/mean_length"):
            assert rb[key] == pytest.approx(ra[key], abs=1e-6), key
    assert any(r["kl"] > 0 for r in a[1:])
    for step in range(1, 5):
        ga, gb = full.run.grpo_step(step), resumed.run.grpo_step(step)
        assert [(r.completion_ids, r.reward) for r in ga] == [(r.completion_ids, r.reward) for r in gb]
        assert [r.advantage for r in ga] == pytest.approx([r.advantage for r in gb], abs=1e-6)
    wa, wb = weights(full.model), weights(resumed.model)
    assert max(float((wa[n] - wb[n]).abs().max()) for n in wa) <= 1e-6


def test_lora_grpo_with_a_kl_to_the_adapter_free_policy(tmp_path):
    """LoRA + β > 0: the reference is the policy with its adapter disabled (no copy); the KL is 0 at step 1
    (policy = reference) and grows once the adapter moved; only the adapters train."""
    import lldyn.train.reference as R

    cfg = cfg_(tmp_path, steps=3, lora_r=4, beta=0.5, lr=5e-2)
    lm = load_model(cfg.model_config())
    ref = R.reference_model(cfg, lm.model)
    assert isinstance(ref, R.AdapterDisabled) and ref.model is lm.model
    result = train(cfg, progress=False)
    rows = train_rows(result.run.path)
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[2]["kl"] > 1e-6
    names = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert names and all("lora" in n for n in names)


def test_full_finetuning_reference_is_a_frozen_copy_of_the_starting_model(tmp_path):
    """β > 0 without LoRA: a frozen deep copy (no gradient, eval mode) that stays the starting model while the
    policy trains; β = 0 needs no reference at all."""
    import lldyn.train.reference as R

    cfg = cfg_(tmp_path, beta=0.04)
    lm = load_model(cfg.model_config())
    start = weights(lm.model)
    ref = R.reference_model(cfg, lm.model)
    assert ref is not lm.model and not ref.training and not any(p.requires_grad for p in ref.parameters())
    with torch.no_grad():
        for p in lm.model.parameters():
            p.add_(0.1)
    assert all(torch.equal(p, start[n]) for n, p in ref.named_parameters())
    result = train(cfg_(tmp_path, "b0", steps=1), progress=False)
    assert "kl" not in train_rows(result.run.path)[0]


# --------------------------------------------------------------------------- the decomposition


def test_decomposition_of_an_sgd_grpo_step_splits_into_positive_and_negative(tmp_path):
    """--decompose-every 1 on SGD GRPO steps (small lr, no clipping): the first-order prediction follows the actual
    change of every probe (Pearson ≥ 0.99), and the positive- and negative-advantage terms add up to it (plain SGD
    leaves nothing to `other`)."""
    probes = tmp_path / "probes.jsonl"
    subprocess.run([sys.executable, "-m", "lldyn.cli", "probes", "build", "--data", "builtin", "--out", str(probes),
                    "--limit", "2"], check=True, capture_output=True)
    cfg = cfg_(tmp_path, steps=2, lr=1e-2, optimizer="sgd", max_grad_norm=0.0, probes=str(probes), decompose_every=1,
               eval_every=1)
    result = train(cfg, progress=False)
    rows = result.run.decompose_rows()
    assert {r["step"] for r in rows} == {1, 2}
    actual = torch.tensor([r["actual"] for r in rows])
    predicted = torch.tensor([r["predicted"] for r in rows])
    assert float(torch.corrcoef(torch.stack([actual, predicted]))[0, 1]) >= 0.99
    scale = float(predicted.abs().max())
    assert scale > 0
    for r in rows:
        parts = r["parts"]
        assert set(parts) == {"positive", "negative", "other"}
        assert parts["positive"] + parts["negative"] + parts["other"] == pytest.approx(r["predicted"], abs=1e-9)
        assert abs(parts["other"]) <= 1e-3 * scale
    assert any(abs(r["parts"]["negative"]) > 1e-3 * scale for r in rows)
    assert any(abs(r["parts"]["positive"]) > 1e-3 * scale for r in rows)


# --------------------------------------------------------------------------- sampling, rewards, config


def test_samples_keep_their_tokens_and_eos():
    lm = load_model(ModelConfig(name="tiny-random-llama"))
    prompts = ["What is the capital of France?"] * 8
    config = GenerationConfig(max_new_tokens=12, do_sample=True, seed=10)
    samples = sample(lm.model, lm.tokenizer, prompts, config)
    eos = lm.tokenizer.eos_token_id
    assert any(s.eos for s in samples) and not all(s.eos for s in samples)
    for s in samples:
        assert (s.completion_ids[-1] == eos) == s.eos and eos not in s.completion_ids[:-1]
        assert s.eos or len(s.completion_ids) == 12
        assert s.prompt_ids == tuple(Encoder(lm.tokenizer, TrainConfig().scoring()).prompt(prompts[0]))
    assert sample(lm.model, lm.tokenizer, prompts, config) == samples  # seeded
    assert generate(lm.model, lm.tokenizer, prompts, config) == [s.text.strip() for s in samples]


def test_gold_answer_reward_by_hand():
    """1 when the completion states the gold answer, 0 otherwise, None without one. Where the prompt holds the
    answer ("Divide 64 by 8."), a completion that restates the question (repeats 64) needs a mention beyond the
    prompt's; one that does not needs one mention."""
    cases = [("What is the capital of France?", "Paris.", 1.0), ("What is the capital of France?", "Not Paris.", 0.0),
             ("What is the capital of France?", "Lyon.", 0.0),
             ("Divide 64 by 8.", "Dividing 64 by 8 gives 8.", 1.0), ("Divide 64 by 8.", "Dividing 64 by 8 gives 9.", 0.0),
             ("Divide 64 by 8.", "8.", 1.0), ("Divide 64 by 8.", "It is eight.", 1.0), ("Divide 64 by 8.", "64 / 8", 0.0),
             ("Divide 64 by 8.", "9, since 64 / 8 is not 8.", 0.0), ("What is 121 / 11?", "121 by 11 is 11.", 1.0)]
    answers = {"What is the capital of France?": ("Paris", []), "Divide 64 by 8.": ("8", ["eight"]),
               "What is 121 / 11?": ("11", ["eleven"])}
    got = gold_answer_reward([p for p, _, _ in cases], [c for _, c, _ in cases],
                             answer=[answers[p][0] for p, _, _ in cases],
                             answer_aliases=[answers[p][1] for p, _, _ in cases])
    assert got == [want for _, _, want in cases]
    assert gold_answer_reward(["Hi"], ["Paris"], answer=[None], answer_aliases=[None]) == [None]
    chat = [{"role": "user", "content": "Divide 64 by 8."}]
    assert gold_answer_reward([chat], [[{"role": "assistant", "content": "64 / 8 = 8"}]], answer=["8"],
                              answer_aliases=[["eight"]]) == [1.0]
    assert states_gold_answer("Divide 64 by 8.", "64 divided by 8 is 9", "8") is False


def test_builtin_reward_on_the_builtin_pairs():
    """On the built-in data every chosen response and its meaning-preserving rephrase earn 1, every rejected
    response 0 and, for a wrong fact, its rephrase 0 too (prompts that hold their answer included): the reward
    the data was written for."""
    from lldyn.data import load_prompts

    rows = [p for p in load_prompts("builtin", limit=400) if "answer" in p.fields]
    assert len(rows) >= 200
    for key, want in (("chosen", 1.0), ("chosen_rephrase_semantic", 1.0), ("rejected", 0.0),
                      ("rejected_rephrase_semantic", 0.0)):
        members = [p for p in rows if key != "rejected_rephrase_semantic" or p.fields["rejected_kind"] == "wrong_fact"]
        got = gold_answer_reward([p.prompt for p in members], [p.fields[key] for p in members],
                                 answer=[p.fields["answer"] for p in members],
                                 answer_aliases=[p.fields["answer_aliases"] for p in members])
        assert [p.id for p, g in zip(members, got) if g != want] == [], key


@pytest.mark.parametrize("fn, needle", [
    (lambda prompts, completions, **kw: 1 / 0, "reward function raised ZeroDivisionError: division by zero"),
    (lambda prompts, completions, **kw: [1.0], "returned 1 rewards for 2 completions"),
    (lambda prompts, completions, **kw: [None, float("nan")], "scored none of the 2 completions"),
    (lambda prompts, completions, **kw: ["good", 1.0], "returned str 'good' for completion 0"),
    (lambda prompts, completions, **kw: [float("inf"), 1.0], "returned inf for completion 0"),
    (lambda prompts, completions, **kw: 1.0, "returned float"),
])
def test_a_reward_function_that_misbehaves_is_one_clear_error(fn, needle):
    with pytest.raises(LldynError, match=needle.replace("(", r"\(").replace(")", r"\)")) as err:
        RewardFunction("mod:fn", fn)(["p", "p"], ["a", "b"])
    assert "\n" not in str(err.value) and err.value.file == "mod:fn"
    assert RewardFunction("mod:fn", lambda prompts, completions, **kw: [None, True])(["p", "p"], ["a", "b"])[1] == 1.0


def test_reward_specs():
    assert load_reward("builtin").needs_answer
    assert load_reward("test_grpo_train:ids_reward").fn is ids_reward
    for spec, needle in (("nope", "unknown reward 'nope'"), ("no_such_module_x:f", "cannot import reward module"),
                         ("test_grpo_train:missing", "has no function 'missing'")):
        with pytest.raises(LldynError, match=needle):
            load_reward(spec)


def test_defaults_follow_trl_and_other_methods_write_the_config_they_always_wrote():
    grpo = TrainConfig(method="grpo")
    assert (grpo.beta, grpo.batch_size, grpo.num_generations, grpo.loss_type, grpo.epsilon, grpo.epsilon_high,
            grpo.scale_rewards, grpo.max_completion_length, grpo.temperature, grpo.top_p,
            grpo.mask_truncated_completions) == (0.0, 8, 8, "dapo", 0.2, None, "group", 512, 1.0, 1.0, False)
    dpo = run_config(TrainConfig(method="dpo"))
    assert dpo["beta"] == 0.1 and dpo["batch_size"] == 4
    assert not {"reward", "num_generations", "loss_type", "epsilon", "scale_rewards"} & set(dpo)
    assert run_config(grpo)["num_generations"] == 8


# --------------------------------------------------------------------------- bad input through the CLI


REWARDS = '''
def raises(prompts, completions, **kw):
    raise ValueError("boom")
def short(prompts, completions, **kw):
    return [1.0]
def nothing(prompts, completions, **kw):
    return [None] * len(completions)
def words(prompts, completions, **kw):
    return ["good"] * len(completions)
def nans(prompts, completions, **kw):
    return [float("nan")] * len(completions)
def infinite(prompts, completions, **kw):
    return [float("-inf")] + [1.0] * (len(completions) - 1)
'''

BASE = ["train", "--method", "grpo", "--model", "tiny-random-llama", "--data", "builtin:train", "--limit", "4",
        "--steps", "1", "--batch-size", "4", "--num-generations", "2", "--max-completion-length", "4",
        "--no-initial-sample", "--max-length", "96", "--max-prompt-tokens", "48"]


@pytest.mark.parametrize("extra, needle", [
    (["--num-generations", "1"], "GRPO needs at least 2 completions per prompt"),
    (["--loss-type", "ppo"], "unknown GRPO loss type 'ppo'"),
    (["--num-generations", "3"], "does not split into groups of num_generations=3"),
    (["--scale-rewards", "max"], "unknown scale_rewards 'max'"),
    (["--beta", "-1"], "the KL coefficient must be >= 0"),
    (["--limit", "1"], "a GRPO step samples 2 prompts"),
    (["--reward", "nope"], "unknown reward 'nope'"),
    (["--reward", "rewards_here:raises"], "rewards_here:raises, field 'reward': reward function raised ValueError: boom"),
    (["--reward", "rewards_here:short"], "returned 1 rewards for 4 completions"),
    (["--reward", "rewards_here:nothing"], "scored none of the 4 completions"),
    (["--reward", "rewards_here:words"], "returned str 'good' for completion 0"),
    (["--reward", "rewards_here:nans"], "scored none of the 4 completions"),
    (["--reward", "rewards_here:infinite"], "returned -inf for completion 0"),
    (["--reward", "rewards_here:missing"], "has no function 'missing'"),
    (["--data", "prompts.jsonl"], "prompts.jsonl:2, field 'answer': prompt 'q2' has no gold answer"),
    (["--method", "dpo", "--batch-size", "2"], "num_generations applies to --method grpo only"),
])
def test_bad_grpo_input_is_one_clear_error_and_writes_nothing(tmp_path, extra, needle):
    (tmp_path / "rewards_here.py").write_text(REWARDS)
    (tmp_path / "prompts.jsonl").write_text(
        json.dumps({"id": "q1", "prompt": "Capital of France?", "answer": "Paris"}) + "\n"
        + json.dumps({"id": "q2", "prompt": "Say hi."}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "lldyn.cli", *BASE, "--out", "run", *extra], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_builtin_reward_trains_on_rows_with_a_gold_answer_and_skips_the_rest_when_told(tmp_path):
    """--reward builtin on data where one row has no answer: --skip-invalid trains on the others (a warning
    counts the skipped one); the rows' gold answers reach the reward (the random model states none: reward 0)."""
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in (
        {"id": "q1", "prompt": "Capital of France?", "answer": "Paris"},
        {"id": "q2", "prompt": "Say hi."},
        {"id": "q3", "prompt": "Divide 64 by 8.", "answer": "8", "answer_aliases": ["eight"]})))
    with pytest.warns(UserWarning, match="1 of 3 prompts skipped"):
        result = train(cfg_(tmp_path, data=str(data), reward="builtin", skip_invalid=True, steps=1, limit=None),
                       progress=False)
    saved = result.run.grpo_step(1)
    assert {r.prompt_id for r in saved} == {"q1", "q3"}
    assert all(r.reward == 0.0 and r.advantage == 0.0 for r in saved)
    assert train_rows(result.run.path)[0]["frac_reward_zero_std"] == 1.0
