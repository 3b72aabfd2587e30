"""Decomposition of one update's effect on the model's predictions into A·K·G (paper Sec. 2-3).

:mod:`lldyn.decompose.classifier`: the exact decomposition for any classifier returning logits.
"""
from lldyn.decompose.classifier import (
    AKG,
    Comparison,
    compare,
    cross_entropy_residual,
    decompose,
    empirical_ntk,
    first_order_parts,
    logit_jacobian,
    one_step_change,
    pearson,
    softmax_jacobian,
)

__all__ = [
    "AKG",
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
