"""The squeezing effect: what a negative gradient does to a softmax (Ren & Sutherland, Sec. 3.3, App. C).

Imposing a negative gradient on a label y− (raising the loss ``+log π(y−)``, as DPO does to the
rejected response) lowers π(y−) as intended, but the mass it frees is not shared fairly: it is
*squeezed* into the most likely label y*, while most labels below y* lose mass too ("rich get
richer"). The effect is strongest when π(y−) is already small (a "valley" label, typical of
off-policy DPO) and when π is peaky.

This experiment is the paper's theory toy: a linear softmax head z = W x, π = softmax(z), trained by
plain gradient steps, with the metrics and claims behind ``lldyn squeeze-toy`` and
``docs/squeezing.md``. Its A and G are the library's own (:func:`lldyn.decompose.classifier.adaptation_matrix`,
:func:`lldyn.losses.residual_from_probs`). In real runs the effect is watched by the live alarm and
predicted by the squeeze risk (:mod:`lldyn.squeeze`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from lldyn.config import check
from lldyn.decompose.classifier import adaptation_matrix as _adaptation_matrices
from lldyn.io import atomic_write_json, save_figure
from lldyn.losses import residual_from_probs

# matplotlib is imported inside the drawing functions: it is slow to import, and compute_toy needs no figures.

# Multinomial logistic regression z = W x with W: (V, d), x: (d,), π = softmax(z) — the paper's
# App. C illustration. Here the paper's step-wise decomposition is exact in z: a step W ← W − η G xᵀ
# changes the logits at x by Δz = −η ‖x‖² G (the eNTK of a linear head is K = ‖x‖² I), and to first
# order Δ log π = −η A K G with A = I − 1πᵀ. All toy tensors are float64 so that the hand-checked
# identities hold to ~1e-15.

DTYPE = torch.float64


@dataclass(frozen=True)
class ToyResult:
    """Result of :func:`toy_step`.

    pi_before, pi_after: (V,) π = softmax(W x) before and after the updates, at the watched input x.
    logits_before, logits_after: (V,) z = W x before and after.
    residual: (V,) G = ∂L/∂z at x for the first step (the negative-gradient term, plus the positive
        term when it acts on x itself).
    W_after: (V, d) the weights after ``steps`` updates.
    trajectory: (steps + 1, V) π at x before the first step (row 0) and after each step.
    pos_label, neg_label: the labels that received a positive / negative gradient (None if none).
    """

    pi_before: torch.Tensor
    pi_after: torch.Tensor
    logits_before: torch.Tensor
    logits_after: torch.Tensor
    residual: torch.Tensor
    W_after: torch.Tensor
    trajectory: torch.Tensor
    pos_label: int | None
    neg_label: int | None


@dataclass(frozen=True)
class SqueezeMetrics:
    """How a negative gradient on ``neg_label`` moved π (see :func:`squeeze_metrics`).

    y* (``argmax_label``) is the most likely label other than y− before the update. "Bystanders" are
    all labels except y−, y* and the positively-trained y+ (if any).

    neg_before, neg_after, delta_neg: π(y−) before, after, and its change.
    argmax_before, argmax_after, delta_argmax: π(y*) before, after, and its change.
    n_losers, frac_losers: labels other than y− whose π fell, and their share of the V−1 labels.
    frac_bystanders_losing: share of bystanders whose π fell.
    mass_lost_below_argmax: Σ over bystanders of the probability each one lost.
    bystander_loss_fraction: that mass over the bystanders' total mass before (0 = untouched,
        1 = emptied): how hard the middle of the distribution is squeezed.
    squeeze_ratio: Δπ(y*) / (−Δπ(y−)), the argmax's gain per unit of mass y− actually gave up; above
        1 the argmax is also fed by the bystanders (NaN when π(y−) did not fall).
    rich_get_richer: π_after/π_before is non-decreasing in π_before over y* and the bystanders.
    first_order_threshold: ‖π‖² − π(y−); at first order in η a label i ≠ y− loses mass iff
        π_i is below it (App. C), so a larger threshold means a wider squeeze.
    entropy_before, entropy_after: Shannon entropy of π (nats).
    """

    neg_label: int
    argmax_label: int
    neg_before: float
    neg_after: float
    delta_neg: float
    argmax_before: float
    argmax_after: float
    delta_argmax: float
    n_losers: int
    frac_losers: float
    frac_bystanders_losing: float
    mass_lost_below_argmax: float
    bystander_loss_fraction: float
    squeeze_ratio: float
    rich_get_richer: bool
    first_order_threshold: float
    entropy_before: float
    entropy_after: float


@dataclass(frozen=True)
class Claim:
    """One quantified claim of the toy: ``passed`` is computed from the distributions, never a figure."""

    case: str
    claim: str
    passed: bool
    numbers: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        nums = "  ".join(f"{k}={_fmt(v)}" for k, v in self.numbers.items())
        return f"{'PASS' if self.passed else 'FAIL'}  {self.case}: {self.claim}  {nums}"


@dataclass(frozen=True)
class ToyCase:
    """One of the toy's scenarios, with everything it computed.

    name: short id used in file names (``squeeze-toy-<name>.png``); title: one line for the figure.
    W: (V, d) initial weights; x: (d,) the watched input; x_pos: (d,) input of the positive term.
    result: the :class:`ToyResult`; metrics: :class:`SqueezeMetrics` (None for the positive case).
    """

    name: str
    title: str
    W: torch.Tensor
    x: torch.Tensor
    x_pos: torch.Tensor | None
    result: ToyResult
    metrics: SqueezeMetrics | None


@dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep: the knob's value, π(y−) and max π before, and the metrics."""

    value: float
    neg_before: float
    peak_before: float
    metrics: SqueezeMetrics


