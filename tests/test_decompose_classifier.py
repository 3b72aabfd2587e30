"""A·K·G on classifiers: hand-worked numbers on a linear softmax model, invariants on an MLP."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lldyn.decompose import (
    compare,
    cross_entropy_residual,
    decompose,
    empirical_ntk,
    logit_jacobian,
    one_step_change,
    softmax_jacobian,
)


@pytest.fixture(autouse=True, scope="module")
def _float64():
    """First-order checks need float64 headroom; restored after this module."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def linear_model() -> nn.Linear:
    """z = W x + b with 3 classes and 2 input features, hand-chosen weights."""
    model = nn.Linear(2, 3).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
        model.bias.copy_(torch.tensor([0.0, 0.5, -0.5]))
    return model


def mlp(seed: int = 0, d_in: int = 5, hidden: int = 16, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes)).double()


def test_linear_model_A_K_G_match_hand_computation():
    model = linear_model()
    x_o = torch.tensor([[1.0, 2.0]])
    x_u = torch.tensor([[3.0, -1.0]])
    y_u = torch.tensor([2])
    # Logits by hand: z(x_o) = [1, 2.5, -1.5]; z(x_u) = [3, -0.5, 3.5].
    z_o = torch.tensor([1.0, 2.5, -1.5])
    z_u = torch.tensor([3.0, -0.5, 3.5])
    pi_o = torch.exp(z_o) / torch.exp(z_o).sum()
    pi_u = torch.exp(z_u) / torch.exp(z_u).sum()
    # A = I − 1πᵀ: row i is e_i − π.
    A_hand = torch.eye(3) - torch.stack([pi_o] * 3)
    # ∂z_i/∂W_kl = δ_ik x_l, ∂z_i/∂b_k = δ_ik  ⇒  K_ij = δ_ij (x_oᵀ x_u + 1) = δ_ij (3 − 2 + 1) = 2 δ_ij.
    K_hand = 2.0 * torch.eye(3)
    # Cross-entropy: G = π − e_y.
    G_hand = pi_u - torch.tensor([0.0, 0.0, 1.0])

    eta = 0.1
    akg = decompose(model, x_o, x_u, y_u, lr=eta)
    torch.testing.assert_close(akg.A[0], A_hand)
    torch.testing.assert_close(akg.K[0, 0], K_hand)
    torch.testing.assert_close(akg.G[0], G_hand)
    torch.testing.assert_close(akg.predicted[0], -eta * A_hand @ K_hand @ G_hand)


def test_linear_ntk_is_inner_product_plus_one_times_identity():
    model = linear_model()
    torch.manual_seed(1)
    x_o, x_u = torch.randn(4, 2), torch.randn(3, 2)
    K = empirical_ntk(model, x_o, x_u, chunk_size=3)
    expected = (x_o @ x_u.T + 1.0)[:, :, None, None] * torch.eye(3)
    assert K.shape == (4, 3, 3, 3)
    torch.testing.assert_close(K, expected)


def test_softmax_jacobian_is_derivative_of_log_softmax():
    torch.manual_seed(2)
    z = torch.randn(5, 4)
    jac = torch.func.vmap(torch.func.jacrev(lambda v: torch.log_softmax(v, -1)))(z)
    torch.testing.assert_close(softmax_jacobian(z), jac)


def test_residual_is_gradient_of_cross_entropy():
    torch.manual_seed(3)
    z = torch.randn(6, 5, requires_grad=True)
    y = torch.randint(0, 5, (6,))
    torch.nn.functional.cross_entropy(z, y, reduction="sum").backward()
    torch.testing.assert_close(cross_entropy_residual(z.detach(), y), z.grad)


def test_ntk_matches_naive_per_pair_jacobians():
    model = mlp()
    torch.manual_seed(4)
    x_o, x_u = torch.randn(3, 5), torch.randn(2, 5)
    K = empirical_ntk(model, x_o, x_u, chunk_size=2)
    params = list(model.parameters())
    for o in range(3):
        for u in range(2):
            jo = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(model(x_o[o:o + 1])[0, i], params)])
                              for i in range(4)])
            ju = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(model(x_u[u:u + 1])[0, i], params)])
                              for i in range(4)])
            torch.testing.assert_close(K[o, u], jo @ ju.T)


