"""Exact one-step A·K·G decomposition for any classifier (an ``nn.Module`` returning logits).

Ren & Sutherland, "Learning Dynamics of LLM Finetuning" (ICLR 2025), Sec. 2-3. After one SGD step
of size η on a batch {x_u} (mean loss over the batch, B examples), the change of the log-probs on a
probe input x_o is, to first order (eq. (3)-(5) of the paper):

    Δ log π(x_o) = −(η / B) Σ_u A(x_o) K(x_o, x_u) G(x_u) + O(η²)

with
    A(x_o)     = I − 1 πᵀ(x_o)                     (V, V)  ∂ log π / ∂z, softmax Jacobian (eq. (4))
    K(x_o,x_u) = ∇_θ z(x_o) ∇_θ z(x_u)ᵀ            (V, V)  empirical NTK of the logits (eq. (4))
    G(x_u)     = ∂L(x_u, y_u) / ∂z(x_u) = π − e_y   (V,)    loss residual (eq. (4)/(5))

Everything here is a pure function of a model, inputs and tensors; results are typed values.
Shapes use N_o probes, N_u training examples, V classes and P parameters. The model is used as a
function of its parameters (``torch.func.functional_call``) and never modified; put it in
``eval()`` mode yourself if it has dropout or batch norm (the decomposition assumes a fixed
function of θ).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from lldyn.losses import token_residual

__all__ = [
    "AKG",
    "adaptation_matrix",
    "Comparison",
    "compare",
    "cross_entropy_residual",
    "decompose",
    "empirical_ntk",
    "first_order_parts",
    "logit_jacobian",
    "one_step_change",
    "pearson",
    "softmax_jacobian",
]


class AKG(NamedTuple):
    """The terms of eq. (5) for N_o probes and a batch of N_u training examples.

    A: (N_o, V, V) softmax Jacobian I − 1πᵀ at each probe.
    K: (N_o, N_u, V, V) empirical NTK K(x_o, x_u) of the logits.
    G: (N_u, V) loss residual ∂L/∂z at each training example (cross-entropy: π − e_y).
    parts: (N_o, N_u, V) contribution of each training example u to the batch update,
        −(η/N_u) A(x_o) K(x_o, x_u) G(x_u); ``parts.sum(1) == predicted``.
    predicted: (N_o, V) first-order prediction of Δ log π(· | x_o) after one SGD step on the batch.
    lr: the step size η used.
    """

    A: torch.Tensor
    K: torch.Tensor
    G: torch.Tensor
    parts: torch.Tensor
    predicted: torch.Tensor
    lr: float

    @property
    def single_example(self) -> torch.Tensor:
        """(N_o, N_u, V) predicted Δ log π(x_o) if each x_u alone were the batch: −η A K G."""
        return self.parts * self.G.shape[0]


class Comparison(NamedTuple):
    """Predicted vs actual one-step change, both (N_o, V) (or any equal shapes)."""

    predicted: torch.Tensor
    actual: torch.Tensor
    pearson: float
    median_relative_error: float
    error_norm: float  # ‖predicted − actual‖₂ over all entries


def softmax_jacobian(logits: torch.Tensor) -> torch.Tensor:
    """A = ∂ log softmax(z) / ∂z = I − 1 πᵀ (paper eq. (4)); row i is e_i − π.

    Args:
        logits: (N, V).
    Returns:
        (N, V, V) with ``A[n, i, j] = δ_ij − π_j``.
    """
    return adaptation_matrix(torch.softmax(logits, dim=-1))


def adaptation_matrix(probs: torch.Tensor) -> torch.Tensor:
    """:func:`softmax_jacobian` given π: A = I − 1πᵀ. probs (N, V) → (N, V, V)."""
    eye = torch.eye(probs.shape[-1], dtype=probs.dtype, device=probs.device)
    return eye.expand(probs.shape[0], -1, -1) - probs[:, None, :]


def cross_entropy_residual(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """G = ∂L/∂z = π − e_y for the cross-entropy loss L = −log π(y | x), read from
    :func:`lldyn.losses.token_residual` with residual coefficient c = ∂L/∂log π = −1.

    Args:
        logits: (N, V).
        targets: (N,) class ids.
    Returns:
        (N, V) in the dtype of ``logits``.
    """
    coef = torch.full((logits.shape[0],), -1.0, dtype=logits.dtype, device=logits.device)
    return token_residual(logits, targets, coef).to(logits.dtype)


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.detach() for name, b in model.named_buffers()}


def _logits_fn(model: nn.Module):
    buffers = _buffers(model)

    def logits(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (params, buffers), (x.unsqueeze(0),)).squeeze(0)

    return logits


def logit_jacobian(model: nn.Module, x: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """∇_θ z(x) for every input, all trainable parameters flattened and concatenated.

    Args:
        model: maps (N, *input_shape) to (N, V) logits.
        x: (N, *input_shape).
        chunk_size: inputs processed at once inside ``vmap`` (bounds memory), None for all.
    Returns:
        (N, V, P) with P the number of trainable parameters.
    """
    params = _params(model)
    jac = vmap(jacrev(_logits_fn(model)), in_dims=(None, 0), chunk_size=chunk_size)(params, x)
    n, v = x.shape[0], next(iter(jac.values())).shape[1]
    return torch.cat([j.reshape(n, v, -1) for j in jac.values()], dim=-1)


def empirical_ntk(model: nn.Module, x_o: torch.Tensor, x_u: torch.Tensor, chunk_size: int = 32) -> torch.Tensor:
    """K(x_o, x_u) = ∇_θ z(x_o) ∇_θ z(x_u)ᵀ, the eNTK of the logits (paper eq. (4)).

    Args:
        x_o: (N_o, *input_shape) probes.
        x_u: (N_u, *input_shape) training examples.
        chunk_size: probes whose Jacobians are held at once (memory ≈ chunk·V·P numbers).
    Returns:
        (N_o, N_u, V, V) with ``K[o, u, i, j] = Σ_p ∂z_i(x_o)/∂θ_p · ∂z_j(x_u)/∂θ_p``.
    """
    jac_u = logit_jacobian(model, x_u, chunk_size=chunk_size)
    blocks = []
    for start in range(0, x_o.shape[0], chunk_size):
        jac_o = logit_jacobian(model, x_o[start:start + chunk_size], chunk_size=chunk_size)
        blocks.append(torch.einsum("aip,bjp->abij", jac_o, jac_u))
    return torch.cat(blocks, dim=0)


def first_order_parts(A: torch.Tensor, K: torch.Tensor, G: torch.Tensor, lr: float) -> torch.Tensor:
    """Per-example terms of eq. (5): −(η/N_u) A(x_o) K(x_o, x_u) G(x_u).

    Args:
        A: (N_o, V, V). K: (N_o, N_u, V, V). G: (N_u, V).
    Returns:
        (N_o, N_u, V); summing over dim 1 gives the batch prediction.
    """
    kg = torch.einsum("ouij,uj->oui", K, G)
    return -(lr / G.shape[0]) * torch.einsum("oki,oui->ouk", A, kg)


def decompose(model: nn.Module, x_o: torch.Tensor, x_u: torch.Tensor, y_u: torch.Tensor, lr: float,
              chunk_size: int = 32) -> AKG:
    """A, K, G and the first-order prediction for one SGD step of size ``lr`` on the batch (x_u, y_u).

    The step is θ ← θ − η ∇_θ (1/N_u) Σ_u CE(z(x_u), y_u), as :func:`one_step_change` takes it.

    Args:
        x_o: (N_o, *input_shape) probes. x_u: (N_u, *input_shape). y_u: (N_u,) labels.
    Returns:
        :class:`AKG` (see there for shapes).
    """
    with torch.no_grad():
        A = softmax_jacobian(model(x_o))
        G = cross_entropy_residual(model(x_u), y_u)
    K = empirical_ntk(model, x_o, x_u, chunk_size=chunk_size)
    parts = first_order_parts(A, K, G, lr)
    return AKG(A=A, K=K, G=G, parts=parts, predicted=parts.sum(dim=1), lr=float(lr))


def one_step_change(model: nn.Module, x_o: torch.Tensor, x_u: torch.Tensor, y_u: torch.Tensor,
                    lr: float) -> torch.Tensor:
    """The actual Δ log π(· | x_o) after one plain SGD step (no momentum) on the batch's mean CE.

    The model is not modified: the step is applied to a copy of its parameters.

    Args:
        x_o: (N_o, *input_shape). x_u: (N_u, *input_shape). y_u: (N_u,).
    Returns:
        (N_o, V) log π_after − log π_before.
    """
    params = _params(model)
    buffers = _buffers(model)

    def batch_loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, (p, buffers), (x_u,)), y_u)

    grads = grad(batch_loss)(params)
    stepped = {name: p - lr * grads[name] for name, p in params.items()}
    with torch.no_grad():
        before = torch.log_softmax(functional_call(model, (params, buffers), (x_o,)), dim=-1)
        after = torch.log_softmax(functional_call(model, (stepped, buffers), (x_o,)), dim=-1)
    return after - before


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two equally shaped tensors, all entries pooled."""
    a = a.flatten().double() - a.double().mean()
    b = b.flatten().double() - b.double().mean()
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else float("nan")


def compare(predicted: torch.Tensor, actual: torch.Tensor) -> Comparison:
    """Pearson r, median of |pred − act| / |act| over entries with act ≠ 0, and the error norm."""
    diff = (predicted - actual).double()
    nonzero = actual != 0
    rel = diff[nonzero].abs() / actual[nonzero].double().abs()
    return Comparison(
        predicted=predicted, actual=actual, pearson=pearson(predicted, actual),
        median_relative_error=float(rel.median()) if rel.numel() else float("nan"),
        error_norm=float(diff.norm()),
    )
