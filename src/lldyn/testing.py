"""Slow, obvious reference implementations — used only by tests and benchmarks to check the fast paths.

Nothing in lldyn itself calls these: :mod:`lldyn.scoring` is the one log-prob engine.
"""
from __future__ import annotations

from typing import Any

import torch

from lldyn.scoring import EncodedPair


def naive_logp(model: Any, pair: EncodedPair) -> tuple[float, float]:
    """Reference-repo style: one sequence, full logits, full log-softmax. Returns (log π(y), log π(y*))."""
    ids = torch.tensor([list(pair.prompt_ids) + list(pair.response_ids)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    n = len(pair.prompt_ids)
    rows = logp[n - 1:n - 1 + len(pair.response_ids)]
    target = torch.tensor(pair.response_ids)
    return float(rows.gather(-1, target[:, None]).sum()), float(rows.max(-1).values.sum())
