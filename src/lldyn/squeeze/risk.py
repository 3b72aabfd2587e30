"""Squeeze risk before training: which preference pairs will off-policy DPO squeeze?

At step 0 every pair is scored from quantities the squeezing theory names (Ren & Sutherland,
Sec. 3.3 and App. C; :mod:`lldyn.experiments.squeeze_toy` has the toy), all read from the one log-prob engine
(:func:`lldyn.scoring.score` with ``per_token=True``) along the rejected response y−, position by
position t = 1..T (EOS included):

* **how unlikely y− is**: s_t = −log π(y−_t | x, y−_<t) (the squeeze grows as π(y−) shrinks);
* **how peaked the model is**: p_t = max_v π(v | x, y−_<t) (the argmax takes the freed mass), and the
  entropy H_t (reported, not used in the score);
* **the size of the negative residual**: g_t = c− · ‖π_t − e_{y−_t}‖, with c− = ∂L/∂log π(y−) read
  from :func:`lldyn.losses.dpo_loss`; at step 0 with ref = policy the DPO margin is 0 and c− = β/2.
  ‖π − e_y‖ = sqrt(1 − 2π(y) + Σ_v π_v²) needs Σπ², which the engine does not return; lldyn uses the
  lower bound Σπ² ≥ max(p² + [y ≠ argmax]·π(y)², e^{−H}) (the second from Rényi-2 entropy ≤ Shannon
  entropy), capped by Σπ² ≤ p, so g_t is a slight underestimate (exact for a one-hot or uniform π).

The risk score is the mean over y−'s positions of their product,

    risk = (1/T) Σ_t g_t · p_t · s_t,

large only where all three conditions meet at the same position (a large negative residual on an
unlikely token of a peaked distribution). ``risk_sum`` = T · risk adds the length of y− (DPO's
summed log-prob pushes every token). The combination is a heuristic motivated by the toy's
first-order rule, not derived; ``docs/squeezing.md`` reports how well it ranks real pairs.

Baseline (Razin et al. 2024, "Unintentional Unalignment: Likelihood Displacement in DPO", and their
``ches/ches.py``): the CHES score

    CHES(x, y+, y−) = ⟨Σ_k h_{x,y+,<k}, Σ_k' h_{x,y−,<k'}⟩ − ‖Σ_k h_{x,y+,<k}‖²

with h the last hidden states (the output layer's input) at the positions that predict each response
token, and its length-normalised form ``ches_ln`` = ⟨Σh+, Σh−⟩/(T+ T−) − ‖Σh+‖²/T+². Higher = more
likely displacement. Hidden states come from the decoder on the engine's own encoding
(:func:`lldyn.scoring.response_hidden_states`), so both scores see the same tokens.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch

from lldyn.config import check
from lldyn.data import PreferenceExample
from lldyn.losses import dpo_loss
from lldyn.scoring import Encoder, ScoreConfig, ScoreRequest, ScoreResult, response_hidden_states, score


@dataclass(frozen=True)
class SqueezeRiskConfig:
    """Knobs of :func:`squeeze_risk`.

    beta: the DPO β of the planned run (sets c− = β/2 at step 0).
    score: how the engine tokenises and truncates.
    ches: also compute the CHES baseline (one extra decoder pass per pair).
    ches_batch: pairs per decoder pass for CHES.
    """

    beta: float = 0.1
    score: ScoreConfig = ScoreConfig()
    ches: bool = True
    ches_batch: int = 8

    def __post_init__(self) -> None:
        check(self.beta > 0 and math.isfinite(self.beta), "beta", f"must be a positive number, got {self.beta}",
              "β > 0, e.g. 0.1")
        check(self.ches_batch >= 1, "ches_batch", f"must be >= 1, got {self.ches_batch}", "a positive integer")


@dataclass(frozen=True)
class PairRisk:
    """Squeeze risk of one preference pair at step 0 (see the module docstring for the formulas).

    risk, risk_sum: the score (mean over y− tokens) and T × risk.
    neg_surprise: −mean_t log π(y−_t); neg_top1: mean_t max_v π; neg_entropy: mean_t H_t (nats);
    neg_residual: mean_t c−‖π_t − e_{y−_t}‖ (Σπ² lower-bounded); coef: c−.
    ches, ches_ln: the CHES baseline and its length-normalised form (None when not computed).
    rank, ches_rank: 1 = riskiest by ``risk`` / by ``ches`` (0 until :func:`rank_pairs`).
    """

    id: str
    risk: float
    risk_sum: float
    neg_surprise: float
    neg_top1: float
    neg_entropy: float
    neg_residual: float
    coef: float
    n_tokens_chosen: int
    n_tokens_rejected: int
    logp_chosen: float
    logp_rejected: float
    truncated: bool
    ches: float | None = None
    ches_ln: float | None = None
    rank: int = 0
    ches_rank: int | None = None

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        return {"rank": row.pop("rank"), "id": row.pop("id"), **row}


# --------------------------------------------------------------------------- the risk score


def negative_coef(beta: float) -> float:
    """c− = ∂L_DPO/∂log π(y−) at step 0 with ref = policy (margin 0): β σ(0) = β/2, read from dpo_loss."""
    zero = torch.zeros(1, dtype=torch.float64)
    return float(dpo_loss(zero, zero, zero, zero, beta).rejected_coef[0])


def residual_norms(token_logps: Sequence[float], top1_probs: Sequence[float],
                   entropies: Sequence[float]) -> list[float]:
    """Per position ‖π_t − e_{y_t}‖ = sqrt(1 − 2π(y_t) + Σπ_t²), with Σπ² from its lower bound.

    Inputs (T,) as returned by ``score(..., per_token=True)``. Σπ² is bounded below by
    max(p² + [y ≠ argmax] π(y)², e^{−H}) and above by p (p = top-1 prob); the lower bound is used.
    """
    out = []
    for logp, p1, ent in zip(token_logps, top1_probs, entropies):
        py = math.exp(logp)
        is_argmax = logp >= math.log(max(p1, 1e-300)) - 1e-6
        sum_sq = max(p1 * p1 + (0.0 if is_argmax else py * py), math.exp(-ent))
        sum_sq = min(sum_sq, p1)
        out.append(math.sqrt(max(0.0, 1.0 - 2.0 * py + sum_sq)))
    return out


def pair_risk(example_id: str, chosen: ScoreResult, rejected: ScoreResult, coef: float) -> PairRisk:
    """The risk of one pair from the engine's per-token results for y+ and y− (``per_token=True``)."""
    if rejected.token_logps is None or rejected.top1_probs is None or rejected.entropies is None:
        raise ValueError("pair_risk needs score(..., per_token=True) results")
    logps, top1, ent = rejected.token_logps, rejected.top1_probs, rejected.entropies
    g = [coef * r for r in residual_norms(logps, top1, ent)]
    per_token = [g_t * p_t * (-s_t) for g_t, p_t, s_t in zip(g, top1, logps)]
    return PairRisk(
        id=example_id, risk=_mean(per_token), risk_sum=sum(per_token), neg_surprise=-_mean(logps),
        neg_top1=_mean(top1), neg_entropy=_mean(ent), neg_residual=_mean(g), coef=coef,
        n_tokens_chosen=chosen.n_tokens, n_tokens_rejected=len(logps), logp_chosen=chosen.logp,
        logp_rejected=rejected.logp,
        truncated=chosen.truncated or rejected.truncated,
    )


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if len(xs) else 0.0