@dataclass(frozen=True)
class SqueezeToyConfig:
    """Knobs of :func:`run_squeeze_toy` (defaults reproduce ``docs/squeezing.md``).

    seed: RNG seed for W and x. lr, steps: plain gradient descent on W. logit_scale: std of the
    logits z = W x at init (the peakiness knob; larger = peakier π). flat_scale: the same for the
    flat-π case. context_cos: cosine between the chosen context x+ and the rejected context x− in
    the DPO-like case (1 = the same input, where the two π terms of G cancel exactly). dpo_steps:
    steps of the DPO-like case, long enough for its positive gradient to saturate.
    """

    seed: int = 0
    lr: float = 0.5
    steps: int = 5
    logit_scale: float = 3.0
    flat_scale: float = 0.05
    context_cos: float = 0.3
    dpo_steps: int = 20

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", f"learning rate must be positive, got {self.lr}")
        check(self.steps >= 1, "steps", f"need at least one step, got {self.steps}")
        check(self.dpo_steps >= 1, "dpo_steps", f"need at least one step, got {self.dpo_steps}")
        check(self.logit_scale > 0, "logit_scale", "must be positive")
        check(self.flat_scale > 0, "flat_scale", "must be positive")
        check(-1.0 <= self.context_cos <= 1.0, "context_cos", "must be a cosine", expected="a value in [-1, 1]")


@dataclass(frozen=True)
class SqueezeToyReport:
    """What :func:`run_squeeze_toy` produced: the cases, both sweeps, claims, and files written."""

    config: SqueezeToyConfig
    cases: tuple[ToyCase, ...]
    prob_sweep: tuple[SweepPoint, ...]
    peak_sweep: tuple[SweepPoint, ...]
    claims: tuple[Claim, ...]
    figures: tuple[Path, ...]
    claims_path: Path

    @property
    def all_passed(self) -> bool:
        return all(c.passed for c in self.claims)


