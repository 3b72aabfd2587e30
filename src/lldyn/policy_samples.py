"""The starting policy's own samples of the probe prompts, split by the reward (issue #16, GRPO probes).

GRPO trains on the policy's own completions, so what it does to *them* is what to watch: Deng, Ren et al.
(NeurIPS 2025, arXiv 2505.18830, Sec. 3) show that the log-likelihood of correct responses can barely rise, or
fall, while the reward rises (*lazy likelihood displacement*, LLD). Per probe prompt, ``n`` completions are drawn
once from the starting model (seeded; :func:`lldyn.generation.sample`), scored by the run's reward
(:class:`lldyn.rewards.RewardFunction`, TRL's signature) and split into two probe families:

====================  =========================================================================
``sample_correct``    a draw whose reward is at least ``correct_at`` (default 1.0: the builtin
                      gold-answer reward's "states the answer")
``sample_incorrect``  a draw whose reward is below ``correct_at``
====================  =========================================================================

A draw the reward cannot score (None / NaN) is in neither family and is not kept. The draws are stored once
in the run directory (``policy_samples.jsonl``, :class:`lldyn.rundir.PolicySample`) and read back on resume,
never redrawn (:func:`policy_samples`). The tracker scores the exact sampled tokens (prompt and completion ids,
EOS included when it was generated) with the one engine at every evaluation (:mod:`lldyn.tracking`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from lldyn.config import check
from lldyn.data import PromptExample
from lldyn.errors import LldynError
from lldyn.generation import GenerationConfig, sample
from lldyn.reference_answer import Reference
from lldyn.rewards import RewardFunction, TrainerState, reward_inputs
from lldyn.rundir import PolicySample, RunDir

POLICY_SAMPLE_FAMILIES = ("sample_correct", "sample_incorrect")


@dataclass(frozen=True)
class PolicySampleConfig:
    """How the starting policy's samples are drawn.

    n: draws per probe prompt; max_new_tokens, temperature, top_p: as the GRPO run samples (TRL's
    ``max_completion_length``, ``temperature``, ``top_p``); seed: the one sampling seed (the global RNG is left
    as it was); correct_at: a draw with reward ≥ this is ``sample_correct``; template, max_prompt_tokens: how
    the prompt is encoded (the run's); batch_size: prompts generated together.
    """

    n: int = 4
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    correct_at: float = 1.0
    template: bool = True
    max_prompt_tokens: int | None = 256
    batch_size: int = 8

    def __post_init__(self) -> None:
        check(self.n > 0, "probe_samples", f"must be > 0, got {self.n}", "a positive number of samples per prompt")
        check(math.isfinite(self.correct_at), "probe_samples_correct_at", f"must be finite, got {self.correct_at}",
              "a reward value")

    def generation(self) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=True, temperature=self.temperature,
                                top_p=self.top_p, seed=self.seed, template=self.template, batch_size=self.batch_size,
                                max_prompt_tokens=self.max_prompt_tokens)


def draw_policy_samples(model: Any, tokenizer: Any, prompts: Sequence[PromptExample], reward: RewardFunction,
                        config: PolicySampleConfig = PolicySampleConfig()) -> list[PolicySample]:
    """``config.n`` samples of each prompt from ``model``, scored by ``reward`` and split into
    ``sample_correct`` / ``sample_incorrect`` (module docstring). Writes nothing.

    prompts: the probe prompts with their data fields (the gold ``answer`` for ``--reward builtin``), e.g.
        :func:`probe_prompts`. Returns rows in prompt order, then draw order (``sample`` 0..n-1); an
        unscorable draw is left out, so a prompt may have fewer than ``n`` rows.
    """
    if not prompts:
        return []
    batch = [p for p in prompts for _ in range(config.n)]
    draws = sample(model, tokenizer, [p.prompt for p in batch], config.generation())
    row_prompts, completions, kwargs = reward_inputs(batch, draws, TrainerState(0, 0))
    values = reward(row_prompts, completions, **kwargs)
    out = []
    for j, (p, s, value) in enumerate(zip(batch, draws, values)):
        if math.isnan(value):
            continue
        family = "sample_correct" if value >= config.correct_at else "sample_incorrect"
        out.append(PolicySample(p.id, j % config.n, family, p.prompt, s.text, value, s.prompt_ids, s.completion_ids,
                                s.eos, config.seed))
    return out


def policy_samples(run: RunDir | None, model: Any, tokenizer: Any, prompts: Sequence[PromptExample],
                   reward: RewardFunction, config: PolicySampleConfig = PolicySampleConfig(),
                   write: bool = True) -> list[PolicySample]:
    """The run's policy samples: read back from ``run`` when it holds them (a resumed run: never redrawn),
    otherwise drawn now (:func:`draw_policy_samples`) and, with ``write`` (the main process), stored."""
    saved = run.policy_samples() if run is not None else None
    if saved is not None:
        return saved
    rows = draw_policy_samples(model, tokenizer, prompts, reward, config)
    if run is not None and write:
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_policy_samples(rows)
    return rows


def probe_prompts(prompt_ids: Sequence[str], prompts: Sequence[PromptExample], reward: RewardFunction | None = None,
                  where: str | None = None) -> list[PromptExample]:
    """The data rows of the probe prompts ``prompt_ids`` (probes are built from the data, so a probe's
    ``prompt_id`` is its row's id), in that order. A probe prompt without a data row is refused (one line
    naming it), and so is one without a gold answer when ``reward`` needs one (``--reward builtin``).
    ``where``: the probe file, for the error."""
    by_id = {p.id: p for p in prompts}
    out = []
    for pid in prompt_ids:
        row = by_id.get(pid)
        if row is None:
            raise LldynError(f"probe prompt {pid!r} is not a row of the training data", file=where, field="prompt_id",
                             expected="probes built from the GRPO data (lldyn probes build --data <the same data>), "
                                      "or --probe-samples 0")
        out.append(row)
    if reward is not None:
        reward.check_prompts(out)
    return out


def gold_answers(prompts: Sequence[PromptExample]) -> dict[str, Reference]:
    """``prompt_id → Reference`` of the prompts that have a gold ``answer`` (the greedy y*'s accuracy)."""
    out = {}
    for p in prompts:
        ref = Reference.from_row(p.fields, p.where.file, p.where.line)
        if ref is not None:
            out[p.id] = ref
    return out


def family_counts(rows: Sequence[PolicySample]) -> Mapping[str, int]:
    """How many draws each family holds (both families always present)."""
    counts = dict.fromkeys(POLICY_SAMPLE_FAMILIES, 0)
    for r in rows:
        counts[r.family] = counts.get(r.family, 0) + 1
    return counts
