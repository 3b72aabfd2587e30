"""The loss of one micro-batch, per method family: log-probs from the engine, the loss from
:mod:`lldyn.losses`, and the step's :class:`~lldyn.losses.UpdateTerm` list (∇θ L = Σ weight · ∇θ log π(y))
that the decomposition reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from lldyn.losses import UpdateTerm, preference_loss, sft_loss
from lldyn.scoring import collate, sequence_logps, shared_prompt_logps
from lldyn.train.batches import Example
from lldyn.train.config import TrainConfig


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
    encoded = [e.chosen_ids for e in batch] + [e.rejected_ids for e in batch]
    # y+ and y− share their prompt: it runs forward (and backward) once, not twice
    st = shared_prompt_logps(model, encoded, pad_id) if cfg.scoring().prefix_sharing else None  # type: ignore[arg-type]
    if st is None:
        st = sequence_logps(model, collate(encoded, pad_id).to(cfg.device))  # type: ignore[arg-type]
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
