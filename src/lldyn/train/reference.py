"""The reference model of DPO-family and GRPO phases and its log-probs.

Off-policy, the reference log-probs of a phase's pairs are computed once at its start with the engine
and kept in the run directory, so no second model sits in memory and a resumed run uses the same
values. On-policy (on-policy DPO, and GRPO with β > 0), the responses change every round, so a frozen
reference is kept: with LoRA the policy with its adapter switched off (no copy), otherwise a frozen copy
of the starting model.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any, NamedTuple, Sequence

from lldyn.distributed import Processes, equal_shares, score_equal_forwards
from lldyn.models import load_model
from lldyn.rundir import RunDir
from lldyn.runs import is_run_dir, load_run_model, load_start_model
from lldyn.scoring import EncodedPair, ScoreRequest, score_encoded
from lldyn.train.batches import Example
from lldyn.train.config import TrainConfig


class AdapterDisabled(NamedTuple):
    """The reference of an on-policy LoRA run: the policy itself with its adapter switched off, which is the
    starting model (a fresh LoRA adapter starts at zero) without a second copy in memory."""

    model: Any


def reference_logps(model: Any, tokenizer: Any, examples: Sequence[Example], cfg: TrainConfig,
                    procs: Processes = Processes()) -> dict[str, tuple[float, float]]:
    """log π_ref(y+), log π_ref(y−) of every pair with the engine (no grad, prefix shared). With ``procs`` of
    several ranks (a sharded policy serving as its own reference), every rank scores its equal share of the
    pairs with as many forward passes as the others and every rank gets all values."""
    if isinstance(model, AdapterDisabled):
        with model.model.disable_adapter():
            return reference_logps(model.model, tokenizer, examples, cfg, procs)
    mine = [e for e in equal_shares(examples, procs.rank, procs.world) if e is not None]
    reqs = []
    for e in mine:
        reqs += [ScoreRequest(e.prompt, e.chosen), ScoreRequest(e.prompt, e.rejected or "")]
    res = score_equal_forwards(procs, model, tokenizer, reqs, cfg.scoring())
    values = {e.id: (res[2 * i].logp, res[2 * i + 1].logp) for i, e in enumerate(mine)}
    if procs.world == 1:
        return values
    every = {k: v for part in procs.gather(values) for k, v in part.items()}
    return {e.id: every[e.id] for e in examples}


def reference_token_logps(model: Any, encoded: Sequence[EncodedPair], pad_id: int, cfg: TrainConfig
                          ) -> list[tuple[float, ...]]:
    """log π_ref(y_t | x, y_<t) of every token of every encoded response (GRPO's KL term), with the engine
    (no grad, prefix shared)."""
    if isinstance(model, AdapterDisabled):
        with model.model.disable_adapter():
            return reference_token_logps(model.model, encoded, pad_id, cfg)
    return [r.token_logps for r in score_encoded(model, encoded, pad_id, cfg.scoring(), per_token=True)]


def load_or_compute_reference(run: RunDir | None, phase_index: int, ref_model: Any, tokenizer: Any,
                              examples: Sequence[Example], cfg: TrainConfig, procs: Processes = Processes()
                              ) -> dict[str, tuple[float, float]]:
    """Reference log-probs of a phase, kept in the run directory so a resumed run uses the same ones. With
    ``procs`` (a sharded policy as its own reference) every rank calls it: rank 0 reads, all score, rank 0 writes."""
    stored = procs.from_main(lambda: run.reference_logps(phase_index)) if run is not None else None
    if stored is not None and all(e.id in stored for e in examples):
        return stored
    ref = reference_logps(ref_model, tokenizer, examples, cfg, procs)
    if run is not None and procs.is_main:
        run.write_reference_logps(phase_index, ref)
    return ref


def reference_model(cfg: TrainConfig, model: Any, resumed: bool = False) -> Any:
    """The DPO / GRPO reference: ``--ref`` if given, else the model as it is at the start of this phase.

    Off-policy, the reference is only needed for the log-probs computed right now, so the policy
    itself serves (no copy). On-policy (and for GRPO) it must stay frozen: with LoRA, the policy with its adapter
    disabled (:class:`AdapterDisabled`, no copy); otherwise a frozen deep copy — or, when the run
    was ``resumed`` in the middle of the phase (the policy already moved), the starting model loaded
    again (on-policy and GRPO runs are single-phase, so the phase starts from the starting model).
    """
    if cfg.ref is not None:
        if is_run_dir(cfg.ref):  # an earlier run's final model, e.g. the SFT run of a two-run pipeline
            ref = load_run_model(cfg.ref, trust_remote_code=cfg.trust_remote_code).model
            return ref.merge_and_unload() if hasattr(ref, "merge_and_unload") else ref
        return load_model(replace(cfg.model_config(cfg.ref), lora_r=0)).model
    if not (cfg.on_policy or cfg.method == "grpo"):
        return model
    if cfg.lora_r > 0 and hasattr(model, "disable_adapter"):
        return AdapterDisabled(model)
    frozen = load_start_model(cfg.model_config()).model if resumed else copy.deepcopy(model)
    frozen.eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen
