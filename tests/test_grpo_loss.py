"""GRPO: group advantages and the clipped surrogate against TRL 1.16's GRPOTrainer, hand-worked numbers, autograd.

The TRL references run the real ``GRPOTrainer`` (built offline from a tiny random Llama saved to a temp
directory): ``_generate_and_score_completions`` for the advantages, ``_compute_loss`` for the loss. Two things a
direct call needs that ``Trainer.train`` would otherwise set: ``current_gradient_accumulation_steps`` (1: no
accumulation) and the model in train mode.
"""
from __future__ import annotations

import math

import pytest
import torch

from lldyn.errors import LldynError
from lldyn.losses import GRPO_LOSSES, group_advantages, grpo_loss

G = 4
REWARDS = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # two groups of four


# --- advantages by hand ----------------------------------------------------------------------------------------------

def test_group_advantages_hand_values():
    out = group_advantages(torch.tensor(REWARDS), num_generations=G)
    # Group 1 [1,0,0,1]: mean 1/2, deviations ±1/2, Σ dev² = 1, Bessel var = 1/3, std = 0.577350.
    # Group 2 [1,1,1,0]: mean 3/4, deviations (1/4, 1/4, 1/4, −3/4), Σ dev² = 3/4, var = 1/4, std = 0.5.
    assert out.group_mean.tolist() == pytest.approx([0.5, 0.75])
    assert out.group_std.tolist() == pytest.approx([0.5773503, 0.5], abs=1e-7)
    a1 = 0.5 / (0.5773503 + 1e-4)  # = 0.865875
    a2, a3 = 0.25 / 0.5001, 0.75 / 0.5001  # = 0.499900, 1.499700
    assert a1 == pytest.approx(0.865875, abs=1e-6)
    assert out.advantages.tolist() == pytest.approx([a1, -a1, -a1, a1, a2, a2, a2, -a3], abs=1e-6)
    assert out.frac_reward_zero_std.item() == 0.0

    none = group_advantages(torch.tensor(REWARDS), G, scale_rewards="none")
    assert none.advantages.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75])
    assert group_advantages(torch.tensor(REWARDS), G, scale_rewards=False).advantages.tolist() == \
        none.advantages.tolist()
    assert group_advantages(torch.tensor(REWARDS), G, scale_rewards=True).advantages.tolist() == \
        out.advantages.tolist()

    # "batch": group means still subtracted, divided by the std of all 8 rewards: mean 5/8,
    # Σ dev² = 5·(3/8)² + 3·(5/8)² = 15/8, var = (15/8)/7, std = 0.517549.
    batch = group_advantages(torch.tensor(REWARDS), G, scale_rewards="batch")
    assert batch.batch_std.item() == pytest.approx(math.sqrt(15 / 56), abs=1e-7)
    s = 0.5175492 + 1e-4
    assert batch.advantages.tolist() == pytest.approx(
        [0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0.25 / s, 0.25 / s, 0.25 / s, -0.75 / s], abs=1e-6)


def test_group_advantages_zero_std_and_unscorable():
    out = group_advantages(torch.tensor([1.0, 1.0, 1.0, 1.0, 2.0, float("nan"), 0.0, 1.0]), G)
    # all-equal group: no signal, advantage 0; the NaN reward is left out of its group's mean (1.0) and std (1.0)
    assert out.frac_reward_zero_std.item() == 0.5
    assert out.group_mean.tolist() == pytest.approx([1.0, 1.0]) and out.group_std[1].item() == pytest.approx(1.0)
    assert out.advantages.tolist() == pytest.approx([0, 0, 0, 0, 1 / 1.0001, 0.0, -1 / 1.0001, 0.0], abs=1e-6)


# --- loss by hand ----------------------------------------------------------------------------------------------------

def ragged_batch():
    """Three completions of lengths 3, 1 and 2 (T = 3), float64, with differentiable log-probs."""
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, 0.0, 0.0], [-0.2, -1.5, 0.0]], dtype=torch.float64)
    return logp.requires_grad_(), mask


def test_on_policy_dapo_pushes_every_token_of_a_completion_equally():
    """β = 0, ratio 1, dapo: c_it = −A_i / (total active tokens) for every token — Lazy Likelihood Displacement."""
    logp, mask = ragged_batch()
    adv = torch.tensor([1.5, -0.5, -1.0], dtype=torch.float64)
    out = grpo_loss(logp, adv, mask)  # TRL's defaults: dapo, β = 0, on-policy
    assert out.loss.item() == pytest.approx(-(1.5 * 3 - 0.5 * 1 - 1.0 * 2) / 6)  # −Σ_i A_i |y_i| / 6
    expected = torch.tensor([[-1.5 / 6] * 3, [0.5 / 6, 0, 0], [1.0 / 6, 1.0 / 6, 0]], dtype=torch.float64)
    assert torch.allclose(out.token_coef, expected, atol=1e-15)
    assert out.sequence_coef.tolist() == pytest.approx([-4.5 / 6, 0.5 / 6, 2.0 / 6])
    assert out.kl is None and out.mean_kl is None and not out.clipped.any()
    assert out.ratio.tolist() == [[1.0] * 3] * 3


def test_on_policy_grpo_and_dr_grpo_normalisers_by_hand():
    logp, mask = ragged_batch()
    adv = torch.tensor([1.5, -0.5, -1.0], dtype=torch.float64)
    grpo = grpo_loss(logp, adv, mask, loss_type="grpo")  # w_i = 1 / (B |y_i|)
    assert grpo.loss.item() == pytest.approx(-(1.5 - 0.5 - 1.0) / 3)
    assert grpo.token_coef[0].tolist() == pytest.approx([-1.5 / 9] * 3)
    assert grpo.token_coef[1].tolist() == pytest.approx([0.5 / 3, 0, 0])
    assert grpo.token_coef[2].tolist() == pytest.approx([1.0 / 6, 1.0 / 6, 0])
    dr = grpo_loss(logp, adv, mask, loss_type="dr_grpo", max_completion_length=10)  # w = 1 / (B · L_max) = 1/30
    assert dr.token_coef[2].tolist() == pytest.approx([1.0 / 30, 1.0 / 30, 0])
    bnpo = grpo_loss(logp, adv, mask, loss_type="bnpo")  # one call: same as dapo
    assert torch.allclose(bnpo.token_coef, grpo_loss(logp, adv, mask).token_coef)


def test_clipped_tokens_get_no_gradient_by_hand():
    """One sequence, A = +1 then A = −1, ratios 1.5, 1.1 and 0.5 (ε = 0.2), dapo over 3 tokens."""
    logp = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    old = -torch.log(torch.tensor([[1.5, 1.1, 0.5]], dtype=torch.float64))  # ratio = exp(0 − old)
    mask = torch.ones(1, 3)
    pos = grpo_loss(logp, torch.tensor([1.0], dtype=torch.float64), mask, old_token_logps=old)
    # A > 0: ρ = 1.5 > 1.2 is clipped (no gradient); ρ = 1.1 and ρ = 0.5 take the unclipped branch: c = −A ρ / 3
    assert pos.token_coef[0].tolist() == pytest.approx([0.0, -1.1 / 3, -0.5 / 3])
    assert pos.loss.item() == pytest.approx(-(1.2 + 1.1 + 0.5) / 3)
    assert pos.clipped.tolist() == [[True, False, False]]
    assert pos.clip.high_mean.item() == pytest.approx(1 / 3) and pos.clip.low_mean.item() == 0.0
    neg = grpo_loss(logp, torch.tensor([-1.0], dtype=torch.float64), mask, old_token_logps=old)
    # A < 0: ρ = 0.5 < 0.8 is clipped; the others push down with strength ρ / 3
    assert neg.token_coef[0].tolist() == pytest.approx([1.5 / 3, 1.1 / 3, 0.0])
    assert neg.clipped.tolist() == [[False, False, True]] and neg.clip.low_min.item() == pytest.approx(1 / 3)
    # delta caps the unclipped ratio for A < 0: ρ = 1.5 > δ = 1.4 is constant there, no gradient
    capped = grpo_loss(logp, torch.tensor([-1.0], dtype=torch.float64), mask, old_token_logps=old, delta=1.4)
    assert capped.token_coef[0].tolist() == pytest.approx([0.0, 1.1 / 3, 0.0])


