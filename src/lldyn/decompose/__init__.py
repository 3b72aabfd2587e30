"""Decomposition of one update's effect on the model's predictions into A·K·G (paper Sec. 2-3).

:mod:`lldyn.decompose.classifier`: the exact decomposition for any classifier returning logits.
:mod:`lldyn.decompose.llm`: first-order prediction and attribution of one LLM step, last-layer eNTK.
Both modules' public names are re-exported here (each module's ``__all__`` is the one list of them).
"""
from lldyn.decompose.classifier import *  # noqa: F401,F403
from lldyn.decompose.classifier import __all__ as _classifier_all
from lldyn.decompose.llm import *  # noqa: F401,F403
from lldyn.decompose.llm import __all__ as _llm_all

__all__ = [*_classifier_all, *_llm_all]