def make_toy(vocab: int, dim: int, logit_scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random linear softmax head and one unit-norm input.

    Returns W: (vocab, dim) with i.i.d. N(0, logit_scale²) entries and x: (dim,) with ‖x‖ = 1, so
    the logits z = W x are i.i.d. N(0, logit_scale²): ``logit_scale`` sets how peaky π is
    (an inverse temperature), independently of ``dim``.
    """
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(vocab, dim, generator=gen, dtype=DTYPE) * logit_scale
    x = torch.randn(dim, generator=gen, dtype=DTYPE)
    return W, x / x.norm()


def related_input(x: torch.Tensor, cos: float, seed: int) -> torch.Tensor:
    """A unit vector (d,) whose cosine with ``x`` (d,) is ``cos`` (random orthogonal part)."""
    gen = torch.Generator().manual_seed(seed)
    u = x / x.norm()
    r = torch.randn(x.shape[0], generator=gen, dtype=x.dtype)
    r = r - (r @ u) * u
    return cos * u + math.sqrt(max(0.0, 1.0 - cos * cos)) * r / r.norm()


def softmax_probs(W: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """π = softmax(W x): W (V, d), x (d,) → (V,)."""
    return torch.softmax(W @ x, dim=-1)


def positive_residual(pi: torch.Tensor, label: int) -> torch.Tensor:
    """G = ∂L/∂z for a positive gradient on ``label`` (SFT, L = −log π_y): G = π − e_y. pi: (V,) → (V,).

    :func:`lldyn.losses.residual_from_probs` with coefficient c = −1 (the paper's SFT residual).
    """
    return _residual(pi, label, -1.0)


def negative_residual(pi: torch.Tensor, label: int) -> torch.Tensor:
    """G for a negative gradient on ``label`` (L = +log π_{y−}): G = −(π − e_{y−}). pi: (V,) → (V,).

    This is the sign DPO puts on the rejected response (its DPO residual, c− > 0).
    """
    return _residual(pi, label, 1.0)


def _residual(pi: torch.Tensor, label: int, coef: float) -> torch.Tensor:
    return residual_from_probs(pi[None], torch.tensor([label]), torch.tensor([coef], dtype=pi.dtype))[0]


def adaptation_matrix(pi: torch.Tensor) -> torch.Tensor:
    """A = I − 1πᵀ, the paper's adaptation matrix: Δ log π = A Δz to first order. pi: (V,) → (V, V)."""
    return _adaptation_matrices(pi[None])[0]


def first_order_change(pi: torch.Tensor, x: torch.Tensor, residual: torch.Tensor, lr: float) -> torch.Tensor:
    """Predicted Δ log π at x after one step on x itself: −η A K G with K = ‖x‖² I (linear head).

    pi: (V,), x: (d,), residual G: (V,) → (V,). Exact up to O(η²): the paper's A·K·G decomposition.
    """
    return -lr * (adaptation_matrix(pi) @ ((x @ x) * residual))


def toy_step(
    W: torch.Tensor,
    x: torch.Tensor,
    *,
    pos_label: int | None = None,
    neg_label: int | None = None,
    lr: float = 0.5,
    steps: int = 1,
    x_pos: torch.Tensor | None = None,
) -> ToyResult:
    """``steps`` plain gradient steps on W; π is watched at x.

    Args:
        W: (V, d) initial weights (not modified).
        x: (d,) the watched input; the negative gradient on ``neg_label`` acts here.
        pos_label: label given a positive gradient (L += −log π(y+ | x_pos)).
        neg_label: label given a negative gradient (L += +log π(y− | x)).
        lr: step size η. steps: number of updates, each recomputing π.
        x_pos: (d,) input of the positive term; defaults to ``x``. In a real DPO step the chosen and
            rejected tokens are read in different contexts, so x_pos ≠ x; with x_pos = x the π
            terms of the two residuals cancel and G = e_{y−} − e_{y+} (no squeeze at all).

    Each step is W ← W − η Σ_terms G_term x_termᵀ, so at x, Δz = −η (‖x‖² G_x + ⟨x_pos, x⟩ G_pos).
    """
    if pos_label is None and neg_label is None:
        raise ValueError("toy_step needs a positive or a negative label")
    x_pos = x if x_pos is None else x_pos
    W_t = W.clone()
    first_residual: torch.Tensor | None = None
    trajectory = [softmax_probs(W, x)]
    for _ in range(steps):
        grad, residual_x = toy_gradient(W_t, x, x_pos, pos_label, neg_label)
        if first_residual is None:
            first_residual = residual_x
        W_t = W_t - lr * grad
        trajectory.append(softmax_probs(W_t, x))
    z0, z1 = W @ x, W_t @ x
    assert first_residual is not None
    return ToyResult(
        pi_before=torch.softmax(z0, -1), pi_after=torch.softmax(z1, -1),
        logits_before=z0, logits_after=z1, residual=first_residual, W_after=W_t,
        trajectory=torch.stack(trajectory),
        pos_label=pos_label, neg_label=neg_label,
    )


def toy_gradient(W: torch.Tensor, x: torch.Tensor, x_pos: torch.Tensor, pos_label: int | None,
                 neg_label: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """∂L/∂W (V, d) of one :func:`toy_step` update, and the residual G (V,) that acts at x.

    The negative term acts at x, the positive one at x_pos; when x_pos is x the positive residual joins
    G at x, where the π terms of the two cancel.
    """
    pi = softmax_probs(W, x)
    grad = torch.zeros_like(W)
    residual_x = torch.zeros_like(pi)
    if neg_label is not None:
        residual_x = residual_x + negative_residual(pi, neg_label)
    if pos_label is not None:
        g_pos = positive_residual(softmax_probs(W, x_pos), pos_label)
        if x_pos is x or torch.equal(x_pos, x):
            residual_x = residual_x + g_pos
        else:
            grad += torch.outer(g_pos, x_pos)
    grad += torch.outer(residual_x, x)
    return grad, residual_x


def squeeze_metrics(pi_before: torch.Tensor, pi_after: torch.Tensor, neg_label: int,
                    pos_label: int | None = None) -> SqueezeMetrics:
    """Quantify the squeeze of a negative gradient on ``neg_label`` (App. C).

    pi_before, pi_after: (V,) distributions at the watched input. ``pos_label`` (the DPO chosen
    label, if any) is left out of the bystanders, since its own gradient lifts it.
    """
    p0, p1 = pi_before.to(DTYPE), pi_after.to(DTYPE)
    V = p0.shape[0]
    not_neg = torch.ones(V, dtype=torch.bool)
    not_neg[neg_label] = False
    argmax = int(torch.where(not_neg, p0, torch.full_like(p0, -1.0)).argmax())
    bystanders = not_neg.clone()
    bystanders[argmax] = False
    if pos_label is not None and pos_label != neg_label:
        bystanders[pos_label] = False
    delta = p1 - p0
    losing = delta < 0
    n_losers = int((losing & not_neg).sum())
    n_by = int(bystanders.sum())
    mass_lost = float((-delta[bystanders]).clamp(min=0).sum())
    by_mass = float(p0[bystanders].sum())
    freed = -float(delta[neg_label])
    ratio = float(delta[argmax]) / freed if freed > 0 else math.nan
    # Rich get richer: over y* and the bystanders, the ratio π'/π follows π's ranking.
    ranked = bystanders.clone()
    ranked[argmax] = True
    order = torch.argsort(p0[ranked])
    log_ratio = (torch.log(p1[ranked]) - torch.log(p0[ranked]))[order]
    rich = bool((log_ratio[1:] - log_ratio[:-1] >= -1e-9).all())
    return SqueezeMetrics(
        neg_label=int(neg_label), argmax_label=argmax,
        neg_before=float(p0[neg_label]), neg_after=float(p1[neg_label]), delta_neg=-freed,
        argmax_before=float(p0[argmax]), argmax_after=float(p1[argmax]), delta_argmax=float(delta[argmax]),
        n_losers=n_losers, frac_losers=n_losers / max(V - 1, 1),
        frac_bystanders_losing=int((losing & bystanders).sum()) / max(n_by, 1),
        mass_lost_below_argmax=mass_lost,
        bystander_loss_fraction=mass_lost / by_mass if by_mass > 0 else 0.0,
        squeeze_ratio=ratio, rich_get_richer=rich,
        first_order_threshold=float(p0 @ p0 - p0[neg_label]),
        entropy_before=_entropy(p0), entropy_after=_entropy(p1),
    )


def set_label_prob(W: torch.Tensor, x: torch.Tensor, label: int, prob: float) -> torch.Tensor:
    """A copy of W (V, d) whose π(label | x) is ``prob``, the other labels keeping their proportions.

    Moves only row ``label`` along x (d,), which shifts z_label and no other logit at x.
    """
    check(0.0 < prob < 1.0, "prob", f"must be a probability strictly between 0 and 1, got {prob}")
    z = W @ x
    rest = torch.logsumexp(torch.cat([z[:label], z[label + 1:]]), dim=0)
    target = rest + math.log(prob / (1.0 - prob))
    W = W.clone()
    W[label] = W[label] + (target - z[label]) * x / (x @ x)
    return W


def sweep_neg_prob(W: torch.Tensor, x: torch.Tensor, neg_label: int, probs: Sequence[float], lr: float,
                   steps: int) -> tuple[SweepPoint, ...]:
    """Negative gradient on ``neg_label`` with π(y−) set to each of ``probs`` (W: (V, d), x: (d,)).

    Only y−'s logit moves between points, so the other labels keep the same relative shape and the
    same bystanders: a controlled test of "the smaller π(y−), the stronger the squeeze" (App. C).
    """
    return tuple(_sweep_point(prob, set_label_prob(W, x, neg_label, prob), x, neg_label, lr, steps)
                 for prob in probs)


def sweep_peakiness(W: torch.Tensor, x: torch.Tensor, scales: Sequence[float], lr: float,
                    steps: int, neg_prob: float | None = None) -> tuple[SweepPoint, ...]:
    """Negative gradient on the least likely label of softmax(s · W x) for each scale s.

    Scaling W (V, d) by s > 0 is an inverse temperature: the ranking at x (d,), so the valley label,
    stays while π gets peakier as s grows, and the valley's π(y−) shrinks with it. With ``neg_prob``
    set, π(y−) is pinned to that value at every s (:func:`set_label_prob`) to isolate peakiness.
    """
    points = []
    for s in scales:
        Ws = W * s
        neg = int(softmax_probs(Ws, x).argmin())
        if neg_prob is not None:
            Ws = set_label_prob(Ws, x, neg, neg_prob)
        points.append(_sweep_point(s, Ws, x, neg, lr, steps))
    return tuple(points)


def _sweep_point(value: float, W: torch.Tensor, x: torch.Tensor, neg_label: int, lr: float,
                 steps: int) -> SweepPoint:
    res = toy_step(W, x, neg_label=neg_label, lr=lr, steps=steps)
    return SweepPoint(float(value), float(res.pi_before[neg_label]), float(res.pi_before.max()),
                      squeeze_metrics(res.pi_before, res.pi_after, neg_label))


NEG_PROB_SWEEP = (0.3, 0.1, 0.03, 0.01, 1e-3, 1e-4, 1e-6)
PEAK_SWEEP = (0.05, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)


def run_toy_cases(config: SqueezeToyConfig = SqueezeToyConfig()) -> tuple[ToyCase, ...]:
    """The five cases of App. C's illustration (V = 50, d = 4, plus V = 1000, d = 50).

    1. positive gradient on a mid-ranked label (SFT-like);
    2. negative gradient on a label when π is flat;
    3. negative gradient on the peak label;
    4. negative gradient on the valley label plus a positive gradient on a mid-ranked label read in a
       related context (cosine ``context_cos``): off-policy DPO;
    5. the large case: negative gradient on the valley label of a peaky π over 1,000 labels.
    """
    c = config
    lr, steps = c.lr, c.steps
    W, x = make_toy(50, 4, c.logit_scale, c.seed)
    order = torch.argsort(softmax_probs(W, x), descending=True)
    mid, valley, peak = int(order[5]), int(order[-1]), int(order[0])
    cases = []

    res = toy_step(W, x, pos_label=mid, lr=lr, steps=steps)
    cases.append(ToyCase("1-positive", f"positive gradient on label {mid} (rank 6)", W, x, None, res, None))

    W_flat, x_flat = make_toy(50, 4, c.flat_scale, c.seed)
    flat_neg = int(torch.argsort(softmax_probs(W_flat, x_flat), descending=True)[25])
    res = toy_step(W_flat, x_flat, neg_label=flat_neg, lr=lr, steps=steps)
    cases.append(ToyCase("2-negative-flat", f"negative gradient on label {flat_neg}, flat π", W_flat, x_flat, None,
                         res, squeeze_metrics(res.pi_before, res.pi_after, flat_neg)))

    res = toy_step(W, x, neg_label=peak, lr=lr, steps=steps)
    cases.append(ToyCase("3-negative-peak", f"negative gradient on the peak label {peak}", W, x, None, res,
                         squeeze_metrics(res.pi_before, res.pi_after, peak)))

    x_pos = related_input(x, c.context_cos, c.seed + 1)
    res = toy_step(W, x, pos_label=mid, neg_label=valley, lr=lr, steps=c.dpo_steps, x_pos=x_pos)
    cases.append(ToyCase("4-dpo-valley", f"negative on valley label {valley} + positive on label {mid}"
                         f" (context cos {c.context_cos:g})", W, x, x_pos, res,
                         squeeze_metrics(res.pi_before, res.pi_after, valley, pos_label=mid)))

    W_big, x_big = make_toy(1000, 50, c.logit_scale, c.seed)
    big_valley = int(softmax_probs(W_big, x_big).argmin())
    res = toy_step(W_big, x_big, neg_label=big_valley, lr=lr, steps=steps)
    cases.append(ToyCase("5-large", f"V=1000, d=50: negative gradient on valley label {big_valley}", W_big, x_big,
                         None, res, squeeze_metrics(res.pi_before, res.pi_after, big_valley)))
    return tuple(cases)


def toy_claims(cases: Sequence[ToyCase], prob_sweep: Sequence[SweepPoint],
               peak_sweep: Sequence[SweepPoint]) -> tuple[Claim, ...]:
    """The quantified claims of Sec. 3.3 / App. C, each checked on the computed distributions."""
    by = {case.name: case for case in cases}
    return (
        _positive_claim(by["1-positive"]),
        _flat_claim(by["2-negative-flat"]),
        _peak_claim(by["3-negative-peak"]),
        *_valley_claims(by["4-dpo-valley"]),
        _chosen_falls_claim(by["4-dpo-valley"]),
        *_valley_claims(by["5-large"]),
        _rich_get_richer_claim(by["5-large"]),
        _neg_prob_sweep_claim(prob_sweep),
        _peakiness_sweep_claim(peak_sweep),
    )


def _positive_claim(case: ToyCase) -> Claim:
    """A positive gradient lifts y+, and the old argmax pays the most."""
    pos = case.result
    y, p0, p1 = pos.pos_label, pos.pi_before, pos.pi_after
    assert y is not None
    top = int(p0.argmax())
    paid = (p0 - p1).masked_fill(_onehot(y, p0).bool(), -math.inf)
    return Claim(case.name, "π(y+) rises; the old argmax pays the most mass",
                 bool(p1[y] > p0[y]) and top != y and int(paid.argmax()) == top,
                 {"pi_y+_before": float(p0[y]), "pi_y+_after": float(p1[y]),
                  "argmax_before": float(p0[top]), "argmax_after": float(p1[top])})


def _flat_claim(case: ToyCase) -> Claim:
    """On a flat π the mass y− frees is shared evenly: no squeeze."""
    flat = case.metrics
    assert flat is not None
    log_ratio = _others_log_ratio(case.result)
    return Claim(case.name, "flat π: y−'s mass is spread evenly, no label loses (little squeeze)",
                 flat.delta_neg < 0 and flat.n_losers == 0 and flat.squeeze_ratio < 0.1,
                 {"pi_y-_before": flat.neg_before, "pi_y-_after": flat.neg_after,
                  "n_losers": flat.n_losers, "squeeze_ratio": flat.squeeze_ratio,
                  "log_ratio_spread": float(log_ratio.max() - log_ratio.min())})


def _peak_claim(case: ToyCase) -> Claim:
    """A negative gradient on the peak hands its mass down the ranking, most to the runner-up."""
    pk = case.metrics
    assert pk is not None
    q0, q1 = case.result.pi_before, case.result.pi_after
    runner_up = int(torch.argsort(q0, descending=True)[1])
    is_neg = _onehot(pk.neg_label, q0).bool()
    gain = (q1 - q0).masked_fill(is_neg, -math.inf)
    log_gain = (torch.log(q1) - torch.log(q0)).masked_fill(is_neg, -math.inf)
    return Claim(case.name, "the peak falls; the runner-up gains the most (absolute and relative)",
                 pk.delta_neg < 0 and int(gain.argmax()) == runner_up and int(log_gain.argmax()) == runner_up,
                 {"peak_before": pk.neg_before, "peak_after": pk.neg_after,
                  "runner_up_before": float(q0[runner_up]), "runner_up_after": float(q1[runner_up])})


def _valley_claims(case: ToyCase) -> tuple[Claim, Claim]:
    """A negative gradient on a valley label: it falls, y* rises, and the labels below y* are squeezed."""
    m = case.metrics
    assert m is not None
    return (
        Claim(case.name, "π(y−) falls and the argmax's probability rises",
              m.delta_neg < 0 and m.delta_argmax > 0,
              {"pi_y-_before": m.neg_before, "pi_y-_after": m.neg_after,
               "argmax_before": m.argmax_before, "argmax_after": m.argmax_after}),
        Claim(case.name, "most labels below the argmax lose mass; the argmax gains far more than y− gave up",
              m.frac_bystanders_losing > 0.5 and m.mass_lost_below_argmax > 0 and m.squeeze_ratio > 1,
              {"frac_below_argmax_losing": m.frac_bystanders_losing,
               "mass_lost_below_argmax": m.mass_lost_below_argmax,
               "squeeze_ratio": m.squeeze_ratio}),
    )


def _chosen_falls_claim(case: ToyCase) -> Claim:
    """Off-policy DPO: the squeeze at x− outweighs the positive gradient that y+ gets at x+."""
    dpo = case.result
    yp = dpo.pos_label
    assert yp is not None
    path = dpo.trajectory[:, yp]
    return Claim(case.name, "the squeeze beats the positive gradient: π(y+) at x ends below its start",
                 bool(dpo.pi_after[yp] < dpo.pi_before[yp]),
                 {"pi_y+_before": float(dpo.pi_before[yp]), "pi_y+_max": float(path.max()),
                  "pi_y+_after": float(dpo.pi_after[yp])})


def _rich_get_richer_claim(case: ToyCase) -> Claim:
    m = case.metrics
    assert m is not None
    return Claim(case.name, "rich get richer: π_after/π_before follows the rank of π_before",
                 m.rich_get_richer, {"n_labels": len(case.result.pi_before)})


def _neg_prob_sweep_claim(prob_sweep: Sequence[SweepPoint]) -> Claim:
    neg_p = [p.neg_before for p in prob_sweep]
    ratios = [p.metrics.squeeze_ratio for p in prob_sweep]
    lost = [p.metrics.bystander_loss_fraction for p in prob_sweep]
    return Claim("sweep-neg-prob", "stronger when π(y−) is smaller: the argmax's gain per unit freed "
                 "and the share of bystander mass lost both grow",
                 _strictly_decreasing(neg_p) and _strictly_increasing(ratios) and _non_decreasing(lost)
                 and lost[-1] > lost[0],
                 {"pi_y-_first": neg_p[0], "pi_y-_last": neg_p[-1],
                  "squeeze_ratio_first": ratios[0], "squeeze_ratio_last": ratios[-1],
                  "bystander_loss_first": lost[0], "bystander_loss_last": lost[-1]})


def _peakiness_sweep_claim(peak_sweep: Sequence[SweepPoint]) -> Claim:
    peaks = [p.peak_before for p in peak_sweep]
    frac = [p.metrics.frac_losers for p in peak_sweep]
    ratios = [p.metrics.squeeze_ratio for p in peak_sweep]
    lost = [p.metrics.bystander_loss_fraction for p in peak_sweep]
    return Claim("sweep-peakiness", "stronger when π is peakier: more labels lose mass, and the argmax's "
                 "gain per unit freed grows",
                 _strictly_increasing(peaks) and _non_decreasing(frac) and frac[-1] > frac[0]
                 and _strictly_increasing(ratios),
                 {"max_pi_first": peaks[0], "max_pi_last": peaks[-1],
                  "frac_losers_first": frac[0], "frac_losers_last": frac[-1],
                  "squeeze_ratio_first": ratios[0], "squeeze_ratio_last": ratios[-1],
                  "bystander_loss_first": lost[0], "bystander_loss_last": lost[-1]})


def compute_toy(config: SqueezeToyConfig = SqueezeToyConfig()) -> tuple[
        tuple[ToyCase, ...], tuple[SweepPoint, ...], tuple[SweepPoint, ...], tuple[Claim, ...]]:
    """Cases, the π(y−) sweep (a mid-ranked y−, V = 50), the peakiness sweep (valley y−) and the claims.

    Pure computation, no files: what :func:`run_squeeze_toy` plots and writes.
    """
    cases = run_toy_cases(config)
    W, x = make_toy(50, 4, config.logit_scale, config.seed)
    mid_label = int(torch.argsort(softmax_probs(W, x), descending=True)[25])
    prob_sweep = sweep_neg_prob(W, x, mid_label, NEG_PROB_SWEEP, config.lr, config.steps)
    W_unit, x_unit = make_toy(50, 4, 1.0, config.seed)
    peak_sweep = sweep_peakiness(W_unit, x_unit, PEAK_SWEEP, config.lr, config.steps)
    return cases, prob_sweep, peak_sweep, toy_claims(cases, prob_sweep, peak_sweep)


def run_squeeze_toy(out_dir: str | Path, seed: int = 0,
                    config: SqueezeToyConfig | None = None) -> SqueezeToyReport:
    """Run the five cases and both sweeps; write ``squeeze-toy-*.png`` and ``claims.json`` to out_dir.

    ``config`` overrides every knob (its seed wins over ``seed``). Files are written atomically;
    a re-run into the same directory replaces them.
    """
    config = config or SqueezeToyConfig(seed=seed)
    out = Path(out_dir)
    cases, prob_sweep, peak_sweep, claims = compute_toy(config)

    figures = [_plot_case(case, out / f"squeeze-toy-{case.name}.png") for case in cases]
    figures.append(_plot_sweeps(prob_sweep, peak_sweep, out / "squeeze-toy-sweep.png"))
    claims_path = out / "claims.json"
    atomic_write_json(claims_path, {
        "paper": "Ren & Sutherland, Learning Dynamics of LLM Finetuning (ICLR 2025), Sec. 3.3 and App. C",
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "all_passed": all(c.passed for c in claims),
        "claims": [{"case": c.case, "claim": c.claim, "passed": c.passed,
                    "numbers": {k: _json_num(v) for k, v in c.numbers.items()}} for c in claims],
        "cases": {case.name: {"title": case.title,
                              "metrics": None if case.metrics is None else
                              {k: _json_num(v) for k, v in case.metrics.__dict__.items()}}
                  for case in cases},
        "sweeps": {name: [{"value": p.value, "pi_y-_before": p.neg_before, "max_pi_before": p.peak_before,
                           "squeeze_ratio": _json_num(p.metrics.squeeze_ratio),
                           "frac_losers": p.metrics.frac_losers,
                           "bystander_loss_fraction": p.metrics.bystander_loss_fraction} for p in points]
                   for name, points in (("neg_prob", prob_sweep), ("logit_scale", peak_sweep))},
        "figures": [f.name for f in figures],
    })
    return SqueezeToyReport(config, cases, prob_sweep, peak_sweep, claims, tuple(figures), claims_path)


def _plot_case(case: ToyCase, path: Path) -> Path:
    """Three panels: π before/after in label order, sorted by π before (log scale), and step by step."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.2), dpi=80)
    ax_lab, ax_sort, ax_path = fig.subplots(1, 3, gridspec_kw={"width_ratios": [3, 3, 2]})
    marks = _case_marks(case)
    _draw_by_label(ax_lab, case.result, marks)
    _draw_by_rank(ax_sort, case.result, marks)
    _draw_steps(ax_path, case, marks)
    fig.suptitle(case.title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


Mark = tuple[int | None, str, str]  # (label or None when the case has none, text, colour)


def _case_marks(case: ToyCase) -> list[Mark]:
    """y−, y+ and y* (the most likely label other than y−), in the order their annotations stack."""
    res = case.result
    marks: list[Mark] = [(res.neg_label, "y−", "tab:red"), (res.pos_label, "y+", "tab:green")]
    if case.metrics is not None:
        top_text = "runner-up" if case.metrics.neg_label == int(res.pi_before.argmax()) else "y*"
        marks.append((case.metrics.argmax_label, top_text, "tab:orange"))
    return marks


def _draw_by_label(ax: Any, res: ToyResult, marks: Sequence[Mark]) -> None:
    p0, p1 = res.pi_before.numpy(), res.pi_after.numpy()
    labels = range(p0.shape[0])
    if p0.shape[0] <= 100:
        ax.bar(labels, p0, width=0.8, color="0.7", label="before")
        ax.bar(labels, p1, width=0.4, color="tab:blue", label="after")
    else:
        ax.plot(labels, p0, color="0.6", lw=0.8, label="before")
        ax.plot(labels, p1, color="tab:blue", lw=0.8, label="after")
    for i, (label, text, color) in enumerate(marks):
        if label is not None:
            ax.axvline(label, color=color, lw=0.8, ls="--")
            ax.annotate(text, (label, 0.97 - 0.08 * i), xycoords=("data", "axes fraction"), color=color,
                        ha="left", va="top", fontsize=8)
    ax.set_xlabel("label")
    ax.set_ylabel("π")
    ax.legend(fontsize=7, loc="upper right")


def _draw_by_rank(ax: Any, res: ToyResult, marks: Sequence[Mark]) -> None:
    p0, p1 = res.pi_before.numpy(), res.pi_after.numpy()
    V = p0.shape[0]
    order = torch.argsort(res.pi_before, descending=True).numpy()
    ax.semilogy(range(V), p0[order], color="0.5", marker="." if V <= 100 else None, lw=1, label="before")
    ax.semilogy(range(V), p1[order], color="tab:blue", marker="." if V <= 100 else None, lw=1, label="after")
    for label, _, color in marks:
        if label is not None:
            ax.axvline(int((order == label).nonzero()[0][0]), color=color, lw=0.8, ls="--")
    ax.set_xlabel("rank of the label under π before")
    ax.set_ylabel("π (log)")
    ax.legend(fontsize=7, loc="upper right")


def _draw_steps(ax: Any, case: ToyCase, marks: Sequence[Mark]) -> None:
    res = case.result
    steps = range(res.trajectory.shape[0])
    for label, text, color in marks:
        if label is not None:
            ax.semilogy(steps, res.trajectory[:, label].numpy(), color=color, label=text)
    if case.metrics is None:  # positive case: follow the old argmax too
        top = int(res.pi_before.argmax())
        ax.semilogy(steps, res.trajectory[:, top].numpy(), color="tab:orange", label="old argmax")
    ax.set_xlabel("step")
    ax.set_ylabel("π (log)")
    ax.legend(fontsize=7)


def _plot_sweeps(prob_sweep: Sequence[SweepPoint], peak_sweep: Sequence[SweepPoint], path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2), dpi=80)
    ax_r, ax_p = fig.subplots(1, 2)
    neg_p = [p.neg_before for p in prob_sweep]
    ax_r.loglog(neg_p, [p.metrics.squeeze_ratio for p in prob_sweep], "o-", label="Δπ(y*) / −Δπ(y−)")
    ax_r.set_xlabel("π(y−) before (only y−'s logit moved)")
    ax_r.set_ylabel("argmax gain per unit freed")
    ax_r.invert_xaxis()
    twin = ax_r.twinx()
    twin.semilogx(neg_p, [p.metrics.bystander_loss_fraction for p in prob_sweep], "s-", color="tab:red",
                  label="share of bystander mass lost")
    twin.set_ylabel("share of bystander mass lost", color="tab:red")
    ax_r.set_title("smaller π(y−): stronger squeeze", fontsize=9)
    peaks = [p.peak_before for p in peak_sweep]
    ax_p.plot(peaks, [p.metrics.frac_losers for p in peak_sweep], "o-", label="share of labels losing mass")
    ax_p.plot(peaks, [p.metrics.bystander_loss_fraction for p in peak_sweep], "s-",
              label="share of bystander mass lost")
    ax_p.set_xlabel("max π before (peakiness, via the logit scale)")
    ax_p.set_title("peakier π: stronger squeeze (y− = valley)", fontsize=9)
    ax_p.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def _onehot(label: int, like: torch.Tensor) -> torch.Tensor:
    e = torch.zeros_like(like)
    e[label] = 1.0
    return e


def _entropy(p: torch.Tensor) -> float:
    return float(-(p * torch.log(p.clamp_min(1e-300))).sum())


def _others_log_ratio(res: ToyResult) -> torch.Tensor:
    """(V−1,) log π_after/π_before over labels other than y−."""
    keep = torch.ones_like(res.pi_before, dtype=torch.bool)
    if res.neg_label is not None:
        keep[res.neg_label] = False
    return torch.log(res.pi_after[keep]) - torch.log(res.pi_before[keep])


def _strictly_increasing(xs: Sequence[float]) -> bool:
    return all(b > a for a, b in zip(xs, xs[1:]))


def _strictly_decreasing(xs: Sequence[float]) -> bool:
    return all(b < a for a, b in zip(xs, xs[1:]))


def _non_decreasing(xs: Sequence[float]) -> bool:
    return all(b >= a - 1e-12 for a, b in zip(xs, xs[1:]))


def _json_num(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _fmt(v) -> str:
    if isinstance(v, bool) or isinstance(v, int):
        return str(v)
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.4f}"
    return f"{v:.3g}"