def test_kl_term_by_hand():
    """On-policy, A = 0, β = 0.5, one token with log π = −1, log π_ref = −2: k3 = e^{−1} − (−1) − 1 = e^{−1}."""
    logp = torch.tensor([[-1.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-2.0]], dtype=torch.float64)
    args = dict(ref_token_logps=ref, beta=0.5, loss_type="grpo")
    out = grpo_loss(logp, torch.zeros(1, dtype=torch.float64), torch.ones(1, 1), **args)
    assert out.loss.item() == pytest.approx(0.5 * math.exp(-1))
    assert out.mean_kl.item() == pytest.approx(math.exp(-1))
    # with the importance correction (TRL's default) ∂/∂l [ρ k3] = ρ(1 − e^{r−l}) + ρ k3 = 1 − e^{−1} + e^{−1} = 1
    assert out.token_coef.item() == pytest.approx(0.5 * 1.0)
    plain = grpo_loss(logp, torch.zeros(1, dtype=torch.float64), torch.ones(1, 1), kl_importance_correction=False,
                      **args)
    assert plain.token_coef.item() == pytest.approx(0.5 * (1 - math.exp(-1)))


# --- residual coefficients = autograd --------------------------------------------------------------------------------

@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.0, 0.1])
@pytest.mark.parametrize("loss_type", GRPO_LOSSES)
def test_token_coef_equals_autograd(loss_type, beta, level):
    torch.manual_seed(0)
    B, T = 6, 5
    mask = torch.ones(B, T)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    mask[5] = 0  # a completion with no active token
    adv = torch.randn(B, dtype=torch.float64)
    for old_scale in (None, 0.3):  # on-policy, then off-policy with clipping on both sides
        logp = (torch.randn(B, T, dtype=torch.float64) - 2).requires_grad_()
        old = None if old_scale is None else (logp + old_scale * torch.randn(B, T, dtype=torch.float64)).detach()
        ref = logp.detach() + 0.5 * torch.randn(B, T, dtype=torch.float64)
        for kw in ({}, {"delta": 1.3, "epsilon_high": 0.28}, {"kl_importance_correction": False}):
            out = grpo_loss(logp, adv, mask, old_token_logps=old, ref_token_logps=ref, beta=beta,
                            loss_type=loss_type, max_completion_length=7, importance_sampling_level=level, **kw)
            (grad,) = torch.autograd.grad(out.loss, logp)
            assert torch.allclose(out.token_coef, grad, atol=1e-12), (old_scale, kw)
            assert torch.allclose(out.sequence_coef, grad.sum(-1), atol=1e-12)
            if old is not None and level == "token":  # clipped tokens keep only the KL term's pull
                assert out.clipped.any()
                if beta == 0.0:
                    assert (out.token_coef[out.clipped] == 0).all()


# --- bad input -------------------------------------------------------------------------------------------------------

def test_bad_input_names_the_field():
    logp, mask = torch.zeros(4, 3), torch.ones(4, 3)
    adv = torch.zeros(4)
    cases = [
        (lambda: grpo_loss(logp, adv, mask, loss_type="ppo"), "loss_type"),
        (lambda: grpo_loss(logp, adv, torch.ones(4, 2)), "mask"),
        (lambda: grpo_loss(logp, adv, mask, old_token_logps=torch.zeros(3, 3)), "old_token_logps"),
        (lambda: grpo_loss(logp, torch.zeros(3), mask), "advantages"),
        (lambda: grpo_loss(torch.zeros(12), adv, mask), "policy_token_logps"),
        (lambda: grpo_loss(logp, adv, mask, beta=0.1), "ref_token_logps"),
        (lambda: grpo_loss(logp, adv, mask, loss_type="dr_grpo"), "max_completion_length"),
        (lambda: grpo_loss(logp, adv, mask, importance_sampling_level="seq"), "importance_sampling_level"),
        (lambda: group_advantages(torch.zeros(6), num_generations=4), "rewards"),
        (lambda: group_advantages(torch.zeros(6), num_generations=1), "num_generations"),
        (lambda: group_advantages(torch.zeros(2, 4), num_generations=4), "rewards"),
        (lambda: group_advantages(torch.zeros(8), num_generations=4, scale_rewards="std"), "scale_rewards"),
    ]
    for call, field in cases:
        with pytest.raises(LldynError) as err:
            call()
        assert err.value.field == field and err.value.expected, (field, str(err.value))
        assert field in str(err.value)


