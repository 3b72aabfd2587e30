"""The squeezing-effect toy (Ren & Sutherland, Sec. 3.3 / App. C): claims checked on distributions."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from typing import NamedTuple

import pytest
import torch

from lldyn.errors import LldynError
from lldyn.experiments.squeeze_toy import (
    NEG_PROB_SWEEP,
    PEAK_SWEEP,
    Claim,
    SqueezeToyConfig,
    SweepPoint,
    ToyCase,
    adaptation_matrix,
    compute_toy,
    first_order_change,
    make_toy,
    negative_residual,
    positive_residual,
    related_input,
    run_toy_cases,
    set_label_prob,
    softmax_probs,
    squeeze_metrics,
    sweep_neg_prob,
    sweep_peakiness,
    toy_claims,
    toy_step,
)

D = torch.float64


# --- hand-worked numbers on V = 3 -------------------------------------------------------------

def test_negative_step_on_flat_three_class_model_by_hand():
    # W = 0 → π = (1/3, 1/3, 1/3); x = (1, 2) → ‖x‖² = 5; η = 0.1; negative gradient on label 0:
    # G = e_0 − π = (2/3, −1/3, −1/3), Δz = −η‖x‖² G = (−1/3, 1/6, 1/6).
    W = torch.zeros(3, 2, dtype=D)
    x = torch.tensor([1.0, 2.0], dtype=D)
    res = toy_step(W, x, neg_label=0, lr=0.1, steps=1)
    torch.testing.assert_close(res.residual, torch.tensor([2 / 3, -1 / 3, -1 / 3], dtype=D))
    torch.testing.assert_close(res.logits_after - res.logits_before,
                               torch.tensor([-1 / 3, 1 / 6, 1 / 6], dtype=D), rtol=0, atol=1e-15)
    # π after: softmax(−1/3, 1/6, 1/6) = (e^{-1/2}, 1, 1) / (e^{-1/2} + 2).
    z = math.exp(-0.5) + 2
    torch.testing.assert_close(res.pi_after, torch.tensor([math.exp(-0.5) / z, 1 / z, 1 / z], dtype=D))


def test_positive_step_by_hand():
    # W rows give z = (1, 0, −1) at x = (1, 0); π = softmax(1, 0, −1). Positive gradient on label 2.
    W = torch.tensor([[1.0, 5.0], [0.0, -3.0], [-1.0, 2.0]], dtype=D)
    x = torch.tensor([1.0, 0.0], dtype=D)
    e = torch.exp(torch.tensor([1.0, 0.0, -1.0], dtype=D))
    pi = e / e.sum()
    G = pi - torch.tensor([0.0, 0.0, 1.0], dtype=D)
    res = toy_step(W, x, pos_label=2, lr=0.3, steps=1)
    torch.testing.assert_close(res.residual, G)
    torch.testing.assert_close(res.logits_after - res.logits_before, -0.3 * 1.0 * G, rtol=0, atol=1e-15)


@pytest.mark.parametrize("kind", ["pos", "neg", "both"])
def test_logit_change_is_exactly_minus_lr_norm2_residual(kind):
    gen = torch.Generator().manual_seed(3)
    W = torch.randn(3, 4, generator=gen, dtype=D)
    x = torch.randn(4, generator=gen, dtype=D) * 1.7
    pos = 1 if kind in ("pos", "both") else None
    neg = 2 if kind in ("neg", "both") else None
    res = toy_step(W, x, pos_label=pos, neg_label=neg, lr=0.37, steps=1)
    torch.testing.assert_close(res.logits_after - res.logits_before, -0.37 * (x @ x) * res.residual,
                               rtol=0, atol=1e-13)


def test_residuals_match_autograd():
    """Naive reference: the hand-written G and weight update equal autograd's gradient of the loss."""
    gen = torch.Generator().manual_seed(5)
    W = torch.randn(7, 3, generator=gen, dtype=D)
    x = torch.randn(3, generator=gen, dtype=D)
    x_pos = related_input(x, 0.4, seed=9)
    Wg = W.clone().requires_grad_(True)
    loss = -torch.log_softmax(Wg @ x_pos, -1)[4] + torch.log_softmax(Wg @ x, -1)[1]
    loss.backward()
    res = toy_step(W, x, pos_label=4, neg_label=1, lr=0.2, steps=1, x_pos=x_pos)
    torch.testing.assert_close(res.W_after, W - 0.2 * Wg.grad, rtol=0, atol=1e-14)
    z = (W @ x).requires_grad_(True)
    torch.log_softmax(z, -1)[1].backward()
    torch.testing.assert_close(negative_residual(torch.softmax(W @ x, -1), 1), z.grad)
    z = (W @ x).requires_grad_(True)
    (-torch.log_softmax(z, -1)[4]).backward()
    torch.testing.assert_close(positive_residual(torch.softmax(W @ x, -1), 4), z.grad)


