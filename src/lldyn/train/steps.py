"""The loss of one micro-batch, per method family: log-probs from the engine, the loss from
:mod:`lldyn.losses`, and the step's :class:`~lldyn.losses.UpdateTerm` list (∇θ L = Σ weight · ∇θ log π(y))
that the decomposition reads. GRPO's terms carry per-token weights (its residual coefficients are per token).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from lldyn.losses import UpdateTerm, grpo_loss, preference_loss, sft_loss
from lldyn.scoring import EncodedPair, TokenStats, collate, sequence_logps, shared_prompt_logps
from lldyn.train.batches import Example
from lldyn.train.config import TrainConfig
from lldyn.train.grpo import Rollout


@dataclass
class StepOutput:
    """loss: () to back-propagate (already scaled by 1/grad_accum); stats: logged means; terms: the gradient's terms."""

    loss: torch.Tensor
    stats: dict[str, float]
    terms: list[UpdateTerm]


def sft_step(model: Any, batch: Sequence[Example], pad_id: int, cfg: TrainConfig, scale: float) -> StepOutput:
    """Mean SFT loss of a micro-batch; ``scale`` = 1 / grad_accum."""
    tb = collate([e.chosen_ids for e in batch], pad_id).to(cfg.device)
    st = sequence_logps(model, tb)
    out = sft_loss(st.logps, st.n_tokens, per_token=cfg.sft_per_token)
    n = len(batch)
    terms = [UpdateTerm(e.id, "response", e.prompt, e.chosen, float(out.coef[i]) * scale / n) for i, e in enumerate(batch)]
    stats = {"loss": out.loss.item(), "chosen_logp": st.logps.mean().item(),
             "chosen_mean_logp": (st.logps / st.n_tokens).mean().item()}
    return StepOutput(out.loss * scale, stats, terms)


def pair_step(model: Any, batch: Sequence[Example], pad_id: int, cfg: TrainConfig, kind: str,
              ref: dict[str, tuple[float, float]] | None, scale: float) -> StepOutput:
    """Mean preference loss of a micro-batch: chosen and rejected in one forward pass."""
    n = len(batch)
    # y+ and y− share their prompt: it runs forward (and backward) once, not twice
    st = prompt_shared_logps(model, [e.chosen_ids for e in batch] + [e.rejected_ids for e in batch], pad_id, cfg)
    logps, lens = st.logps, st.n_tokens
    ref_c = ref_r = None
    if kind != "simpo":
        assert ref is not None
        ref_c = torch.tensor([ref[e.id][0] for e in batch], dtype=logps.dtype, device=logps.device)
        ref_r = torch.tensor([ref[e.id][1] for e in batch], dtype=logps.dtype, device=logps.device)
    out = preference_loss(kind, logps[:n], logps[n:], ref_c, ref_r, lens[:n], lens[n:], cfg.beta, cfg.simpo_gamma)
    terms = []
    for i, e in enumerate(batch):
        terms.append(UpdateTerm(e.id, "chosen", e.prompt, e.chosen, float(out.chosen_coef[i]) * scale / n))
        terms.append(UpdateTerm(e.id, "rejected", e.prompt, e.rejected or "", float(out.rejected_coef[i]) * scale / n))
    stats = {"loss": out.loss.item(), "chosen_logp": logps[:n].mean().item(), "rejected_logp": logps[n:].mean().item(),
             "margin": float(out.margin.mean()), "reward_acc": float(out.reward_accuracy),
             "chosen_reward": float(out.chosen_rewards.mean()), "rejected_reward": float(out.rejected_rewards.mean())}
    return StepOutput(out.loss * scale, stats, terms)


def prompt_shared_logps(model: Any, encoded: Sequence[EncodedPair], pad_id: int, cfg: TrainConfig) -> TokenStats:
    """Differentiable per-token log-probs of responses that share prompts: each prompt runs forward once
    (:func:`lldyn.scoring.shared_prompt_logps`), or full sequences without prefix sharing."""
    st = shared_prompt_logps(model, encoded, pad_id) if cfg.scoring().prefix_sharing else None
    return st if st is not None else sequence_logps(model, collate(encoded, pad_id).to(cfg.device))