@pytest.mark.parametrize("which", ["linear", "mlp"])
def test_ntk_gram_matrix_is_symmetric_psd(which):
    model = linear_model() if which == "linear" else mlp()
    torch.manual_seed(5)
    x = torch.randn(6, 2 if which == "linear" else 5)
    K = empirical_ntk(model, x, x)
    n, v = K.shape[0], K.shape[-1]
    gram = K.permute(0, 2, 1, 3).reshape(n * v, n * v)
    torch.testing.assert_close(gram, gram.T)
    torch.testing.assert_close(K[1, 4], K[4, 1].T)
    eigs = torch.linalg.eigvalsh(gram)
    assert eigs.min() >= -1e-9 * eigs.max()
    jac = logit_jacobian(model, x).reshape(n * v, -1)
    torch.testing.assert_close(gram, jac @ jac.T)


def test_parts_sum_to_total_and_scale_with_batch():
    model = mlp()
    torch.manual_seed(6)
    x_o, x_u = torch.randn(5, 5), torch.randn(4, 5)
    y_u = torch.randint(0, 4, (4,))
    akg = decompose(model, x_o, x_u, y_u, lr=0.01)
    assert akg.parts.shape == (5, 4, 4)
    torch.testing.assert_close(akg.parts.sum(1), akg.predicted)
    # Each part is 1/B of that example's own single-example update.
    for u in range(4):
        alone = decompose(model, x_o, x_u[u:u + 1], y_u[u:u + 1], lr=0.01)
        torch.testing.assert_close(akg.single_example[:, u], alone.predicted)
    # Δ log π is a change of log-probs, so Σ_c π_c Δ log π_c = 0 to first order (1ᵀ diag(π) A = 0).
    probs = torch.softmax(model(x_o), -1).detach()
    torch.testing.assert_close((probs * akg.predicted).sum(-1), torch.zeros(5), atol=1e-12, rtol=0)


def test_prediction_matches_one_sgd_step_at_small_lr():
    model = mlp(seed=7, d_in=8, hidden=32, classes=5)
    torch.manual_seed(8)
    x_o, x_u = torch.randn(20, 8), torch.randn(6, 8)
    y_u = torch.randint(0, 5, (6,))
    eta = 1e-3
    akg = decompose(model, x_o, x_u, y_u, lr=eta)
    result = compare(akg.predicted, one_step_change(model, x_o, x_u, y_u, lr=eta))
    assert result.pearson >= 0.99
    assert result.median_relative_error <= 0.05


def test_first_order_error_is_second_order_in_lr():
    model = mlp(seed=9, d_in=6, hidden=24, classes=4)
    torch.manual_seed(10)
    x_o, x_u = torch.randn(10, 6), torch.randn(4, 6)
    y_u = torch.randint(0, 4, (4,))
    etas = [1e-3 * 2**k for k in range(0, 8)]
    base = decompose(model, x_o, x_u, y_u, lr=1.0)  # A, K, G do not depend on η
    errors = []
    for eta in etas:
        actual = one_step_change(model, x_o, x_u, y_u, lr=eta)
        errors.append(float((eta * base.predicted - actual).norm()))
    xs = torch.tensor([math.log(e) for e in etas])
    ys = torch.tensor([math.log(e) for e in errors])
    slope = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum())
    assert 1.7 <= slope <= 2.3, slope


def test_model_is_not_modified():
    model = mlp()
    before = [p.clone() for p in model.parameters()]
    x = torch.randn(3, 5)
    one_step_change(model, x, x, torch.tensor([0, 1, 2]), lr=0.5)
    decompose(model, x, x, torch.tensor([0, 1, 2]), lr=0.5)
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)
