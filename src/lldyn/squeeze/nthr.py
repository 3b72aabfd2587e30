"""Lazy Likelihood Displacement (LLD) in GRPO: the NTHR fix and the per-prompt LLD risk before training.

Deng, Ren, Li, Sutherland, Li, Thrampoulidis, "On the Effect of Negative Gradient in Group Relative Deep
Reinforcement Optimization" (NeurIPS 2025, arXiv 2505.18830). GRPO pushes every token of a below-average
completion down with the same strength; where an incorrect completion's token looks, to the model, like the
tokens of the group's correct completions, that push drags the correct completions down too (LLD: their
likelihood barely rises or falls).

**Token influence** (this module's reading of the paper's Sec. 4-5; see docs/grpo-nthr.md). Take the output
layer W alone (the unconstrained-feature view the paper's analysis uses): ∇_W log π(y_t | ·) = (e_{y_t} − π_t) h_tᵀ,
with h_t the output layer's input at the position that predicts y_t (the engine's
:func:`lldyn.scoring.response_hidden_states`) and π_t the model's next-token distribution there. A gradient step
on token u then changes log π of token t by η times

    κ(t, u) = α(t, u) · ⟨h_t, h_u⟩,    α(t, u) = ⟨e_{y_t} − π_t, e_{y_u} − π_u⟩,

the last-layer eNTK contracted with both tokens' residuals (:func:`token_kernel`). Pushing token k of an
incorrect completion y_j down moves the group's correct completions by −η|A_j|·s_j(k), with

    s_j(k) = Σ_{i correct} Σ_{k'} κ((j, k), (i, k'))          (the token's "negative token hidden reward")

**NTHR** (:func:`nthr_weights`): a token of an incorrect completion with s_j(k) > τ keeps only ``scale`` of its
penalty (its advantage times ``scale``); τ = ``threshold`` × the mean of the same score over the correct
completions' own tokens, s_i(k') = Σ_{i' correct} Σ_u κ((i, k'), (i', u)) less the token's pull on itself κ((i, k'),
(i, k')) — how strongly a correct token is tied to the other correct tokens, so a flagged incorrect token is one
tied to them at least as strongly as they are to each other. The weights
enter :func:`lldyn.losses.grpo_loss` as ``token_weights`` (they multiply the residual G of those tokens).
Correct = positive advantage, incorrect = negative advantage (for a 0/1 reward: reward 1 and reward 0 in a
mixed group); a group without both gets weights 1.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Sequence

import torch

from lldyn.config import check
from lldyn.scoring import EncodedPair, output_head, response_hidden_states


@dataclass(frozen=True)
class NTHRConfig:
    """threshold: τ as a multiple of the correct tokens' mean influence on the correct completions (> 0);
    scale: the share of the penalty a flagged token keeps, in [0, 1] (1 = plain GRPO)."""

    threshold: float = 1.0
    scale: float = 0.5

    def __post_init__(self) -> None:
        check(self.threshold > 0, "nthr_threshold", f"must be > 0, got {self.threshold}",
              "a positive multiple of the correct tokens' mean influence (default 1.0)")
        check(0.0 <= self.scale <= 1.0, "nthr_scale", f"must be in [0, 1], got {self.scale}",
              "the share of the penalty a flagged token keeps (default 0.5)")


class TokenFeatures(NamedTuple):
    """What the last-layer gradient of each response token is made of.

    hidden: (T, H) the output layer's input predicting each token; residual: (T, V) e_{y_t} − π_t (float64).
    """

    hidden: torch.Tensor
    residual: torch.Tensor


def token_features(model: Any, encoded: Sequence[EncodedPair], pad_id: int, batch_size: int = 8
                   ) -> list[TokenFeatures]:
    """:class:`TokenFeatures` of each encoded response (no grad, eval mode; float64 on the CPU), from the engine's
    response hidden states and the model's own output layer (soft-cap included)."""
    hidden = response_hidden_states(model, encoded, pad_id, batch_size=batch_size)
    head = output_head(model)
    weight = model.get_output_embeddings().weight
    out = []
    with torch.no_grad():
        for h, e in zip(hidden, encoded):
            probs = torch.softmax(head(h.to(device=weight.device, dtype=weight.dtype)).double(), dim=-1).cpu()
            targets = torch.tensor(e.response_ids[:h.shape[0]], dtype=torch.long)
            residual = -probs
            residual[torch.arange(len(targets)), targets] += 1.0
            out.append(TokenFeatures(h.double(), residual))
    return out


