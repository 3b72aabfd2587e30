"""On-policy DPO: pairs sampled from the current policy and labelled by a preference source.

Every ``on_policy_refresh`` steps a *round* starts: two samples from the current policy for just the
prompts those steps need, each pair labelled by ``source.prefer`` (undecided ones dropped), saved in
the run directory. A run resumed in the middle of a round reads that round back.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from lldyn.data import PreferenceExample
from lldyn.errors import LldynError
from lldyn.generation import GenerationConfig, generate
from lldyn.rundir import RunDir
from lldyn.scoring import Encoder
from lldyn.train.batches import Example, check_batch, encode_phase_data
from lldyn.train.config import Phase, TrainConfig


def on_policy_prompt_order(n_prompts: int, cfg: TrainConfig, round_index: int) -> list[int]:
    """The prompts of on-policy sampling round ``round_index``, in the order they are tried: a seeded
    permutation of all of them (a pure function of its inputs, so a resumed run tries the same ones)."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7919 * (round_index + 1))
    return torch.randperm(n_prompts, generator=g).tolist()


def on_policy_pairs(model: Any, tokenizer: Any, pairs: Sequence[PreferenceExample], source: Any, cfg: TrainConfig,
                    step: int) -> list[PreferenceExample]:
    """Two samples per prompt from the current policy, labelled by ``source.prefer`` (unlabelled prompts dropped)."""
    prompts = [p.prompt for p in pairs]
    gen = [generate(model, tokenizer, prompts, GenerationConfig(
        max_new_tokens=cfg.on_policy_max_new_tokens, do_sample=True, temperature=cfg.on_policy_temperature,
        seed=cfg.seed * 7919 + step * 2 + k, template=cfg.template, max_prompt_tokens=cfg.max_prompt_tokens))
        for k in range(2)]
    out = []
    for p, a, b in zip(pairs, gen[0], gen[1]):
        if not a.strip() or not b.strip() or a == b:
            continue
        choice = source.prefer(p.prompt, a, b)
        if choice is None:
            continue
        chosen, rejected = (a, b) if choice == 0 else (b, a)
        out.append(PreferenceExample(p.id, p.prompt, chosen, rejected, {"on_policy_step": step}, p.where))
    return out


def on_policy_round(model: Any, tokenizer: Any, pairs: Sequence[PreferenceExample], source: Any, cfg: TrainConfig,
                    step: int, round_index: int) -> tuple[list[PreferenceExample], int]:
    """The pairs of one on-policy round (the ``on_policy_refresh`` steps from ``step`` on): samples for just the
    prompts those steps need (``refresh × batch_size × grad_accum``), more when the source leaves some
    undecided, until at least that many pairs or every prompt was tried.

    Returns the labelled pairs and how many prompts were sampled. Fewer than ``batch_size`` pairs is an error:
    training on the data set's own pairs instead would silently turn the run off-policy.
    """
    need = cfg.on_policy_refresh * cfg.batch_size * cfg.grad_accum
    order = on_policy_prompt_order(len(pairs), cfg, round_index)
    out: list[PreferenceExample] = []
    tried = 0
    while len(out) < need and tried < len(order):
        chunk = [pairs[i] for i in order[tried:tried + need - len(out)]]
        out += on_policy_pairs(model, tokenizer, chunk, source, cfg, step)
        tried += len(chunk)
    if len(out) < cfg.batch_size:
        raise LldynError(f"on-policy round at step {step}: the preference source decided only {len(out)} of {tried} "
                         f"sampled pairs (identical samples, ties and unreadable judgements are dropped), fewer than "
                         f"the batch size {cfg.batch_size}", field="preference_source",
                         expected="a source that separates the policy's samples (a reward function, a stronger judge), "
                                  "a higher --on-policy-temperature or a smaller --batch-size")
    return out, tried


def on_policy_examples(run: RunDir, model: Any, tokenizer: Any, pairs: Sequence[PreferenceExample], source: Any,
                       cfg: TrainConfig, phase: Phase, encoder: Encoder, step: int,
                       global_step: int) -> tuple[list[Example], int, dict[str, float]]:
    """The encoded pairs of the on-policy round that contains phase step ``step``, its first step, and the
    metrics that describe it.

    A round starting now is sampled from the current policy and saved in the run directory (what was
    sampled and how it was labelled, for the user to read). A run resumed in the middle of a round reads
    that round's pairs back: the policy that sampled them is gone, and sampling again from the resumed
    weights would train on other pairs than the uninterrupted run.
    """
    round_index, offset = divmod(step, cfg.on_policy_refresh)
    saved = run.on_policy_round(round_index) if offset else None
    if saved is not None:
        fresh, tried = saved
    else:
        fresh, tried = on_policy_round(model, tokenizer, pairs, source, cfg, step, round_index)
        run.write_on_policy_round(round_index, fresh, global_step - offset, tried)
    where = str(run.on_policy_round_path(round_index))
    current = encode_phase_data(phase, fresh, [], encoder, where)
    check_batch(cfg, len(current), phase, where)
    return current, step - offset, {"on_policy/round": round_index, "on_policy/pairs": len(current),
                                    "on_policy/prompts_sampled": tried}
