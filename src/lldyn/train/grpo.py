"""GRPO: what one optimizer step trains on (Shao et al. 2024, arXiv 2402.03300; as TRL 1.16's GRPOTrainer).

Per optimizer step, a *generation batch* of ``batch_size × grad_accum`` completions:

1. the step's prompts: P = ``batch_size × grad_accum / num_generations`` of them, in a seeded order that
   depends only on (seed, phase, epoch) (:func:`step_prompts`), as the data order of the other methods;
2. ``num_generations`` completions of each, sampled from the current policy (``temperature``, ``top_p``, up to
   ``max_completion_length`` tokens; seeded by (seed, phase, step), :func:`sampling_seed`), kept as token
   ids with EOS when it was generated (:func:`lldyn.generation.sample`);
3. their rewards (:mod:`lldyn.rewards`) and group-relative advantages over the whole generation batch
   (:func:`lldyn.losses.group_advantages`);
4. with β > 0, the reference's per-token log-probs (:func:`lldyn.train.reference.reference_token_logps`).

The step's loss is :func:`lldyn.train.steps.grpo_step` on micro-batches of ``batch_size`` completions; the
batch is saved as ``grpo/step-N.jsonl`` (:class:`lldyn.rundir.GroupCompletion`). A resumed run samples again
from the restored weights with the same seeds, so it trains on the same completions. On-policy only
(TRL's ``num_iterations = 1``): the old log-probs are the current ones, detached.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Sequence

import torch

from lldyn.data import PromptExample, load_prompts
from lldyn.errors import LldynError
from lldyn.generation import GenerationConfig, sample
from lldyn.squeeze.nthr import NTHRConfig, nthr_weights, token_features
from lldyn.losses import group_advantages
from lldyn.rewards import RewardFunction, TrainerState, load_reward, reward_inputs
from lldyn.rundir import GroupCompletion
from lldyn.scoring import EncodedPair, Encoder
from lldyn.train.batches import batch_order
from lldyn.train.config import TrainConfig, prompts_per_step
from lldyn.train.reference import reference_token_logps


class Rollout(NamedTuple):
    """One completion of a generation batch as the loss needs it: its saved row, its prompt's tokens, its name
    (``prompt_id/k``, the k-th completion of the group), with β > 0 the reference's per-token log-probs, and with
    NTHR its per-token advantage weights (:func:`with_nthr`)."""

    row: GroupCompletion
    prompt_ids: tuple[int, ...]
    id: str
    ref_token_logps: tuple[float, ...] | None = None
    token_weights: tuple[float, ...] | None = None

    @property
    def encoded(self) -> EncodedPair:
        """The exact tokens sampled (the engine's text path would append an EOS a cut completion lacks)."""
        return EncodedPair(self.prompt_ids, self.row.completion_ids)


@dataclass(frozen=True)
class Generation:
    """The generation batch of one GRPO step.

    phase_step: the phase step (0-based) it was sampled for; rollouts: its completions, groups consecutive;
    num_items: completion tokens that enter the loss (all of them, or only those of completions that reached
    EOS under ``mask_truncated_completions``): the ``dapo`` normaliser; stats: what the training row logs.
    """

    phase_step: int
    rollouts: list[Rollout]
    num_items: int
    stats: dict[str, float]

    def micro_batch(self, index: int, size: int) -> list[Rollout]:
        """Micro-batch ``index`` (``size`` completions, in order)."""
        return self.rollouts[index * size:(index + 1) * size]

    @property
    def rows(self) -> list[GroupCompletion]:
        return [r.row for r in self.rollouts]


def load_grpo_prompts(cfg: TrainConfig) -> tuple[list[PromptExample], RewardFunction]:
    """The prompts of a GRPO run and its reward, both checked before anything runs: the reward's module is
    imported, and under ``--reward builtin`` every row needs a gold answer (or ``--skip-invalid`` drops it)."""
    reward = load_reward(cfg.reward)
    prompts = load_prompts(cfg.data, cfg.split, cfg.limit, skip_invalid=cfg.skip_invalid)
    kept = reward.check_prompts(prompts, cfg.skip_invalid, warn=lambda msg: warnings.warn(f"{cfg.data}: {msg}",
                                                                                          stacklevel=2))
    return kept, reward


def encode_prompts(prompts: Sequence[PromptExample], encoder: Encoder) -> list[PromptExample]:
    """Refuse a prompt the chat template cannot encode (naming its row) before anything is written."""
    for p in prompts:
        encoder.prompt(p.prompt, p.where)
    return list(prompts)


def step_prompts(prompts: Sequence[PromptExample], cfg: TrainConfig, phase_index: int, step: int
                 ) -> list[PromptExample]:
    """The prompts of phase step ``step``: chunk ``step`` of seeded permutations, one per epoch (a pure function
    of seed, phase and step)."""
    per_step = prompts_per_step(cfg)
    epoch, within = divmod(step, len(prompts) // per_step)
    return [prompts[i] for i in batch_order(len(prompts), per_step, cfg.seed, phase_index, epoch)[within]]


def sampling_seed(cfg: TrainConfig, phase_index: int, step: int) -> int:
    """The sampling seed of phase step ``step``: a resumed run samples what the uninterrupted one did."""
    return cfg.seed * 1_000_003 + 7919 * (phase_index * 1_000_000 + step + 1)


def sample_generation(model: Any, tokenizer: Any, prompts: Sequence[PromptExample], reward: RewardFunction,
                      cfg: TrainConfig, phase_index: int, step: int, global_step: int, total: int) -> Generation:
    """Steps 1-3 of the module docstring for phase step ``step`` (optimizer step ``global_step + 1`` of a run of
    ``total``); writes nothing."""
    started = time.perf_counter()
    G = cfg.num_generations
    batch = [p for p in step_prompts(prompts, cfg, phase_index, step) for _ in range(G)]
    samples = sample(model, tokenizer, [p.prompt for p in batch], GenerationConfig(
        max_new_tokens=cfg.max_completion_length, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
        seed=sampling_seed(cfg, phase_index, step), template=cfg.template, batch_size=cfg.batch_size,
        max_prompt_tokens=cfg.max_prompt_tokens or None))
    row_prompts, completions, kwargs = reward_inputs(batch, samples, TrainerState(global_step, total))
    values = reward(row_prompts, completions, **kwargs)
    rewards = torch.tensor(values, dtype=torch.float32)
    adv = group_advantages(rewards, G, cfg.scale_rewards)
    rollouts = []
    for j, (p, s) in enumerate(zip(batch, samples)):
        row = GroupCompletion(global_step + 1, p.id, j // G, p.prompt, s.text, s.completion_ids, s.eos,
                              None if math.isnan(values[j]) else values[j], float(adv.advantages[j]))
        rollouts.append(Rollout(row, s.prompt_ids, f"{p.id}/{j % G}"))
    num_items = sum(len(s.completion_ids) for s in samples if s.eos or not cfg.mask_truncated_completions)
    stats = generation_stats(rollouts, rewards, adv.frac_reward_zero_std, len(batch) // G)
    if cfg.nthr:
        rollouts, nthr_stats = with_nthr(model, tokenizer.pad_token_id, rollouts, G,
                                         NTHRConfig(cfg.nthr_threshold, cfg.nthr_scale))
        stats.update(nthr_stats)
    stats["grpo/sampling_seconds"] = time.perf_counter() - started  # the first step's is spent before its timer
    return Generation(step, rollouts, num_items, stats)


def with_nthr(model: Any, pad_id: int, rollouts: list[Rollout], num_generations: int, config: NTHRConfig
              ) -> tuple[list[Rollout], dict[str, float]]:
    """NTHR's per-token weights (:func:`lldyn.squeeze.nthr.nthr_weights`) of every group, from the policy the completions
    were sampled from (no grad, before the update); and ``nthr/tokens_flagged``: the share of the incorrect
    completions' tokens whose penalty is scaled down, ``nthr/groups``: groups with both correct and incorrect
    completions."""
    out: list[Rollout] = []
    flagged = negative = groups = 0
    for start in range(0, len(rollouts), num_generations):
        group = rollouts[start:start + num_generations]
        advantages = [r.row.advantage for r in group]
        if not (any(a > 0 for a in advantages) and any(a < 0 for a in advantages)):
            out += group
            continue
        groups += 1
        result = nthr_weights(token_features(model, [r.encoded for r in group], pad_id), advantages, config)
        for r, w in zip(group, result.weights):
            out.append(r._replace(token_weights=tuple(float(v) for v in w)))
            if r.row.advantage < 0:
                flagged += int((w != 1.0).sum())
                negative += len(w)
    return out, {"nthr/tokens_flagged": flagged / negative if negative else 0.0, "nthr/groups": float(groups)}


def generation_stats(rollouts: Sequence[Rollout], rewards: torch.Tensor, frac_zero_std: torch.Tensor,
                     n_prompts: int) -> dict[str, float]:
    """What TRL 1.16 logs about a generation batch, under its names: ``reward`` (mean, unscorable left out),
    ``reward_std`` (Bessel), ``frac_reward_zero_std``, ``completions/*`` (lengths in tokens, EOS included;
    ``clipped_ratio`` = share cut at ``max_completion_length``); and ``grpo/prompts``, ``grpo/unscorable``
    (``grpo/sampling_seconds`` is added by :func:`sample_generation`)."""
    scored = rewards[~torch.isnan(rewards)]
    lengths = [r.row.n_tokens for r in rollouts]
    ended = [r.row.n_tokens for r in rollouts if r.row.eos]
    return {
        "reward": float(scored.mean()),
        "reward_std": float(scored.std()) if scored.numel() > 1 else math.nan,
        "frac_reward_zero_std": float(frac_zero_std),
        "completions/mean_length": sum(lengths) / len(lengths),
        "completions/min_length": float(min(lengths)),
        "completions/max_length": float(max(lengths)),
        "completions/clipped_ratio": 1.0 - len(ended) / len(lengths),
        "completions/mean_terminated_length": sum(ended) / len(ended) if ended else 0.0,
        "grpo/prompts": float(n_prompts),
        "grpo/unscorable": float(len(rewards) - scored.numel()),
    }


def with_reference(generation: Generation, ref_model: Any, pad_id: int, cfg: TrainConfig) -> Generation:
    """Step 4: the reference's per-token log-probs of every completion (β > 0 only; the generation as it is
    otherwise)."""
    if cfg.beta == 0.0 or ref_model is None:
        return generation
    ref = reference_token_logps(ref_model, [r.encoded for r in generation.rollouts], pad_id, cfg)
    if any(len(v) != r.row.n_tokens for v, r in zip(ref, generation.rollouts)):
        raise LldynError("the reference scored other tokens than the completions", field="ref",
                         expected="a reference with the policy's tokenizer")
    return replace(generation, rollouts=[r._replace(ref_token_logps=v) for r, v in zip(generation.rollouts, ref)])
