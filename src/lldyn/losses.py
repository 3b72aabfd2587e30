"""Losses as pure functions of summed response log-probs, each exposing its residual G.

Every loss takes tensors of per-sequence log-probs (summed over response tokens, EOS included,
as produced by :mod:`lldyn.scoring`) and returns a typed result with the scalar loss, its named
parts and the per-example *residual coefficients*

    c± = ∂L_i / ∂ log π(y±|x)          (unreduced, per example i)

Because ∂ log π(y|x) / ∂z_t = e_{y_t} − π_t at every response position t, the loss residual on the
logits (the paper's G, Sec. 3 eq. (4)/(5)) is, position by position,

    G_t = ∂L/∂z_t = c · (e_{y_t} − π_t).

SFT: c = −1, so G = π − e_y. DPO: c+ = −β(1−σ(β·m)), c− = +β(1−σ(β·m)), so
G+ = β(1−σ(β·m))·(π − e_y+) and G− = −β(1−σ(β·m))·(π − e_y−): opposite signs (paper eq. (6)).
The decomposition code reads G from these coefficients, never re-deriving it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F

from lldyn.errors import LldynError

class UpdateTerm(NamedTuple):
    """One term of a step's gradient: ∇θ(batch loss) = Σ_terms weight · ∇θ log π(response | prompt).

    weight = ∂(batch loss)/∂log π(y): the loss's residual coefficient (``coef``, ``chosen_coef``,
    ``rejected_coef`` below) divided by the batch size and the gradient-accumulation steps. The training
    loop builds one per (example, part) and the decomposition (:mod:`lldyn.decompose.llm`) attributes the
    step's effect on every probe to them.
    """

    example_id: str
    part: str  # "chosen", "rejected" or "response"
    prompt: Any  # str or chat messages (lldyn.data.Prompt)
    response: str
    weight: float


PreferenceLossType = Literal["dpo", "ipo", "slic", "simpo"]
PREFERENCE_LOSSES: tuple[str, ...] = ("dpo", "ipo", "slic", "simpo")


@dataclass(frozen=True)
class SFTLoss:
    """Result of :func:`sft_loss`.

    loss: () mean over the batch of the per-example loss.
    losses: (B,) per-example loss.
    coef: (B,) residual coefficient c = ∂L_i/∂ log π(y|x).
    """

    loss: torch.Tensor
    losses: torch.Tensor
    coef: torch.Tensor


@dataclass(frozen=True)
class PreferenceLoss:
    """Result of a pairwise preference loss.

    loss: () mean over the batch.
    losses: (B,) per-example loss.
    chosen_rewards, rejected_rewards: (B,) implicit rewards (detached), β·log-ratio for DPO-like
        losses, β·mean log π for SimPO.
    margin: (B,) the quantity the loss pushes up (detached).
    chosen_coef, rejected_coef: (B,) residual coefficients c± = ∂L_i/∂ log π(y±|x) (detached).
    """

    loss: torch.Tensor
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    margin: torch.Tensor
    chosen_coef: torch.Tensor
    rejected_coef: torch.Tensor

    @property
    def reward_accuracy(self) -> torch.Tensor:
        """() fraction of pairs whose chosen reward beats the rejected one."""
        return (self.chosen_rewards > self.rejected_rewards).float().mean()


def sft_loss(policy_logps: torch.Tensor, n_tokens: torch.Tensor | None = None,
             per_token: bool = False) -> SFTLoss:
    """Negative log-likelihood of the response.

    Args:
        policy_logps: (B,) summed log π(y|x) over response tokens.
        n_tokens: (B,) response lengths; needed when ``per_token`` is True.
        per_token: average the NLL over tokens (L_i = −log π / |y|) instead of summing.

    With the summed form (default, the paper's), L_i = −log π(y_i|x_i) and c = −1.
    """
    if per_token:
        if n_tokens is None:
            raise ValueError("per_token SFT loss needs n_tokens")
        scale = 1.0 / n_tokens.to(policy_logps.dtype)
    else:
        scale = torch.ones_like(policy_logps)
    losses = -policy_logps * scale
    return SFTLoss(loss=losses.mean(), losses=losses, coef=(-scale).detach())


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float) -> PreferenceLoss:
    """DPO (Rafailov et al. 2023): L = −log σ(β·[(log π(y+) − log π_ref(y+)) − (log π(y−) − log π_ref(y−))]).

    All inputs (B,). Residual: c+ = −β(1−σ(β m)), c− = +β(1−σ(β m)) with m the log-ratio margin.
    """
    chosen_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_ratio = policy_rejected_logps - ref_rejected_logps
    margin = chosen_ratio - rejected_ratio
    losses = -F.logsigmoid(beta * margin)
    weight = beta * torch.sigmoid(-beta * margin)  # β(1 − σ(β m))
    return PreferenceLoss(
        loss=losses.mean(), losses=losses,
        chosen_rewards=(beta * chosen_ratio).detach(), rejected_rewards=(beta * rejected_ratio).detach(),
        margin=margin.detach(), chosen_coef=(-weight).detach(), rejected_coef=weight.detach(),
    )


def ipo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float) -> PreferenceLoss:
    """IPO (Azar et al. 2023): L = (m − 1/(2β))² with m the log-ratio margin. All inputs (B,).

    Residual: c+ = 2(m − 1/(2β)), c− = −c+.
    """
    chosen_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_ratio = policy_rejected_logps - ref_rejected_logps
    margin = chosen_ratio - rejected_ratio
    gap = margin - 1.0 / (2.0 * beta)
    losses = gap**2
    return PreferenceLoss(
        loss=losses.mean(), losses=losses,
        chosen_rewards=(beta * chosen_ratio).detach(), rejected_rewards=(beta * rejected_ratio).detach(),
        margin=margin.detach(), chosen_coef=(2 * gap).detach(), rejected_coef=(-2 * gap).detach(),
    )


def slic_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
              ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
              beta: float) -> PreferenceLoss:
    """SLiC hinge (Zhao et al. 2023, as in TRL's ``hinge``): L = max(0, 1 − β·m). All inputs (B,).

    Residual: c+ = −β·[1 − β m > 0], c− = +β·[1 − β m > 0].
    """
    chosen_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_ratio = policy_rejected_logps - ref_rejected_logps
    margin = chosen_ratio - rejected_ratio
    losses = torch.relu(1.0 - beta * margin)
    active = (1.0 - beta * margin > 0).to(margin.dtype)
    return PreferenceLoss(
        loss=losses.mean(), losses=losses,
        chosen_rewards=(beta * chosen_ratio).detach(), rejected_rewards=(beta * rejected_ratio).detach(),
        margin=margin.detach(), chosen_coef=(-beta * active).detach(), rejected_coef=(beta * active).detach(),
    )


def simpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
               chosen_n_tokens: torch.Tensor, rejected_n_tokens: torch.Tensor,
               beta: float, gamma: float = 0.5) -> PreferenceLoss:
    """SimPO (Meng et al. 2024), reference-free: L = −log σ(β·logπ(y+)/|y+| − β·logπ(y−)/|y−| − γ).

    All inputs (B,). Residual: c+ = −β(1−σ(h))/|y+|, c− = +β(1−σ(h))/|y−|.
    """
    chosen_avg = policy_chosen_logps / chosen_n_tokens.to(policy_chosen_logps.dtype)
    rejected_avg = policy_rejected_logps / rejected_n_tokens.to(policy_rejected_logps.dtype)
    margin = chosen_avg - rejected_avg
    h = beta * margin - gamma
    losses = -F.logsigmoid(h)
    weight = beta * torch.sigmoid(-h)
    return PreferenceLoss(
        loss=losses.mean(), losses=losses,
        chosen_rewards=(beta * chosen_avg).detach(), rejected_rewards=(beta * rejected_avg).detach(),
        margin=margin.detach(),
        chosen_coef=(-weight / chosen_n_tokens).detach(), rejected_coef=(weight / rejected_n_tokens).detach(),
    )


def preference_loss(kind: str, policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                    ref_chosen_logps: torch.Tensor | None, ref_rejected_logps: torch.Tensor | None,
                    chosen_n_tokens: torch.Tensor, rejected_n_tokens: torch.Tensor,
                    beta: float, simpo_gamma: float = 0.5) -> PreferenceLoss:
    """Dispatch on ``kind`` (``dpo``/``ipo``/``slic``/``simpo``); all tensors (B,)."""
    if kind == "simpo":
        return simpo_loss(policy_chosen_logps, policy_rejected_logps, chosen_n_tokens, rejected_n_tokens,
                          beta, simpo_gamma)
    fns = {"dpo": dpo_loss, "ipo": ipo_loss, "slic": slic_loss}
    if kind not in fns:
        raise LldynError(f"unknown preference loss {kind!r}", field="method", expected="dpo, ipo, slic or simpo")
    if ref_chosen_logps is None or ref_rejected_logps is None:
        raise LldynError(f"{kind} needs the reference model's log-probs", field="ref",
                         expected="ref_chosen_logps and ref_rejected_logps")
    return fns[kind](policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)


def token_residual(logits: torch.Tensor, targets: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """The residual G on logits at each position: G = ∂L/∂z = c·(e_y − softmax(z)).

    Args:
        logits: (N, V) logits z at N positions (response tokens, or classifier outputs).
        targets: (N,) target token ids y.
        coef: (N,) residual coefficient c of each position (c = −1 for cross-entropy / SFT).
    Returns:
        (N, V) G = ∂L/∂z; for cross-entropy (c = −1) this is π − e_y.
    """
    return residual_from_probs(torch.softmax(logits, dim=-1), targets, coef)


def residual_from_probs(probs: torch.Tensor, targets: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """:func:`token_residual` given π instead of z: G = c·(e_y − π). probs (N, V), targets (N,), coef (N,) → (N, V).

    c = −1 is a positive gradient on y (SFT: G = π − e_y); c = +1 a negative one (DPO's y−: G = e_y − π).
    """
    onehot = F.one_hot(targets, probs.shape[-1]).to(probs.dtype)
    return coef.to(probs.dtype)[:, None] * (onehot - probs)
