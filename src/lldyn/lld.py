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

from dataclasses import dataclass
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