def token_kernel(a: TokenFeatures, b: TokenFeatures) -> torch.Tensor:
    """κ(t, u) = ⟨e_{y_t} − π_t, e_{y_u} − π_u⟩·⟨h_t, h_u⟩ (module docstring): (T_a, T_b). The inner product of the
    two tokens' log-prob gradients with respect to the output layer (no output bias)."""
    return (a.residual @ b.residual.T) * (a.hidden @ b.hidden.T)


def influence_on(features: TokenFeatures, anchors: Sequence[TokenFeatures]) -> torch.Tensor:
    """(T,) s(t) = Σ_anchors Σ_u κ(t, u): how much a step on each token moves the anchors' log-likelihood."""
    total = torch.zeros(features.hidden.shape[0], dtype=torch.float64)
    for anchor in anchors:
        total += token_kernel(features, anchor).sum(1)
    return total


def self_influence(features: TokenFeatures) -> torch.Tensor:
    """(T,) κ(t, t) = ‖e_{y_t} − π_t‖²·‖h_t‖²: the diagonal of :func:`token_kernel` (a token's pull on itself)."""
    return (features.residual * features.residual).sum(-1) * (features.hidden * features.hidden).sum(-1)


class GroupNTHR(NamedTuple):
    """NTHR of one group: weights (T_i,) per completion (1 except the flagged tokens of incorrect ones);
    scores (T_i,) s_j(k) of incorrect completions (empty elsewhere); tau: the threshold (NaN when the group has
    no correct or no incorrect completion)."""

    weights: list[torch.Tensor]
    scores: list[torch.Tensor]
    tau: float


def nthr_weights(features: Sequence[TokenFeatures], advantages: Sequence[float],
                 config: NTHRConfig = NTHRConfig()) -> GroupNTHR:
    """NTHR's per-token weights for one group of completions (module docstring).

    Args:
        features: per completion (T_i tokens) its :class:`TokenFeatures` at the weights it was sampled from.
        advantages: (G,) the completions' group advantages; > 0 correct (anchors), < 0 incorrect (reweighted).
    """
    ones = [torch.ones(f.hidden.shape[0], dtype=torch.float64) for f in features]
    empty = [torch.zeros(0, dtype=torch.float64) for _ in features]
    correct = [f for f, a in zip(features, advantages) if a > 0]
    if not correct or not any(a < 0 for a in advantages):
        return GroupNTHR(ones, empty, float("nan"))
    own = [influence_on(f, correct) - self_influence(f) for f in correct]  # a token's tie to the *other* tokens
    tau = config.threshold * float(torch.cat(own).mean())
    weights, scores = [], []
    for f, a, w in zip(features, advantages, ones):
        if a < 0:
            s = influence_on(f, correct)
            weights.append(torch.where(s > tau, torch.full_like(s, config.scale), w))
            scores.append(s)
        else:
            weights.append(w)
            scores.append(torch.zeros(0, dtype=torch.float64))
    return GroupNTHR(weights, scores, tau)