def squeeze_risk(model: Any, tokenizer: Any, pairs: Sequence[PreferenceExample],
                 config: SqueezeRiskConfig = SqueezeRiskConfig(), progress: bool = False) -> list[PairRisk]:
    """Risk (and CHES) of every pair at the model's current weights, in the order of ``pairs``.

    One :func:`lldyn.scoring.score` call for all y+ and y−; deterministic (no sampling, eval mode).
    Use :func:`rank_pairs` to sort them.
    """
    encoder = Encoder(tokenizer, config.score)
    requests = []
    for p in pairs:
        requests += [ScoreRequest(p.prompt, p.chosen, p.where), ScoreRequest(p.prompt, p.rejected, p.where)]
    results = score(model, tokenizer, requests, config.score, per_token=True, progress=progress, encoder=encoder)
    coef = negative_coef(config.beta)
    risks = [pair_risk(p.id, results[2 * i], results[2 * i + 1], coef) for i, p in enumerate(pairs)]
    if config.ches:
        values = ches_scores(model, tokenizer, pairs, config.score, config.ches_batch, encoder=encoder)
        risks = [replace(r, ches=c, ches_ln=c_ln) for r, (c, c_ln) in zip(risks, values)]
    return risks


def rank_pairs(risks: Sequence[PairRisk]) -> list[PairRisk]:
    """Sorted riskiest first (by ``risk``, ties by id), with ``rank`` and ``ches_rank`` filled (1 = riskiest)."""
    with_ches = [i for i, r in enumerate(risks) if r.ches is not None]
    by_ches = sorted(with_ches, key=lambda i: (-float(risks[i].ches), risks[i].id))  # type: ignore[arg-type]
    ches_rank = {i: k for k, i in enumerate(by_ches, start=1)}
    order = sorted(range(len(risks)), key=lambda i: (-risks[i].risk, risks[i].id))
    return [replace(risks[i], rank=k, ches_rank=ches_rank.get(i)) for k, i in enumerate(order, start=1)]