def test_adaptation_matrix_by_hand_and_shift_invariance():
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=D)
    A = adaptation_matrix(pi)
    expected = torch.tensor([[0.5, -0.3, -0.2], [-0.5, 0.7, -0.2], [-0.5, -0.3, 0.8]], dtype=D)
    torch.testing.assert_close(A, expected)
    torch.testing.assert_close(A @ torch.ones(3, dtype=D), torch.zeros(3, dtype=D))  # shifting all z: no change


def test_first_order_prediction_matches_at_small_lr():
    """Δ log π ≈ −η A K G with K = ‖x‖² I, and the error shrinks like η² (A·K·G)."""
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(3, 2, generator=gen, dtype=D)
    x = torch.randn(2, generator=gen, dtype=D)
    errors = []
    for lr in (1e-2, 1e-3, 1e-4):
        res = toy_step(W, x, neg_label=1, lr=lr, steps=1)
        actual = torch.log(res.pi_after) - torch.log(res.pi_before)
        predicted = first_order_change(res.pi_before, x, res.residual, lr)
        errors.append(float((actual - predicted).abs().max()))
        assert errors[-1] < 10 * lr ** 2 * float(x @ x) ** 2
    assert errors[1] < errors[0] / 50 and errors[2] < errors[1] / 50


def test_shared_input_dpo_has_no_squeeze():
    """With the chosen and rejected read at the same x, the π terms cancel: G = e_{y−} − e_{y+}."""
    W, x = make_toy(10, 4, 3.0, seed=1)
    res = toy_step(W, x, pos_label=3, neg_label=7, lr=0.5, steps=1)
    expected = torch.zeros(10, dtype=D)
    expected[7], expected[3] = 1.0, -1.0
    torch.testing.assert_close(res.residual, expected)
    dz = res.logits_after - res.logits_before
    assert torch.count_nonzero(dz.abs() > 1e-12) == 2


# --- the squeeze on computed distributions -----------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_first_order_losers_are_below_the_threshold(seed):
    """At small η a label i ≠ y− loses mass iff π_i < ‖π‖² − π(y−) (App. C)."""
    W, x = make_toy(50, 4, 2.0, seed)
    neg = int(torch.argsort(softmax_probs(W, x))[3])  # a valley label
    res = toy_step(W, x, neg_label=neg, lr=1e-5, steps=1)
    p0 = res.pi_before
    threshold = float(p0 @ p0 - p0[neg])
    m = squeeze_metrics(res.pi_before, res.pi_after, neg)
    assert m.first_order_threshold == pytest.approx(threshold)
    others = [i for i in range(50) if i != neg and abs(float(p0[i]) - threshold) > 1e-6]
    for i in others:
        assert bool(res.pi_after[i] < p0[i]) == (float(p0[i]) < threshold), i


@pytest.mark.parametrize("seed", range(5))
def test_negative_gradient_on_valley_squeezes_into_argmax(seed):
    W, x = make_toy(50, 4, 3.0, seed)
    p0 = softmax_probs(W, x)
    neg = int(p0.argmin())
    res = toy_step(W, x, neg_label=neg, lr=0.5, steps=5)
    m = squeeze_metrics(res.pi_before, res.pi_after, neg)
    assert m.delta_neg < 0                       # π(y−) falls
    assert m.argmax_label == int(p0.argmax())
    assert m.delta_argmax > 0                    # the argmax rises
    assert m.squeeze_ratio > 100                 # ... by far more than y− gave up
    assert m.frac_bystanders_losing > 0.5        # most labels below it lose mass
    assert m.mass_lost_below_argmax > 0
    assert m.rich_get_richer                     # π'/π follows the ranking of π
    assert m.entropy_after < m.entropy_before
    torch.testing.assert_close(res.pi_after.sum(), torch.tensor(1.0, dtype=D))