# --- against TRL 1.16's GRPOTrainer ----------------------------------------------------------------------------------

trl = pytest.importorskip("trl")
MAX_COMPLETION_LENGTH = 8  # > T below, so dr_grpo's constant differs from the padded length


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama and its byte-level tokenizer saved to disk, so TRL can load them (and a reference)."""
    from lldyn.models import ModelConfig, load_model

    lm = load_model(ModelConfig(name="tiny-random-llama", seed=0))
    path = tmp_path_factory.mktemp("tiny-llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def make_trainer(model_dir, tmp_path, rewards=REWARDS, **config):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, report_to=[], save_strategy="no",
                      disable_tqdm=True, seed=0, num_generations=G, per_device_train_batch_size=2 * G,
                      max_completion_length=MAX_COMPLETION_LENGTH, **config)

    def fixed_rewards(completions, **kwargs):
        return list(rewards)

    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=fixed_rewards, args=args,
                          train_dataset=Dataset.from_list([{"prompt": "ab"}, {"prompt": "xyz"}]),
                          processing_class=AutoTokenizer.from_pretrained(model_dir))
    trainer.model.train()  # TRL's normalisers read `model.training` (train vs eval)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train per optimiser step; 1 = no accumulation
    return trainer


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none", True, False])
def test_group_advantages_match_trl(model_dir, tmp_path, scale_rewards):
    """TRL generates 2 × 4 completions and scores them with fixed rewards; its advantages = ours."""
    rewards = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, None, 0.5]  # one unscorable completion, a group with zero std
    trainer = make_trainer(model_dir, tmp_path, rewards=rewards, scale_rewards=scale_rewards)
    rows = [{"prompt": "ab"}] * G + [{"prompt": "xyz"}] * G
    with torch.no_grad():
        batch = trainer._generate_and_score_completions(rows)
    ours = group_advantages(torch.tensor([float("nan") if r is None else r for r in rewards]), G, scale_rewards)
    assert torch.allclose(batch["advantages"], ours.advantages, atol=1e-7, rtol=0)
    zero_std = trainer._metrics["train"]["frac_reward_zero_std"][-1]
    assert ours.frac_reward_zero_std.item() == pytest.approx(zero_std)


def hand_batch():
    """8 prompts (left-padded, P = 5) and completions (right-padded, T = 6) of random tokens, as TRL's inputs."""
    g = torch.Generator().manual_seed(0)
    B, P, T, pad = 2 * G, 5, 6, 257
    prompt_ids = torch.randint(0, 256, (B, P), generator=g)
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    prompt_mask[::2, :2] = 0
    completion_ids = torch.randint(0, 256, (B, T), generator=g)
    lengths = torch.tensor([6, 3, 5, 1, 6, 4, 2, 6])
    completion_mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    return {
        "prompt_ids": prompt_ids.masked_fill(prompt_mask == 0, pad), "prompt_mask": prompt_mask,
        "completion_ids": completion_ids.masked_fill(completion_mask == 0, pad), "completion_mask": completion_mask,
        "advantages": group_advantages(torch.tensor(REWARDS), G).advantages,
        "num_items_in_batch": completion_mask.sum(),
    }