# --------------------------------------------------------------------------- CHES baseline (Razin et al. 2024)


def ches_from_sums(sum_chosen: torch.Tensor, sum_rejected: torch.Tensor, n_chosen: torch.Tensor,
                   n_rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CHES and length-normalised CHES from summed hidden states (B, H) and lengths (B,) → (B,), (B,)."""
    cross = (sum_chosen * sum_rejected).sum(-1)
    self_sq = (sum_chosen * sum_chosen).sum(-1)
    n_c, n_r = n_chosen.double(), n_rejected.double()
    return cross - self_sq, cross / (n_c * n_r) - self_sq / (n_c * n_c)


def ches_scores(model: Any, tokenizer: Any, pairs: Sequence[PreferenceExample], config: ScoreConfig = ScoreConfig(),
                batch_size: int = 8, encoder: Encoder | None = None) -> list[tuple[float, float]]:
    """(CHES, length-normalised CHES) of every pair, in order; no grad, eval mode, padding-invariant.

    Σ_k h_{x,y,<k} sums the engine's response hidden states (:func:`lldyn.scoring.response_hidden_states`:
    the output layer's input at the positions that predict each response token, EOS included), in float64;
    the chosen and rejected responses of ``batch_size`` pairs share one forward pass.
    """
    encoder = encoder or Encoder(tokenizer, config)
    out: list[tuple[float, float]] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        encoded = [encoder.pair(p.prompt, p.chosen, p.where) for p in chunk]
        encoded += [encoder.pair(p.prompt, p.rejected, p.where) for p in chunk]
        hidden = response_hidden_states(model, encoded, tokenizer.pad_token_id, batch_size=len(encoded))
        sums = torch.stack([h.double().sum(0) for h in hidden])
        n = torch.tensor([h.shape[0] for h in hidden])
        k = len(chunk)
        ches, ches_ln = ches_from_sums(sums[:k], sums[k:], n[:k], n[k:])
        out += [(float(a), float(b)) for a, b in zip(ches, ches_ln)]
    return out


# --------------------------------------------------------------------------- validation helpers


def rankdata(values: Sequence[float]) -> np.ndarray:
    """1-based ranks with ties given their average rank (as ``scipy.stats.rankdata``). (N,) → (N,)."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson correlation of the average ranks (NaN if either is constant)."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs equal lengths, got {len(x)} and {len(y)}")
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else math.nan


def spearman_permutation_p(x: Sequence[float], y: Sequence[float], n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman's ρ (fraction of shuffles with |ρ| ≥ |ρ observed|)."""
    rho = abs(spearman(x, y))
    rng = np.random.default_rng(seed)
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    if denom == 0:
        return math.nan
    hits = sum(abs(float((rx * ry[rng.permutation(len(ry))]).sum()) / denom) >= rho - 1e-12 for _ in range(n_perm))
    return (hits + 1) / (n_perm + 1)