def test_negative_gradient_when_flat_spreads_evenly():
    W, x = make_toy(50, 4, 0.01, seed=0)
    res = toy_step(W, x, neg_label=17, lr=0.5, steps=5)
    m = squeeze_metrics(res.pi_before, res.pi_after, 17)
    assert m.delta_neg < 0 and m.n_losers == 0
    ratio = torch.cat([res.pi_after[:17] / res.pi_before[:17], res.pi_after[18:] / res.pi_before[18:]])
    assert float(ratio.max() / ratio.min()) < 1.01
    assert m.squeeze_ratio < 2 / 49             # about a fair 1/(V−1) share, not a squeeze


def test_negative_gradient_on_peak_feeds_the_runner_up():
    W, x = make_toy(50, 4, 3.0, seed=0)
    p0 = softmax_probs(W, x)
    order = torch.argsort(p0, descending=True)
    peak, runner_up = int(order[0]), int(order[1])
    res = toy_step(W, x, neg_label=peak, lr=0.5, steps=1)
    gain = res.pi_after - res.pi_before
    assert gain[peak] < 0
    gain[peak] = -math.inf
    assert int(gain.argmax()) == runner_up
    assert squeeze_metrics(res.pi_before, res.pi_after, peak).argmax_label == runner_up


def test_positive_gradient_pulls_up_and_the_peak_pays():
    W, x = make_toy(50, 4, 3.0, seed=0)
    p0 = softmax_probs(W, x)
    order = torch.argsort(p0, descending=True)
    y, top = int(order[5]), int(order[0])
    res = toy_step(W, x, pos_label=y, lr=0.5, steps=1)
    assert res.pi_after[y] > p0[y]
    dz = res.logits_after - res.logits_before
    others = torch.arange(50) != y
    torch.testing.assert_close(dz[others], -0.5 * p0[others])  # Δz_i = −η‖x‖² π_i, ‖x‖ = 1
    paid = p0 - res.pi_after
    paid[y] = -math.inf
    assert int(paid.argmax()) == top


@pytest.mark.parametrize("seed", range(4))
def test_stronger_when_neg_prob_smaller(seed):
    W, x = make_toy(50, 4, 3.0, seed)
    neg = int(torch.argsort(softmax_probs(W, x), descending=True)[25])
    points = sweep_neg_prob(W, x, neg, NEG_PROB_SWEEP, lr=0.5, steps=5)
    for prob, p in zip(NEG_PROB_SWEEP, points):
        assert p.neg_before == pytest.approx(prob, rel=1e-9)
    ratios = [p.metrics.squeeze_ratio for p in points]
    lost = [p.metrics.bystander_loss_fraction for p in points]
    assert all(b > a for a, b in zip(ratios, ratios[1:])), ratios
    assert all(b >= a - 1e-12 for a, b in zip(lost, lost[1:])), lost
    assert lost[-1] > lost[0]


@pytest.mark.parametrize("seed", range(4))
def test_stronger_when_peakier(seed):
    W, x = make_toy(50, 4, 1.0, seed)
    points = sweep_peakiness(W, x, PEAK_SWEEP, lr=0.5, steps=5)
    peaks = [p.peak_before for p in points]
    frac = [p.metrics.frac_losers for p in points]
    ratios = [p.metrics.squeeze_ratio for p in points]
    assert all(b > a for a, b in zip(peaks, peaks[1:]))
    assert all(b >= a for a, b in zip(frac, frac[1:])), frac
    assert frac[0] == 0 and frac[-1] > 0.9
    assert all(b > a for a, b in zip(ratios, ratios[1:])), ratios