def advantage_part(advantage: float) -> str:
    """The decomposition part of a GRPO completion: the sign of its advantage."""
    return "positive" if advantage > 0 else "negative" if advantage < 0 else "zero_advantage"


def grpo_step(model: Any, batch: Sequence[Rollout], pad_id: int, cfg: TrainConfig, num_items: int) -> StepOutput:
    """GRPO loss of a micro-batch of ``batch_size`` completions of the step's generation batch
    (:mod:`lldyn.train.grpo`): :func:`lldyn.losses.grpo_loss` on the engine's per-token log-probs of the sampled
    tokens (the G completions of a prompt continue from one prompt forward), on-policy (π_old = π detached).

    Scaled as TRL 1.16 accumulates it, so the micro-batches' gradients add up to ``grpo_loss`` on the whole
    generation batch (docs/grpo-loss.md): ``dapo`` divides by ``num_items`` (the active tokens of the generation
    batch), the other types by their own normaliser and then by ``grad_accum``. One :class:`UpdateTerm` per
    completion with non-zero coefficients: its per-token ``token_coef``, its exact tokens, and the part named by
    the sign of its advantage. ``stats['loss']`` is this micro-batch's share × ``grad_accum``, so the loop's mean
    over micro-batches logs the generation batch's loss.
    """
    st = prompt_shared_logps(model, [r.encoded for r in batch], pad_id, cfg)
    logps, mask = st.token_logps, st.mask
    if cfg.mask_truncated_completions:  # TRL: a completion cut at max_completion_length does not enter the loss
        mask = mask & torch.tensor([r.row.eos for r in batch], device=mask.device)[:, None]
    advantages = torch.tensor([r.row.advantage for r in batch], dtype=logps.dtype, device=logps.device)
    ref = None
    if cfg.beta != 0.0:
        ref = torch.zeros_like(logps)
        for i, r in enumerate(batch):
            ref[i, :r.row.n_tokens] = torch.tensor(r.ref_token_logps, dtype=logps.dtype)
    dapo = cfg.loss_type == "dapo"
    weights = None
    if cfg.nthr:  # NTHR (lldyn.squeeze.nthr): per-token advantage weights
        weights = torch.ones_like(logps)
        for i, r in enumerate(batch):
            if r.token_weights is not None:
                weights[i, :r.row.n_tokens] = torch.tensor(r.token_weights, dtype=logps.dtype)
    kwargs = dict(ref_token_logps=ref, beta=cfg.beta, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                  loss_type=cfg.loss_type, max_completion_length=cfg.max_completion_length,
                  # a tensor on the log-probs' device: the loss divides (B, T) tensors by it
                  num_items_in_batch=torch.tensor(float(num_items), device=logps.device) if dapo else None)
    out = grpo_loss(logps, advantages, mask, token_weights=weights, **kwargs)  # type: ignore[arg-type]
    scale = 1.0 if dapo else 1.0 / cfg.grad_accum
    terms = []
    for i, r in enumerate(batch):
        coef = out.token_coef[i, :r.row.n_tokens] * scale
        if bool((coef != 0).any()):
            terms.append(UpdateTerm(r.id, advantage_part(r.row.advantage), r.row.prompt, r.row.completion,
                                    float(coef.sum()), tuple(float(c) for c in coef), r.prompt_ids,
                                    r.row.completion_ids))
    stats = {"loss": out.loss.item() * scale * cfg.grad_accum, "completion_logp": float(st.logps.detach().mean()),
             "clip_ratio/low_mean": float(out.clip.low_mean), "clip_ratio/high_mean": float(out.clip.high_mean),
             "clip_ratio/region_mean": float(out.clip.region_mean)}
    if out.mean_kl is not None:
        stats["kl"] = float(out.mean_kl)
    if weights is not None:  # how much of the negative-advantage term's residual NTHR removed
        plain = grpo_loss(logps.detach(), advantages, mask, **kwargs)  # type: ignore[arg-type]
        negative = (advantages < 0)[:, None]
        before = float((plain.token_coef.abs() * negative).sum())
        after = float((out.token_coef.abs() * negative).sum())
        stats["nthr/negative_coef_removed"] = 1.0 - after / before if before > 0 else 0.0
    return StepOutput(out.loss * scale, stats, terms)
