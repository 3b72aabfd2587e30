"""Decomposition of one update's effect on the model's predictions into A·K·G (paper Sec. 2-3).

:mod:`lldyn.decompose.classifier`: the exact decomposition for any classifier returning logits.
:mod:`lldyn.decompose.llm`: first-order prediction and attribution of one LLM step, last-layer eNTK.
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

from lldyn.decompose.llm import *  # noqa: E402,F401,F403
from lldyn.decompose.llm import __all__ as _llm_all  # noqa: E402

__all__ += _llm_all