@pytest.mark.parametrize("seed", range(4))
def test_peakier_squeezes_more_labels_even_with_neg_prob_pinned(seed):
    """Peakiness alone (π(y−) held at 1e-4): the share of labels that lose mass still grows."""
    W, x = make_toy(50, 4, 1.0, seed)
    points = sweep_peakiness(W, x, PEAK_SWEEP, lr=0.5, steps=5, neg_prob=1e-4)
    assert all(p.neg_before == pytest.approx(1e-4) for p in points)
    frac = [p.metrics.frac_losers for p in points]
    lost = [p.metrics.bystander_loss_fraction for p in points]
    assert all(b >= a for a, b in zip(frac, frac[1:])), frac
    assert frac[-1] > frac[0] and lost[-1] > 10 * lost[0]


def test_set_label_prob_keeps_the_others_proportions():
    W, x = make_toy(20, 4, 2.0, seed=2)
    p0 = softmax_probs(W, x)
    p1 = softmax_probs(set_label_prob(W, x, 4, 0.25), x)
    assert float(p1[4]) == pytest.approx(0.25)
    keep = torch.arange(20) != 4
    torch.testing.assert_close(p1[keep] / p1[keep].sum(), p0[keep] / p0[keep].sum())


# --- the toy's claims, each with its threshold written here ------------------------------------
# Thresholds come from the paper (Sec. 3.3, App. C) and from the numbers docs/squeezing.md reports for
# seed 0, loosened only as far as seeds 1 and 2 need; none is read from the module. Each check raises
# AssertionError, so the test of the module's own ``Claim.passed`` flags can run the same checks.


class Toy(NamedTuple):
    case: dict[str, ToyCase]
    prob_sweep: tuple[SweepPoint, ...]
    peak_sweep: tuple[SweepPoint, ...]
    claims: tuple[Claim, ...]


@pytest.fixture(scope="module", params=[0, 1, 2], ids=lambda seed: f"seed{seed}")
def toy(request) -> Toy:
    cases, prob_sweep, peak_sweep, claims = compute_toy(SqueezeToyConfig(seed=request.param))
    return Toy({c.name: c for c in cases}, prob_sweep, peak_sweep, claims)


def _others(res, *drop: int | None) -> torch.Tensor:
    """(V,) bool: every label except ``drop``."""
    keep = torch.ones_like(res.pi_before, dtype=torch.bool)
    for label in drop:
        if label is not None:
            keep[label] = False
    return keep


def check_positive_pulls_up_and_the_peak_pays(t: Toy):
    """SFT-like step on a rank-6 label: π(y+) grows (docs: 0.0137 → 0.2798), the old argmax gives up most."""
    res = t.case["1-positive"].result
    y, p0, p1 = res.pos_label, res.pi_before, res.pi_after
    assert p1[y] > 5 * p0[y], (float(p0[y]), float(p1[y]))
    top = int(p0.argmax())
    paid = torch.where(_others(res, y), p0 - p1, torch.tensor(-math.inf, dtype=D))
    assert top != y and int(paid.argmax()) == top


def check_flat_spreads_evenly(t: Toy):
    """Flat π: y− gives up most of its mass (docs: 0.0200 → 0.0016), no label loses, all gain alike, and
    the argmax gets about a fair 1/(V−1) share (docs: 0.031 per unit freed, fair 0.020), not a squeeze."""
    case = t.case["2-negative-flat"]
    res, m = case.result, case.metrics
    y = res.neg_label
    assert res.pi_after[y] < res.pi_before[y] / 5
    others = _others(res, y)
    gain = res.pi_after[others] / res.pi_before[others]
    assert (gain >= 1).all()
    assert float(gain.max() / gain.min()) < 1.05
    assert m.squeeze_ratio < 2 / 49


def check_peak_feeds_the_runner_up(t: Toy):
    """Negative gradient on the peak: it falls, and the runner-up gains most, absolutely and relatively."""
    res = t.case["3-negative-peak"].result
    p0, p1, y = res.pi_before, res.pi_after, res.neg_label
    assert y == int(p0.argmax()) and p1[y] < p0[y]
    runner_up = int(torch.argsort(p0, descending=True)[1])
    others = _others(res, y)
    minus_inf = torch.tensor(-math.inf, dtype=D)
    assert int(torch.where(others, p1 - p0, minus_inf).argmax()) == runner_up
    assert int(torch.where(others, p1 / p0, minus_inf).argmax()) == runner_up


def _check_neg_falls_and_argmax_rises(t: Toy, name: str, fold: float, argmax_gain: float):
    res, m = t.case[name].result, t.case[name].metrics
    y = res.neg_label
    top = int(torch.where(_others(res, y), res.pi_before, torch.tensor(-1.0, dtype=D)).argmax())
    assert m.argmax_label == top
    assert res.pi_after[y] < res.pi_before[y] / fold, (float(res.pi_before[y]), float(res.pi_after[y]))
    assert res.pi_after[top] > argmax_gain * res.pi_before[top], (float(res.pi_before[top]), float(res.pi_after[top]))


def _check_bystanders_squeezed(t: Toy, name: str, share: float, ratio: float):
    """Labels below y* (not y−, not y+) lose mass, and y* gains far more than y− gave up."""
    res, m = t.case[name].result, t.case[name].metrics
    bystanders = _others(res, res.neg_label, m.argmax_label, res.pos_label)
    losing = res.pi_after[bystanders] < res.pi_before[bystanders]
    assert float(losing.double().mean()) > share
    assert m.frac_bystanders_losing == pytest.approx(float(losing.double().mean()))
    freed = res.pi_before[res.neg_label] - res.pi_after[res.neg_label]
    gained = res.pi_after[m.argmax_label] - res.pi_before[m.argmax_label]
    assert float(gained / freed) > ratio
    assert m.squeeze_ratio == pytest.approx(float(gained / freed))


def check_dpo_valley_neg_falls_argmax_rises(t: Toy):
    """Off-policy DPO, 20 steps: π(y−) 1.2e-6 → 4e-15, the argmax 0.789 → 1.000 (docs)."""
    _check_neg_falls_and_argmax_rises(t, "4-dpo-valley", fold=1e3, argmax_gain=1.1)
    assert t.case["4-dpo-valley"].result.pi_after.max() > 0.9


def check_dpo_valley_bystanders_squeezed(t: Toy):
    """Docs: every label below the argmax loses mass; the argmax gains 1.8e5 times what y− gave up."""
    _check_bystanders_squeezed(t, "4-dpo-valley", share=0.99, ratio=1e4)


def check_dpo_valley_chosen_falls(t: Toy):
    """The squeeze beats the positive gradient: π(y+) at x− ends well below its start (docs: 0.0137 → 8e-6)."""
    res = t.case["4-dpo-valley"].result
    y = res.pos_label
    assert res.pi_after[y] < 0.75 * res.pi_before[y], (float(res.pi_before[y]), float(res.pi_after[y]))


def check_large_neg_falls_argmax_rises(t: Toy):
    """V = 1,000: π(y−) 6.0e-10 → 3.7e-11, the argmax 0.243 → 0.378 (docs)."""
    _check_neg_falls_and_argmax_rises(t, "5-large", fold=5, argmax_gain=1.1)


def check_large_bystanders_squeezed(t: Toy):
    """Docs: all 998 labels below the argmax lose mass (0.135 in total)."""
    _check_bystanders_squeezed(t, "5-large", share=0.95, ratio=1e3)


def check_large_rich_get_richer(t: Toy):
    """π_after/π_before rises with π_before's rank over y* and the bystanders (App. C)."""
    res = t.case["5-large"].result
    ranked = _others(res, res.neg_label)
    p0, p1 = res.pi_before[ranked], res.pi_after[ranked]
    log_ratio = (torch.log(p1) - torch.log(p0))[torch.argsort(p0)]
    assert (log_ratio.diff() >= -1e-9).all()