# --------------------------------------------------------------------------- LLD risk per prompt, before training
#
# For each prompt, ``num_generations`` completions sampled from the starting policy (seeded), scored by the GRPO
# reward and split by the sign of their group advantage, as GRPO's first step would see them. Every score is
# "higher = more exposed to LLD" (the correct completions' log π falls, or rises least, when GRPO trains on the
# prompt); with H_i = Σ_t h_it the summed hidden states of completion i, A its advantage, C / I the correct /
# incorrect completions:
#
#   gwhes       group-weighted hidden embedding score (this module's reading of the paper's GWHES; CHES of Razin
#               et al. 2024 extended to a group): (1/|C|) Σ_{i∈C} [Σ_{j∈I} |A_j|⟨H_i, H_j⟩ − Σ_{i'∈C} A_i'⟨H_i, H_i'⟩]
#               — the incorrect completions' pull on the correct ones minus the correct ones' own push;
#   gwhes_ln    the same with mean instead of summed hidden states (length-normalised, as CHES's ches_ln);
#   hidden_cos  squeeze-risk-style alternative: mean cosine of the mean hidden states of correct and incorrect;
#   entk_pull   the first-order drop of the correct completions' log π (per token) under the group's own GRPO
#               gradient (dapo, on-policy, β = 0) through the output layer: −(1/|C|) Σ_{i∈C} (1/|y_i|) Σ_j (A_j/N)
#               Σ_{t∈i, u∈j} κ(t, u), N the group's tokens;
#   nthr_flagged  the share of the incorrect completions' tokens NTHR (default settings) would scale down;
# and the trivial baselines init_logp (mean log π of the correct completions, the engine's), length (their mean
# number of tokens) and frac_correct. A prompt whose group is all correct or all incorrect gets no GRPO gradient
# at its first step: its scores are NaN and it is listed last.

RISK_SCORES = ("gwhes", "gwhes_ln", "hidden_cos", "entk_pull", "nthr_flagged")
RISK_BASELINES = ("init_logp", "length", "frac_correct")


@dataclass(frozen=True)
class LLDRiskConfig:
    """How the starting policy's completions are drawn (as ``lldyn train --method grpo`` would draw them)."""

    num_generations: int = 8
    max_completion_length: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    template: bool = True
    max_prompt_tokens: int | None = 256
    batch_size: int = 8
    scale_rewards: str = "group"

    def __post_init__(self) -> None:
        check(self.num_generations >= 2, "num_generations", f"must be >= 2, got {self.num_generations}",
              "at least 2 completions per prompt (a group)")
        check(self.max_completion_length > 0, "max_completion_length", f"must be > 0, got "
              f"{self.max_completion_length}", "a positive number of tokens")


@dataclass(frozen=True)
class PromptRisk:
    """One row of the risk table: the prompt, its group's split, every score, and the correct completions as
    sampled (``correct_ids``: their token ids, EOS included when generated; ``prompt_ids``: the prompt's tokens),
    so that their log π can be measured again after training."""

    id: str
    prompt: Any
    n_correct: int
    n_incorrect: int
    gwhes: float
    gwhes_ln: float
    hidden_cos: float
    entk_pull: float
    nthr_flagged: float
    init_logp: float
    length: float
    frac_correct: float
    prompt_ids: tuple[int, ...]
    correct_ids: tuple[tuple[int, ...], ...]
    correct_logps: tuple[float, ...]
    rank: int = 0

    @property
    def informative(self) -> bool:
        """Whether GRPO's first step has a gradient on this prompt (both correct and incorrect completions)."""
        return self.n_correct > 0 and self.n_incorrect > 0

    def to_json(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "informative": self.informative}


def group_risk(features: Sequence[TokenFeatures], advantages: Sequence[float]) -> dict[str, float]:
    """The scores of one group (the block comment above): ``features`` and ``advantages`` per completion."""
    nan = float("nan")
    C = [i for i, a in enumerate(advantages) if a > 0]
    I = [j for j, a in enumerate(advantages) if a < 0]  # noqa: E741
    if not C or not I:
        return dict.fromkeys(RISK_SCORES, nan)
    sums = torch.stack([f.hidden.sum(0) for f in features])
    means = torch.stack([f.hidden.mean(0) for f in features])
    A = torch.tensor(list(advantages), dtype=torch.float64)

    def weighted(H: torch.Tensor) -> float:
        pull = [sum(abs(A[j]) * H[i] @ H[j] for j in I) - sum(A[k] * H[i] @ H[k] for k in C) for i in C]
        return float(sum(pull) / len(C))

    unit = means / means.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    cos = float(torch.stack([unit[i] @ unit[j] for i in C for j in I]).mean())
    n_tokens = sum(f.hidden.shape[0] for f in features)
    pull = []
    for i in C:
        step = sum(float(A[j]) / n_tokens * float(token_kernel(features[i], features[j]).sum())
                   for j in range(len(features)) if A[j] != 0)
        pull.append(-step / features[i].hidden.shape[0])
    nthr = nthr_weights(features, advantages)
    flagged = sum(int((nthr.weights[j] != 1.0).sum()) for j in I) / sum(features[j].hidden.shape[0] for j in I)
    return {"gwhes": weighted(sums), "gwhes_ln": weighted(means), "hidden_cos": cos,
            "entk_pull": sum(pull) / len(pull), "nthr_flagged": flagged}