def token_logps(model, batch):
    """(B, T) log π of each completion token: one plain forward, log_softmax, gather (the test's own reference)."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    P = batch["prompt_ids"].shape[1]
    logits = model(input_ids=ids, attention_mask=attention).logits[:, P - 1:-1]
    return logits.log_softmax(-1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)


CASES = [(lt, beta, off) for lt in GRPO_LOSSES for beta in (0.0, 0.04) for off in (False, True)] + [
    ("grpo", 0.04, True, {"importance_sampling_level": "sequence"}),
    ("dapo", 0.04, True, {"importance_sampling_level": "sequence"}),
    ("dapo", 0.0, True, {"epsilon_high": 0.28, "delta": 1.5}),
    ("dapo", 0.04, True, {"use_bias_correction_kl": False}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(x) for x in c[:3]) + (
    "-" + ",".join(f"{k}={v}" for k, v in c[3].items()) if len(c) > 3 else ""))
def test_grpo_loss_matches_trl_compute_loss(model_dir, tmp_path, case):
    from transformers import AutoModelForCausalLM

    loss_type, beta, off_policy, extra = (*case, {})[:4]
    trainer = make_trainer(model_dir, tmp_path, loss_type=loss_type, beta=beta, **extra)
    batch = hand_batch()
    mask = batch["completion_mask"]

    # The test's own per-token log-probs, from an independent copy of the same weights.
    model = AutoModelForCausalLM.from_pretrained(model_dir).train()
    logps = token_logps(model, batch)
    g = torch.Generator().manual_seed(1)
    old = (logps + 0.4 * torch.randn(logps.shape, generator=g)).detach() if off_policy else None
    ref = None
    if beta:
        ref_model = AutoModelForCausalLM.from_pretrained(model_dir)
        with torch.no_grad():  # a reference that differs from the policy: the weights, slightly moved
            for p in ref_model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
            ref = token_logps(ref_model, batch) * mask  # TRL's padded positions hold 0
    trl_batch = dict(batch)
    if old is not None:
        trl_batch["old_per_token_logps"] = old * mask
    if ref is not None:
        trl_batch["ref_per_token_logps"] = ref

    # TRL: the real _compute_loss, with its own per-token log-probs captured to read their gradient.
    seen = {}
    compute_logps = trainer._get_per_token_logps_and_entropies

    def capture(*args, **kwargs):
        out = compute_logps(*args, **kwargs)
        out[0].retain_grad()
        seen["logps"] = out[0]
        return out

    trainer._get_per_token_logps_and_entropies = capture
    trl_loss = trainer._compute_loss(trainer.model, trl_batch)
    trl_loss.backward()
    trl_logps = seen["logps"]
    assert torch.allclose(trl_logps * mask, logps.detach() * mask, atol=1e-5)

    kwargs = dict(old_token_logps=None if old is None else old * mask, ref_token_logps=ref, beta=beta,
                  loss_type=loss_type, max_completion_length=MAX_COMPLETION_LENGTH,
                  epsilon_high=extra.get("epsilon_high"), delta=extra.get("delta"),
                  importance_sampling_level=extra.get("importance_sampling_level", "token"),
                  kl_importance_correction=extra.get("use_bias_correction_kl", True))
    # 1. Same per-token log-prob values: same loss, and G = the gradient TRL's loss puts on its log-probs.
    leaf = trl_logps.detach().clone().requires_grad_()
    on_trl = grpo_loss(leaf, batch["advantages"], mask, **kwargs)
    assert abs(on_trl.loss.item() - trl_loss.item()) <= 1e-6
    assert torch.allclose(on_trl.token_coef, trl_logps.grad, atol=1e-7, rtol=0)
    (autograd,) = torch.autograd.grad(on_trl.loss, leaf)
    assert torch.allclose(on_trl.token_coef, autograd, atol=1e-7, rtol=0)

    # 2. The test's own forward: same loss and the same gradient on every parameter.
    ours = grpo_loss(logps, batch["advantages"], mask, **kwargs)
    ours.loss.backward()
    assert abs(ours.loss.item() - trl_loss.item()) <= 1e-5
    trl_params = dict(trainer.model.named_parameters())
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, trl_params[name].grad, atol=1e-5, rtol=0), name

    # 3. The statistics TRL logs.
    logged = trainer._metrics["train"]
    for key in ("low_mean", "high_mean", "region_mean", "low_min", "high_max"):
        assert getattr(on_trl.clip, key).item() == pytest.approx(logged[f"clip_ratio/{key}"][-1], abs=1e-7), key
    if beta:
        assert on_trl.mean_kl.item() == pytest.approx(logged["kl"][-1], abs=1e-7)
    if off_policy and extra.get("importance_sampling_level", "token") == "token":
        assert on_trl.clip.low_mean > 0 and on_trl.clip.high_mean > 0  # clipping is exercised on both sides
