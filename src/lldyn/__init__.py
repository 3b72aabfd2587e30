"""lldyn: show, explain and predict what each finetuning step does to an LLM's responses.

Implements Ren & Sutherland, *Learning Dynamics of LLM Finetuning* (ICLR 2025, arXiv 2407.10490):
Δ log π(y|x_o) ≈ −η A(x_o) K(x_o, x_u) G(x_u).
"""
from lldyn.errors import LldynError

__version__ = "0.1.0"
__all__ = ["LldynError", "__version__"]