def rank_risks(risks: Sequence[PromptRisk]) -> list[PromptRisk]:
    """Riskiest first by GWHES (ties and the uninformative prompts, listed last, by id): ``rank`` 1, 2, …"""
    def key(r: PromptRisk):
        return (not r.informative, -r.gwhes if r.informative else 0.0, r.id)

    return [replace(r, rank=k + 1) for k, r in enumerate(sorted(risks, key=key))]


def lld_risk(model: Any, tokenizer: Any, prompts: Sequence[Any], reward: Any, config: LLDRiskConfig = LLDRiskConfig()
             ) -> list[PromptRisk]:
    """The LLD risk of every prompt at the model's current weights, ranked (:func:`rank_risks`).

    Args:
        prompts: :class:`lldyn.data.PromptExample` rows (with the fields ``reward`` needs, e.g. a gold answer).
        reward: a :class:`lldyn.rewards.RewardFunction`.
    The completions are the starting policy's samples of :func:`lldyn.policy_samples.draw_policy_samples` (one seed
    for the whole call, prompt order as given; an unscorable draw is left out), so the table is a function of
    (model, prompts, config). Correct / incorrect = the sign of the group advantage of the draws' rewards (for the
    0/1 builtin reward of a mixed group: the draws in ``sample_correct`` / ``sample_incorrect``).
    """
    from lldyn.losses import group_advantages
    from lldyn.policy_samples import PolicySampleConfig, draw_policy_samples
    from lldyn.scoring import score_encoded

    G = config.num_generations
    draws = draw_policy_samples(model, tokenizer, prompts, reward, PolicySampleConfig(
        n=G, max_new_tokens=config.max_completion_length, temperature=config.temperature, top_p=config.top_p,
        seed=config.seed, template=config.template, max_prompt_tokens=config.max_prompt_tokens,
        batch_size=config.batch_size))
    by_prompt: dict[str, list[Any]] = {}
    for d in draws:
        by_prompt.setdefault(d.prompt_id, []).append(d)
    pad_id = tokenizer.pad_token_id
    nan = float("nan")
    out = []
    for p in prompts:
        group = by_prompt.get(p.id, [])
        rewards = torch.tensor([d.reward for d in group], dtype=torch.float32)
        adv = (group_advantages(rewards, len(group), config.scale_rewards).advantages.tolist() if len(group) >= 2
               else [0.0] * len(group))
        encoded = [EncodedPair(tuple(d.prompt_ids), tuple(d.completion_ids)) for d in group]
        correct = [k for k, a in enumerate(adv) if a > 0]
        scores = (group_risk(token_features(model, encoded, pad_id), adv) if correct and len(correct) < len(adv)
                  else dict.fromkeys(RISK_SCORES, nan))
        logps = [r.logp for r in score_encoded(model, [encoded[k] for k in correct], pad_id)] if correct else []
        out.append(PromptRisk(
            id=p.id, prompt=p.prompt, n_correct=len(correct), n_incorrect=sum(a < 0 for a in adv), **scores,
            init_logp=sum(logps) / len(logps) if logps else nan,
            length=sum(len(encoded[k].response_ids) for k in correct) / len(correct) if correct else nan,
            frac_correct=len(correct) / G,
            prompt_ids=encoded[0].prompt_ids if encoded else (),
            correct_ids=tuple(encoded[k].response_ids for k in correct), correct_logps=tuple(logps)))
    return rank_risks(out)
