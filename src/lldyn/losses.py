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

    A loss with per-token coefficients (GRPO's ``token_coef``) gives ``token_weights`` w_t, one per response
    token: the term is then Σ_t w_t ∇θ log π(y_t | x, y_<t), and ``weight`` = Σ_t w_t is only its summary.
    ``prompt_ids``/``response_ids``, when given, are the exact tokens trained on (a sampled completion, whose
    text need not tokenise back to the same tokens, and which has no EOS when it was cut); the decomposition
    then uses them instead of encoding ``prompt`` and ``response``.

    part: ``chosen``/``rejected`` (pairwise), ``response`` (SFT), ``positive``/``negative``/``zero_advantage``
    (GRPO, by the sign of the completion's advantage: its group pushes it up, down, or — with β > 0 — only
    the KL term moves it).
    """

    example_id: str
    part: str
    prompt: Any  # str or chat messages (lldyn.data.Prompt)
    response: str
    weight: float
    token_weights: tuple[float, ...] | None = None
    prompt_ids: tuple[int, ...] | None = None
    response_ids: tuple[int, ...] | None = None


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


# ---------------------------------------------------------------------------------------------------------------------
# GRPO (on-policy RL): group-relative advantages and the clipped surrogate, as TRL 1.16's GRPOTrainer computes them.
# ---------------------------------------------------------------------------------------------------------------------

GRPOLossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
GRPO_LOSSES: tuple[str, ...] = ("grpo", "bnpo", "dr_grpo", "dapo")
ScaleRewards = Literal["group", "batch", "none"]
SCALE_REWARDS: tuple[str, ...] = ("group", "batch", "none")
IMPORTANCE_SAMPLING_LEVELS: tuple[str, ...] = ("token", "sequence")
REWARD_STD_EPS = 1e-4  # TRL adds this to the std before dividing (hard-coded in GRPOTrainer)


@dataclass(frozen=True)
class GroupAdvantages:
    """Result of :func:`group_advantages`. N = B / num_generations groups.

    advantages: (B,) A_i = (r_i − mean of i's group) / (std + 1e-4), or unscaled for ``scale_rewards="none"``;
        0 for an unscorable completion (NaN reward).
    group_mean: (N,) mean reward of each group (NaN rewards left out).
    group_std: (N,) Bessel-corrected (n − 1) std of each group's rewards, NaN rewards left out.
    batch_std: () Bessel-corrected std of all rewards of the batch (the divisor under ``"batch"``).
    scale_rewards: the resolved mode, ``"group"``, ``"batch"`` or ``"none"``.
    """

    advantages: torch.Tensor
    group_mean: torch.Tensor
    group_std: torch.Tensor
    batch_std: torch.Tensor
    scale_rewards: str

    @property
    def frac_reward_zero_std(self) -> torch.Tensor:
        """() TRL's ``frac_reward_zero_std``: fraction of completions whose std (group's, or the batch's) is 0.

        A group whose rewards are all equal has zero advantage everywhere: it contributes no policy gradient.
        """
        if self.scale_rewards == "batch":
            return torch.isclose(self.batch_std, torch.zeros_like(self.batch_std)).float()
        return torch.isclose(self.group_std, torch.zeros_like(self.group_std)).float().mean()


def _nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Std ignoring NaNs, with Bessel's correction; NaN where fewer than 2 values (as ``trl.trainer.utils.nanstd``)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    variance = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(x), dim=dim, keepdim=True)
    correction = torch.where(count > 1, count / (count - 1), torch.full_like(variance, float("nan")))
    std = torch.sqrt(variance * correction)
    return std.squeeze(dim) if dim is not None else std.reshape(())


def _resolve_scale_rewards(scale_rewards: str | bool) -> str:
    # GRPOConfig.__post_init__ maps the booleans: True → "group", False → "none".
    if isinstance(scale_rewards, bool):
        return "group" if scale_rewards else "none"
    if scale_rewards not in SCALE_REWARDS:
        raise LldynError(f"unknown scale_rewards {scale_rewards!r}", field="scale_rewards",
                         expected="'group', 'batch', 'none', True (= 'group') or False (= 'none')")
    return scale_rewards


def group_advantages(rewards: torch.Tensor, num_generations: int,
                     scale_rewards: ScaleRewards | bool = "group") -> GroupAdvantages:
    """Group-relative advantages of GRPO (Shao et al. 2024, arXiv 2402.03300), as TRL 1.16 computes them.

    Args:
        rewards: (B,) total reward of each completion (already weighted and summed over reward functions);
            completions of one prompt are consecutive: group g is ``rewards[g*G:(g+1)*G]``. NaN marks an
            unscorable completion (every reward function returned None).
        num_generations: G ≥ 2, completions per prompt; B must be a multiple of G.
        scale_rewards: ``"group"`` (TRL's default, also ``True``): divide by the group's std + 1e-4;
            ``"batch"``: divide by the std of the whole batch + 1e-4 (the mean is still the group's);
            ``"none"`` (also ``False``): no division (Dr. GRPO, arXiv 2503.20783).

    A_i = (r_i − mean_g(r)) / (std + 1e-4), where std is Bessel-corrected (divides by n − 1, not n) and NaN
    rewards are left out of the group mean and std; their advantage is 0.

    Matches ``GRPOTrainer._generate_and_score_completions`` of TRL 1.16 for
    ``multi_objective_aggregation="sum_then_normalize"`` (the default). TRL computes this over the rewards
    gathered from *all* processes before slicing each process's share; call it on the whole generation batch.
    """
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 1:
        raise LldynError(f"rewards must be a 1-D tensor, got shape {tuple(getattr(rewards, 'shape', ()))}",
                         field="rewards", expected="shape (B,)")
    if isinstance(num_generations, bool) or not isinstance(num_generations, int) or num_generations < 2:
        raise LldynError(f"num_generations must be an integer ≥ 2 (got {num_generations!r}); one completion per "
                         "prompt has no group to compare against", field="num_generations", expected="an integer ≥ 2")
    if rewards.numel() == 0 or rewards.numel() % num_generations != 0:
        raise LldynError(f"{rewards.numel()} rewards do not split into groups of {num_generations}",
                         field="rewards", expected=f"a positive multiple of num_generations={num_generations} values")
    mode = _resolve_scale_rewards(scale_rewards)
    if not rewards.is_floating_point():
        rewards = rewards.float()
    grouped = rewards.view(-1, num_generations)
    group_mean = torch.nanmean(grouped, dim=1)
    group_std = _nanstd(grouped, dim=1)
    batch_std = _nanstd(rewards)
    centred = rewards - group_mean.repeat_interleave(num_generations)
    if mode == "group":
        advantages = centred / (group_std.repeat_interleave(num_generations) + REWARD_STD_EPS)
    elif mode == "batch":
        advantages = centred / (batch_std + REWARD_STD_EPS)
    else:
        advantages = centred
    advantages = torch.nan_to_num(advantages, nan=0.0)
    return GroupAdvantages(advantages=advantages, group_mean=group_mean, group_std=group_std,
                           batch_std=batch_std, scale_rewards=mode)


@dataclass(frozen=True)
class ClipStats:
    """The clipping statistics TRL 1.16 logs (``clip_ratio/*``), each () and detached.

    A token is *low-clipped* when ratio < 1 − ε_low and A < 0, *high-clipped* when ratio > 1 + ε_high and A > 0:
    exactly the tokens where the clipped branch of the min is the smaller one, so the surrogate gives them no
    gradient (the KL term still does). Under ``delta`` the ratio tested is min(ρ, δ), as TRL's.

    low_mean, high_mean, region_mean: fraction of active tokens (of sequences, for sequence-level importance
        sampling) that are low-, high- or either-clipped.
    low_min: smallest per-sequence fraction of low-clipped tokens; high_max: largest per-sequence fraction of
        high-clipped tokens (sequences with no active token are left out; NaN if there is none).
    """

    low_mean: torch.Tensor
    high_mean: torch.Tensor
    region_mean: torch.Tensor
    low_min: torch.Tensor
    high_max: torch.Tensor


@dataclass(frozen=True)
class GRPOLoss:
    """Result of :func:`grpo_loss`.

    loss: () the scalar TRL's ``_compute_loss`` returns (one process, gradient accumulation 1).
    per_token_loss: (B, T) −min(ρ·A, clip(ρ)·A) + β·KL_t before masking and normalisation (padding included).
    kl: (B, T) per-token KL estimate as it enters the loss (k3, times ρ under ``kl_importance_correction``),
        detached; None when β = 0.
    ratio: (B, T) importance ratio ρ = π/π_old per token (the sequence ratio broadcast for ``"sequence"``), before
        the δ cap, detached.
    clipped: (B, T) bool, active tokens where the clipped branch is taken (low- or high-clipped).
    clip: :class:`ClipStats`, as TRL logs them.
    token_coef: (B, T) residual coefficient c_it = ∂loss/∂ log π(y_it | x_i, y_i,<t), detached; 0 on padding.
    sequence_coef: (B,) Σ_t c_it.
    mask: (B, T) the mask as floats (what "active token" means above).
    """

    loss: torch.Tensor
    per_token_loss: torch.Tensor
    kl: torch.Tensor | None
    ratio: torch.Tensor
    clipped: torch.Tensor
    clip: ClipStats
    token_coef: torch.Tensor
    sequence_coef: torch.Tensor
    mask: torch.Tensor

    @property
    def mean_kl(self) -> torch.Tensor | None:
        """() TRL's logged ``kl``: the mean of :attr:`kl` over active tokens (None when β = 0)."""
        if self.kl is None:
            return None
        return (self.kl * self.mask).sum() / self.mask.sum().clamp(min=1.0)


def _check_grpo_inputs(policy_token_logps, advantages, mask, old_token_logps, ref_token_logps, beta, loss_type,
                       max_completion_length, importance_sampling_level, num_items_in_batch) -> None:
    if loss_type not in GRPO_LOSSES:
        raise LldynError(f"unknown GRPO loss type {loss_type!r}", field="loss_type",
                         expected="grpo, bnpo, dr_grpo or dapo")
    if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
        raise LldynError(f"unknown importance sampling level {importance_sampling_level!r}",
                         field="importance_sampling_level", expected="'token' or 'sequence'")
    if not isinstance(policy_token_logps, torch.Tensor) or policy_token_logps.dim() != 2:
        got = tuple(getattr(policy_token_logps, "shape", ()))
        raise LldynError(f"policy_token_logps must be 2-D, got shape {got}", field="policy_token_logps",
                         expected="shape (B, T)")
    shape = tuple(policy_token_logps.shape)
    for name, value in (("mask", mask), ("old_token_logps", old_token_logps), ("ref_token_logps", ref_token_logps)):
        if value is not None and tuple(value.shape) != shape:
            raise LldynError(f"{name} has shape {tuple(value.shape)}, policy_token_logps has {shape}",
                             field=name, expected=f"shape {shape} (B, T), like policy_token_logps")
    if tuple(getattr(advantages, "shape", ())) != shape[:1]:
        raise LldynError(f"advantages has shape {tuple(getattr(advantages, 'shape', ()))} for {shape[0]} completions",
                         field="advantages", expected=f"shape ({shape[0]},) (B,), one advantage per completion")
    if beta != 0.0 and ref_token_logps is None:
        raise LldynError(f"beta={beta} needs the reference model's per-token log-probs", field="ref_token_logps",
                         expected="a (B, T) tensor, or beta=0")
    if loss_type == "dr_grpo" and (max_completion_length is None or max_completion_length <= 0):
        raise LldynError("dr_grpo normalises by B · max_completion_length", field="max_completion_length",
                         expected="a positive integer (TRL's default is 512)")
    if num_items_in_batch is not None and loss_type != "dapo":
        raise LldynError(f"num_items_in_batch only applies to dapo, not {loss_type}", field="num_items_in_batch",
                         expected="None")


def _check_token_weights(token_weights: Any, shape: tuple[int, ...], level: str) -> None:
    if not isinstance(token_weights, torch.Tensor) or tuple(token_weights.shape) != shape:
        got = tuple(getattr(token_weights, "shape", ()))
        raise LldynError(f"token_weights has shape {got}, policy_token_logps has {shape}", field="token_weights",
                         expected=f"shape {shape} (B, T), one weight per completion token")
    if level != "token":
        raise LldynError("per-token advantage weights need token-level importance sampling",
                         field="token_weights", expected="importance_sampling_level='token', or no token_weights")
    if not bool(torch.isfinite(token_weights).all()) or bool((token_weights < 0).any()):
        raise LldynError("token_weights must be finite and ≥ 0", field="token_weights",
                         expected="weights in [0, ∞), e.g. NTHR's scale in [0, 1]")


def grpo_loss(policy_token_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              old_token_logps: torch.Tensor | None = None, ref_token_logps: torch.Tensor | None = None,
              beta: float = 0.0, epsilon: float = 0.2, epsilon_high: float | None = None,
              loss_type: GRPOLossType = "dapo", max_completion_length: int | None = None,
              importance_sampling_level: Literal["token", "sequence"] = "token", delta: float | None = None,
              kl_importance_correction: bool = True,
              num_items_in_batch: int | float | torch.Tensor | None = None,
              token_weights: torch.Tensor | None = None) -> GRPOLoss:
    """GRPO's clipped surrogate with optional k3 KL, as ``GRPOTrainer._compute_loss`` of TRL 1.16 computes it.

    Args:
        policy_token_logps: (B, T) log π_θ(y_it | x_i, y_i,<t) of each completion token (differentiable).
        advantages: (B,) A_i, e.g. :func:`group_advantages`.
        mask: (B, T) 1 on completion tokens that enter the loss, 0 on padding (TRL's ``completion_mask``,
            times ``tool_mask`` when there is one). Padded positions must hold finite log-probs.
        old_token_logps: (B, T) log π_old of the sampling policy; None = on-policy (TRL's ``num_iterations=1``
            case): π_old is the current policy detached, so ρ = 1 in value but ∂ρ/∂log π = 1.
        ref_token_logps: (B, T) log π_ref, needed when ``beta != 0``.
        beta: KL coefficient β (TRL's default 0.0).
        epsilon, epsilon_high: clip range [1 − ε, 1 + ε_high]; ``epsilon_high`` defaults to ``epsilon``
            (DAPO's clip-higher uses 0.28).
        loss_type: ``"dapo"`` (TRL's default), ``"grpo"``, ``"dr_grpo"`` or ``"bnpo"``: how the per-token
            losses are normalised (below).
        max_completion_length: L_max, the constant of ``dr_grpo`` (TRL's default 512); required for it.
        importance_sampling_level: ``"token"`` (default): ρ_it = π/π_old per token; ``"sequence"`` (GSPO,
            arXiv 2507.18071): ρ_i = exp(mean_t log π/π_old), one ratio per completion.
        delta: optional upper cap of the unclipped ratio (two-sided clipping, INTELLECT-2); None as TRL.
        kl_importance_correction: TRL's ``use_bias_correction_kl`` (default True): the KL term is multiplied by
            the (differentiable) ratio ρ, which changes its gradient even on-policy.
        num_items_in_batch: ``dapo`` only: the number of active tokens of the whole generation batch when this
            call sees a part of it; default ``mask.sum()``.

    With ρ the ratio, L_it = −min(ρ·A_i, clip(ρ, 1 − ε, 1 + ε_high)·A_i) + β·KL_it, where KL_it is the k3
    estimator e^{r−l} − (r − l) − 1 (r = log π_ref, l = log π_θ), times ρ under ``kl_importance_correction``.
    The loss is Σ_it w_it m_it L_it:

    ================  =====================================  ==========================================
    loss_type          w_it                                   reference
    ================  =====================================  ==========================================
    ``grpo``           1 / (B · |y_i|)  (sequence mean,       GRPO (DeepSeekMath), arXiv 2402.03300
                       then batch mean)
    ``bnpo``           1 / Σ_it m_it (tokens of this call)    TRL
    ``dr_grpo``        1 / (B · L_max)                        Dr. GRPO, arXiv 2503.20783
    ``dapo``           1 / num_items_in_batch (all active     DAPO (token-level loss), arXiv 2503.14476
                       tokens of the generation batch)
    ================  =====================================  ==========================================

    Residual coefficients (token-level ratios), c_it = ∂loss/∂ log π(y_it):

        c_it = w_it m_it · [ −A_i ρ_it · 1{unclipped branch}_it + β·(ρ_it(1 − e^{r−l}) + ρ_it·k3_it) ]

    with 1{unclipped branch} = 0 on clipped tokens (A_i > 0 and ρ > 1 + ε_high, or A_i < 0 and ρ < 1 − ε; also
    A_i < 0 and ρ > δ under ``delta``), 1 elsewhere; without ``kl_importance_correction`` the β part is
    β(1 − e^{r−l}). On-policy, β = 0: c_it = −w_it m_it A_i — the same push for every token of a completion, down
    for every token of a below-average one: the mechanism behind Lazy Likelihood Displacement (Deng et al.,
    arXiv 2505.18830). The paper's G on the logits at position t is then c_it·(e_{y_it} − π_t) (see
    :func:`token_residual`). For ``"sequence"`` the ratio's part is shared by the completion's tokens:

        c_iu = w_iu m_iu β ρ_i (1 − e^{r_iu − l_iu})
               + (m_iu / |y_i|) · Σ_t w_it m_it [−A_i ρ_i 1{unclipped}_i + β ρ_i k3_it]

    Matches ``_compute_loss`` of TRL 1.16 with one process and one micro-batch holding the whole generation
    batch (``gradient_accumulation_steps = steps_per_generation = 1``), ``top_entropy_quantile=1``,
    ``off_policy_mask_threshold=None``, no vLLM importance-sampling correction, no entropy bonus, no MoE aux
    loss.
    Under more processes or accumulation steps with TRL's default ``steps_per_generation =
    gradient_accumulation_steps``, the summed (DDP-averaged) gradient of TRL's micro-batches equals this
    function's gradient on the whole generation batch for ``grpo``, ``dr_grpo`` and ``dapo`` (equal micro-batch
    sizes; for ``dapo`` TRL divides every micro-batch by the generation batch's token count, ``num_items_in_batch``),
    but not for ``bnpo``, whose token count is each micro-batch's own.
    """
    _check_grpo_inputs(policy_token_logps, advantages, mask, old_token_logps, ref_token_logps, beta, loss_type,
                       max_completion_length, importance_sampling_level, num_items_in_batch)
    logp = policy_token_logps
    m = mask.to(logp.dtype)
    eps_low = epsilon
    eps_high = epsilon if epsilon_high is None else epsilon_high
    old = logp.detach() if old_token_logps is None else old_token_logps.to(logp.dtype)
    adv = advantages.to(logp.dtype).unsqueeze(1)  # (B, 1)
    if token_weights is not None:
        _check_token_weights(token_weights, tuple(logp.shape), importance_sampling_level)
        adv = adv * token_weights.to(device=logp.device, dtype=logp.dtype)  # (B, T): A_it = w_it·A_i
    batch = logp.shape[0]
    n_seq = m.sum(-1).clamp(min=1.0)  # (B,) |y_i|

    log_ratio = logp - old
    if importance_sampling_level == "token":
        log_iw = log_ratio  # (B, T)
    else:
        log_iw = ((log_ratio * m).sum(-1) / n_seq).unsqueeze(-1)  # (B, 1)
    ratio = torch.exp(log_iw)
    clipped_ratio = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    capped_ratio = ratio if delta is None else torch.clamp(ratio, max=delta)
    per_token_loss = -torch.min(capped_ratio * adv, clipped_ratio * adv)
    kl = None
    if beta != 0.0:
        ref = ref_token_logps.to(logp.dtype)
        k3 = torch.exp(ref - logp) - (ref - logp) - 1
        kl = k3 * ratio if kl_importance_correction else k3
        per_token_loss = per_token_loss + beta * kl

    if loss_type == "grpo":
        loss = ((per_token_loss * m).sum(-1) / n_seq).mean()
        weight = (1.0 / (batch * n_seq)).unsqueeze(1).expand_as(m)
    elif loss_type == "bnpo":
        total = m.sum().clamp(min=1.0)
        loss = (per_token_loss * m).sum() / total
        weight = (1.0 / total).expand_as(m)
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * m).sum() / (per_token_loss.size(0) * max_completion_length)
        weight = torch.full_like(m, 1.0 / (batch * max_completion_length))
    else:  # dapo
        items = m.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch, dtype=logp.dtype)
        total = items.to(logp.dtype).clamp(min=1.0)
        loss = (per_token_loss * m).sum() / total
        weight = (1.0 / total).expand_as(m)

    with torch.no_grad():
        token_coef, clipped, clip = _grpo_coefficients(
            logp.detach(), ratio.detach(), capped_ratio.detach(), clipped_ratio.detach(), adv.detach(), m,
            weight.detach(), n_seq, None if ref_token_logps is None else ref_token_logps.to(logp.dtype).detach(),
            beta, eps_low, eps_high, delta, kl_importance_correction, importance_sampling_level)
    return GRPOLoss(
        loss=loss, per_token_loss=per_token_loss.expand_as(m), kl=None if kl is None else kl.detach(),
        ratio=ratio.detach().expand_as(m), clipped=clipped, clip=clip, token_coef=token_coef,
        sequence_coef=token_coef.sum(-1), mask=m,
    )


def _grpo_coefficients(logp, ratio, capped_ratio, clipped_ratio, adv, m, weight, n_seq, ref, beta, eps_low,
                       eps_high, delta, kl_importance_correction, level):
    """Closed-form ∂loss/∂ log π per token (see :func:`grpo_loss`) and TRL's clip statistics; all detached.

    ratio, capped_ratio, clipped_ratio: (B, T), or (B, 1) for sequence-level ratios; adv: (B, 1); the rest (B, T).
    """
    # ∂/∂ log ρ of −min(a, b), a = capped·A, b = clipped·A: the derivative of the branch the min takes, as
    # autograd does it (torch.min splits a tie evenly; clamp passes the gradient on its closed interval).
    d_capped = ratio if delta is None else ratio * (ratio <= delta)
    d_clipped = ratio * ((ratio >= 1 - eps_low) & (ratio <= 1 + eps_high))
    a, b = capped_ratio * adv, clipped_ratio * adv
    d_min = torch.where(a < b, adv * d_capped, torch.where(a > b, adv * d_clipped, adv * (d_capped + d_clipped) / 2))
    d_log_iw = -d_min  # (B, T) or (B, 1)
    direct = torch.zeros_like(logp)  # ∂L_it/∂ l_it other than through ρ
    if beta != 0.0:
        k3 = torch.exp(ref - logp) - (ref - logp) - 1
        dk3 = 1 - torch.exp(ref - logp)
        if kl_importance_correction:
            direct = beta * dk3 * ratio
            d_log_iw = d_log_iw + beta * k3 * ratio
        else:
            direct = beta * dk3
    w = weight * m
    if level == "token":
        token_coef = w * (direct + d_log_iw)
    else:  # log ρ_i = Σ_t m_it (l_it − old_it) / |y_i|
        through_ratio = (w * d_log_iw.expand_as(w)).sum(-1, keepdim=True)  # (B, 1)
        token_coef = w * direct + through_ratio * m / n_seq.unsqueeze(1)

    # TRL tests the ratio after the δ cap (it reassigns coef_1), so do we
    is_low = (capped_ratio < 1 - eps_low) & (adv < 0)
    is_high = (capped_ratio > 1 + eps_high) & (adv > 0)
    is_region = is_low | is_high
    if ratio.shape[1] == 1:  # one ratio per sequence (TRL tells the levels apart by this shape, so T = 1 counts too)
        def global_mean(x):
            return x.float().mean()

        def seq_mean(x):
            return x.float().squeeze(1)
    else:
        def global_mean(x):
            return (x * m).sum() / m.sum().clamp(min=1.0)

        def seq_mean(x):
            return (x * m).sum(-1) / m.sum(-1)  # NaN for a sequence without active tokens, as TRL

    low_seq, high_seq = seq_mean(is_low), seq_mean(is_high)
    nan = torch.tensor(float("nan"), dtype=low_seq.dtype)
    clip = ClipStats(
        low_mean=global_mean(is_low), high_mean=global_mean(is_high), region_mean=global_mean(is_region),
        low_min=nan if torch.isnan(low_seq).all() else low_seq[~torch.isnan(low_seq)].min(),
        high_max=nan if torch.isnan(high_seq).all() else high_seq[~torch.isnan(high_seq)].max(),
    )
    clipped = is_region.expand_as(m) & (m > 0)
    return token_coef, clipped, clip
