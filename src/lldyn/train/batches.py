"""The examples a phase trains on, encoded once, and the order it sees them in.

Data order is a pure function of (seed, phase, epoch), so a resumed run sees the very batches an
uninterrupted one would.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from lldyn.data import (PreferenceExample, SFTExample, is_preference_data, load_preferences, load_sft,
                        sft_from_preferences)
from lldyn.errors import LldynError
from lldyn.scoring import EncodedPair, Encoder
from lldyn.train.config import Phase, TrainConfig, prompts_per_step


@dataclass
class Example:
    """One training example, encoded. ``rejected`` is None for SFT examples."""

    id: str
    prompt: Any
    chosen: str
    rejected: str | None
    chosen_ids: EncodedPair
    rejected_ids: EncodedPair | None


def load_training_data(cfg: TrainConfig) -> tuple[list[PreferenceExample], list[SFTExample]]:
    """Preference pairs (empty for SFT data) and SFT examples (y+ of the pairs, or the SFT rows).

    SFT data is accepted for ``--method sft`` only; its format is told by the data's first row.
    """
    if cfg.method == "sft" and not is_preference_data(cfg.data, cfg.split):
        return [], load_sft(cfg.data, cfg.split, cfg.limit, skip_invalid=cfg.skip_invalid)
    pairs = load_preferences(cfg.data, cfg.split, cfg.limit, skip_invalid=cfg.skip_invalid)
    return pairs, sft_from_preferences(pairs)


def encode_phase_data(phase: Phase, pairs: Sequence[PreferenceExample], sft: Sequence[SFTExample],
                      encoder: Encoder, data_name: str) -> list[Example]:
    """Encode the examples one phase trains on; pairs identical after truncation are dropped (counted)."""
    out: list[Example] = []
    if phase.kind == "sft":
        items = sft_from_preferences(pairs, phase.include_rejected) if pairs else list(sft)
        for ex in items:
            out.append(Example(ex.id, ex.prompt, ex.response, None, encoder.pair(ex.prompt, ex.response, ex.where),
                               None))
    else:
        for p in pairs:
            out.append(Example(p.id, p.prompt, p.chosen, p.rejected, encoder.pair(p.prompt, p.chosen, p.where),
                               encoder.pair(p.prompt, p.rejected, p.where)))
    # A pair whose chosen and rejected are the same tokens after truncation carries no preference.
    usable = [e for e in out if e.rejected_ids is None or e.rejected_ids.response_ids != e.chosen_ids.response_ids]
    if not usable:
        raise LldynError(f"no usable pairs after truncation: chosen and rejected are identical in all {len(out)} pairs",
                         file=data_name, field="max_length", expected="a larger --max-length (or --max-prompt-tokens 0 "
                         "with a larger --max-length) so that responses keep the tokens where they differ")
    if len(usable) < len(out):
        warnings.warn(f"{data_name}: {len(out) - len(usable)} of {len(out)} pairs skipped: chosen and rejected are "
                      f"identical after truncation (max_length)", stacklevel=2)
    return usable


def check_batch(cfg: TrainConfig, n: int, phase: Phase, data: str) -> None:
    """Refuse a batch larger than the phase's usable examples (GRPO: more prompts per step than it has)."""
    if phase.kind == "grpo":
        need = prompts_per_step(cfg)
        if need > n:
            raise LldynError(f"a GRPO step samples {need} prompts (batch_size {cfg.batch_size} × grad_accum "
                             f"{cfg.grad_accum} / num_generations {cfg.num_generations}), more than the {n} prompts",
                             file=data, field="batch_size", expected=f"at most {n} prompts per step")
        return
    if cfg.batch_size > n:
        raise LldynError(f"batch size {cfg.batch_size} is larger than the {n} usable examples of phase {phase.name!r}",
                         file=data, field="batch_size", expected=f"--batch-size <= {n}")


def batch_order(n_examples: int, batch_size: int, seed: int, phase_index: int, epoch: int) -> list[list[int]]:
    """The micro-batches of one epoch: a permutation that depends only on (seed, phase, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + phase_index * 1009 + epoch)
    perm = torch.randperm(n_examples, generator=g).tolist()
    return [perm[i:i + batch_size] for i in range(0, n_examples - batch_size + 1, batch_size)]


def micro_batch(examples: Sequence[Example], cfg: TrainConfig, phase_index: int, index: int) -> list[Example]:
    """The ``index``-th micro-batch of a phase (epochs follow each other; a pure function of its inputs)."""
    per_epoch = len(examples) // cfg.batch_size
    epoch, within = divmod(index, per_epoch)
    rows = batch_order(len(examples), cfg.batch_size, cfg.seed, phase_index, epoch)[within]
    return [examples[i] for i in rows]