def check_smaller_neg_prob_squeezes_harder(t: Toy):
    """Sweep of π(y−) 0.3 → 1e-6 with the rest's shape fixed: the argmax's gain per unit freed grows
    (docs: 1.37 → 1.8e5) and so does the share of bystander mass lost (docs: 0.733 → 0.861)."""
    neg_p = [p.neg_before for p in t.prob_sweep]
    assert neg_p == pytest.approx(list(NEG_PROB_SWEEP), rel=1e-9)
    ratios = [p.metrics.squeeze_ratio for p in t.prob_sweep]
    assert all(b > a for a, b in zip(ratios, ratios[1:])), ratios
    assert ratios[0] < 10 and ratios[-1] > 1e4
    lost = [p.metrics.bystander_loss_fraction for p in t.prob_sweep]
    assert all(b >= a - 1e-12 for a, b in zip(lost, lost[1:])), lost
    assert lost[-1] > lost[0] + 0.05


def check_peakier_squeezes_more_labels(t: Toy):
    """Logit scale 0.05 → 4 (valley y−): max π grows from about uniform (docs: 0.022 → 0.932), the share of
    labels losing mass from none to nearly all (docs: 0 → 0.98), and the argmax's gain per unit freed."""
    peaks = [p.peak_before for p in t.peak_sweep]
    assert all(b > a for a, b in zip(peaks, peaks[1:])) and peaks[0] < 0.05 and peaks[-1] > 0.3
    frac = [p.metrics.frac_losers for p in t.peak_sweep]
    assert all(b >= a for a, b in zip(frac, frac[1:])), frac
    assert frac[0] == 0 and frac[-1] > 0.9
    ratios = [p.metrics.squeeze_ratio for p in t.peak_sweep]
    assert all(b > a for a, b in zip(ratios, ratios[1:])), ratios


# In the order of the module's claims (lldyn.experiments.squeeze_toy.toy_claims).
CLAIM_CHECKS = (
    check_positive_pulls_up_and_the_peak_pays,
    check_flat_spreads_evenly,
    check_peak_feeds_the_runner_up,
    check_dpo_valley_neg_falls_argmax_rises,
    check_dpo_valley_bystanders_squeezed,
    check_dpo_valley_chosen_falls,
    check_large_neg_falls_argmax_rises,
    check_large_bystanders_squeezed,
    check_large_rich_get_richer,
    check_smaller_neg_prob_squeezes_harder,
    check_peakier_squeezes_more_labels,
)


@pytest.mark.parametrize("check", CLAIM_CHECKS, ids=lambda f: f.__name__.removeprefix("check_"))
def test_toy_claim(toy, check):
    check(toy)


def _holds(check, t: Toy) -> bool:
    try:
        check(t)
    except AssertionError:
        return False
    return True


def _still(case: ToyCase) -> ToyCase:
    """The case as if the updates had moved nothing."""
    res = case.result
    still = dataclasses.replace(res, pi_after=res.pi_before, logits_after=res.logits_before,
                                trajectory=res.trajectory[:1].expand_as(res.trajectory))
    metrics = None if case.metrics is None else squeeze_metrics(res.pi_before, res.pi_before, res.neg_label,
                                                                pos_label=res.pos_label)
    return dataclasses.replace(case, result=still, metrics=metrics)


def test_the_modules_claim_flags_agree_with_these_checks(toy):
    """On the toy, and on the toy with every case frozen (where the case claims must fail, both here and there)."""
    assert [c.passed for c in toy.claims] == [_holds(check, toy) for check in CLAIM_CHECKS] == [True] * 11
    cases = tuple(_still(c) for c in toy.case.values())
    frozen = Toy({c.name: c for c in cases}, toy.prob_sweep, toy.peak_sweep,
                 toy_claims(cases, toy.prob_sweep, toy.peak_sweep))
    verdicts = [_holds(check, frozen) for check in CLAIM_CHECKS]
    assert [c.passed for c in frozen.claims] == verdicts
    assert verdicts.count(False) >= 8  # all but rich-get-richer (trivially true of a still π) and the sweeps


def test_the_toy_has_five_cases_and_a_large_one(toy):
    assert list(toy.case) == ["1-positive", "2-negative-flat", "3-negative-peak", "4-dpo-valley", "5-large"]
    assert toy.case["5-large"].result.pi_before.shape == (1000,)
    assert toy.case["1-positive"].metrics is None and toy.case["4-dpo-valley"].x_pos is not None


