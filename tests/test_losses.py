"""Losses against hand-derived numbers; residual coefficients against autograd."""
from __future__ import annotations

import math

import pytest
import torch

from lldyn.losses import dpo_loss, ipo_loss, preference_loss, sft_loss, simpo_loss, slic_loss, token_residual

T = lambda *v: torch.tensor(v, dtype=torch.float64, requires_grad=True)  # noqa: E731


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_sft_hand_values():
    out = sft_loss(T(-10.0, -4.0))
    assert out.loss.item() == pytest.approx(7.0)
    assert out.coef.tolist() == [-1.0, -1.0]
    per_tok = sft_loss(T(-10.0), n_tokens=torch.tensor([5]), per_token=True)
    assert per_tok.loss.item() == pytest.approx(2.0) and per_tok.coef.item() == pytest.approx(-0.2)


def test_dpo_hand_values():
    # margin = (-10 - -11) - (-12 - -11) = 2; loss = -log σ(0.2) = log(1 + e^-0.2)
    out = dpo_loss(T(-10.0), T(-12.0), T(-11.0), T(-11.0), beta=0.1)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-0.2)), abs=1e-12)
    assert out.loss.item() == pytest.approx(0.598138869, abs=1e-9)
    assert out.margin.item() == pytest.approx(2.0)
    assert out.chosen_rewards.item() == pytest.approx(0.1) and out.rejected_rewards.item() == pytest.approx(-0.1)
    w = 0.1 * (1 - sig(0.2))  # = 0.0450166...
    assert w == pytest.approx(0.04501660, abs=1e-8)
    assert out.chosen_coef.item() == pytest.approx(-w) and out.rejected_coef.item() == pytest.approx(w)
    # At step 0 of off-policy DPO the policy is the reference: margin 0, loss log 2, |c±| = β/2.
    zero = dpo_loss(T(-3.0), T(-5.0), T(-3.0), T(-5.0), beta=0.5)
    assert zero.loss.item() == pytest.approx(math.log(2)) and zero.chosen_coef.item() == pytest.approx(-0.25)


def test_ipo_slic_simpo_hand_values():
    ipo = ipo_loss(T(-10.0), T(-12.0), T(-11.0), T(-11.0), beta=0.1)  # (2 - 5)^2
    assert ipo.loss.item() == pytest.approx(9.0) and ipo.chosen_coef.item() == pytest.approx(-6.0)
    assert ipo.rejected_coef.item() == pytest.approx(6.0)
    slic = slic_loss(T(-10.0), T(-12.0), T(-11.0), T(-11.0), beta=0.1)  # relu(1 - 0.2)
    assert slic.loss.item() == pytest.approx(0.8) and slic.chosen_coef.item() == pytest.approx(-0.1)
    inactive = slic_loss(T(0.0), T(-20.0), T(0.0), T(0.0), beta=0.1)  # relu(1 - 2) = 0: no gradient
    assert inactive.loss.item() == 0.0 and inactive.chosen_coef.item() == 0.0
    # SimPO: avg c = -2, avg r = -3, margin 1, h = 2*1 - 0.5 = 1.5
    simpo = simpo_loss(T(-10.0), T(-12.0), torch.tensor([5.0]), torch.tensor([4.0]), beta=2.0, gamma=0.5)
    assert simpo.loss.item() == pytest.approx(math.log1p(math.exp(-1.5)), abs=1e-12)
    assert simpo.chosen_coef.item() == pytest.approx(-2 * (1 - sig(1.5)) / 5)
    assert simpo.rejected_coef.item() == pytest.approx(2 * (1 - sig(1.5)) / 4)


@pytest.mark.parametrize("kind", ["dpo", "ipo", "slic", "simpo"])
def test_residual_coefficients_equal_autograd(kind):
    torch.manual_seed(0)
    pc, pr = (torch.randn(4, dtype=torch.float64) * 3 - 20).requires_grad_(), (torch.randn(4, dtype=torch.float64) * 3 - 25).requires_grad_()
    rc, rr = torch.randn(4, dtype=torch.float64) - 20, torch.randn(4, dtype=torch.float64) - 25
    nc, nr = torch.tensor([5.0, 7, 9, 3]), torch.tensor([6.0, 2, 8, 4])
    out = preference_loss(kind, pc, pr, rc, rr, nc, nr, beta=0.3)
    gc, gr = torch.autograd.grad(out.losses.sum(), (pc, pr))
    assert torch.allclose(gc, out.chosen_coef.double(), atol=1e-10)
    assert torch.allclose(gr, out.rejected_coef.double(), atol=1e-10)


def test_token_residual_is_the_cross_entropy_gradient():
    torch.manual_seed(0)
    logits = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 3, 6, 2, 2])
    loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.allclose(token_residual(logits, targets, -torch.ones(5, dtype=torch.float64)), grad, atol=1e-6)
    # DPO's negative term flips the sign: c− = +w gives G− = −w(π − e_y−)
    g_neg = token_residual(logits, targets, torch.full((5,), 0.05, dtype=torch.float64))
    assert torch.allclose(g_neg.double(), -0.05 * grad, atol=1e-6)
    g_pos = token_residual(logits, targets, torch.full((5,), -0.05, dtype=torch.float64))
    assert torch.allclose(g_pos.double(), 0.05 * grad, atol=1e-6)