def test_squeeze_metrics_by_hand():
    """V = 4, y− = 3, y* = 0, bystanders 1 and 2 (or only 2 when 1 is y+)."""
    p0 = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=D)
    p1 = torch.tensor([0.6, 0.25, 0.12, 0.03], dtype=D)
    m = squeeze_metrics(p0, p1, neg_label=3)
    assert (m.argmax_label, m.n_losers) == (0, 2)
    assert (m.neg_before, m.neg_after, m.delta_neg) == pytest.approx((0.05, 0.03, -0.02))
    assert (m.argmax_before, m.argmax_after, m.delta_argmax) == pytest.approx((0.5, 0.6, 0.1))
    assert m.frac_losers == pytest.approx(2 / 3) and m.frac_bystanders_losing == 1.0
    assert m.mass_lost_below_argmax == pytest.approx(0.08)
    assert m.bystander_loss_fraction == pytest.approx(0.08 / 0.45)
    assert m.squeeze_ratio == pytest.approx(5.0)  # 0.1 gained for 0.02 freed
    assert m.rich_get_richer  # ratios 0.8, 0.833, 1.2 in the order of π_before 0.15, 0.3, 0.5
    assert m.first_order_threshold == pytest.approx(0.25 + 0.09 + 0.0225 + 0.0025 - 0.05)
    assert m.entropy_before == pytest.approx(-sum(p * math.log(p) for p in p0.tolist()))
    with_pos = squeeze_metrics(p0, p1, neg_label=3, pos_label=1)
    assert with_pos.mass_lost_below_argmax == pytest.approx(0.03)
    assert with_pos.bystander_loss_fraction == pytest.approx(0.2)
    p1_unranked = torch.tensor([0.5, 0.3, 0.1, 0.1], dtype=D)  # the bottom label doubles, the middle one loses
    assert not squeeze_metrics(p0, p1_unranked, neg_label=1).rich_get_richer


def test_config_validation():
    with pytest.raises(LldynError, match="lr"):
        SqueezeToyConfig(lr=0.0)
    with pytest.raises(LldynError, match="context_cos"):
        SqueezeToyConfig(context_cos=2.0)
    assert len(run_toy_cases(SqueezeToyConfig(steps=1, dpo_steps=1))) == 5


# --- the command -------------------------------------------------------------------------------

def _parse(argv):
    from lldyn.commands import squeeze_toy

    parser = argparse.ArgumentParser(prog="lldyn")
    squeeze_toy.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_writes_figures_and_claims(tmp_path, capsys):
    out = tmp_path / "toy"
    args = _parse(["squeeze-toy", "--out", str(out), "--seed", "0"])
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    names = ["1-positive", "2-negative-flat", "3-negative-peak", "4-dpo-valley", "5-large", "sweep"]
    for name in names:
        path = out / f"squeeze-toy-{name}.png"
        assert path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"squeeze-toy-{n}.png" for n in names)
    data = json.loads((out / "claims.json").read_text())
    assert data["all_passed"] is True
    _, _, _, claims = compute_toy(SqueezeToyConfig(seed=0))
    assert [(c["claim"], c["passed"]) for c in data["claims"]] == [(c.claim, c.passed) for c in claims]
    assert len(data["claims"]) == sum(line.startswith(("PASS", "FAIL")) for line in printed.splitlines())
    assert "FAIL" not in printed and str(out) in printed


def test_cli_refuses_a_file_as_out(tmp_path):
    target = tmp_path / "not-a-dir"
    target.write_text("x")
    args = _parse(["squeeze-toy", "--out", str(target)])
    with pytest.raises(LldynError, match="not a directory"):
        args.run(args)


def test_cli_registry_lists_the_command(tmp_path, capsys):
    from lldyn import cli

    assert "squeeze_toy" in cli.COMMANDS
    try:
        cli.build_parser()
    except ModuleNotFoundError as err:  # another command module is still being written
        pytest.skip(f"CLI registry incomplete: {err}")
    target = tmp_path / "file"
    target.write_text("x")
    assert cli.main(["squeeze-toy", "--out", str(target)]) == 2
    assert "not a directory" in capsys.readouterr().err
