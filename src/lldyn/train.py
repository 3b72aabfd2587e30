"""Finetuning that can be watched: SFT, off-/on-policy DPO, IPO, SLiC, SimPO, and the paper's *extend*.

One flat loop (:func:`train`) runs a list of **phases**; a phase is either SFT-like (one response
per example, loss :func:`lldyn.losses.sft_loss`) or pairwise (chosen and rejected, a preference
loss from :mod:`lldyn.losses`). Methods are phase lists:

==========  ================================================================================
sft         SFT on (x, y+)
dpo …       one pairwise phase (dpo, ipo, slic, simpo); reference = the starting model
sft_dpo     SFT on (x, y+), then DPO with the SFT model as reference (the usual pipeline)
extend      SFT on (x, y+) *and* (x, y−), then DPO with that model as reference (paper Sec. 4.3)
==========  ================================================================================

Log-probabilities come from the one engine (:func:`lldyn.scoring.sequence_logps` for the
differentiable training forward; :func:`lldyn.scoring.score` for the reference). For off-policy
pairwise phases the reference log-probs are computed once at the start of the phase and kept in
the run directory (``ref_logps-<phase>.jsonl``), so no second model sits in memory; on-policy DPO
keeps a frozen copy (with LoRA, the policy with its adapter disabled) because its responses change.

Every optimizer step: metrics row (``event: train``), optional decomposition hook, tracker
(probes every ``eval_every`` steps), checkpoint every ``checkpoint_every`` steps and at the end of
each phase. ``resume=True`` continues from the latest checkpoint and gives the same numbers as an
uninterrupted run on the CPU (data order is a pure function of seed, phase and epoch; RNG,
optimizer and scheduler states are restored; rows logged after the checkpoint are dropped).

Under ``accelerate launch --num_processes W`` the same loop does data parallelism (:class:`Processes`):
every rank holds the whole model and takes rows ``rank::W`` of each micro-batch (``batch_size`` stays
the global micro-batch), gradients and logged statistics are averaged over ranks, so the run gives
the numbers of a one-process run; rank 0 alone writes the run directory. With one process nothing is
wrapped or reduced.
"""
from __future__ import annotations

import copy
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch

from lldyn.config import check, config_to_dict
from lldyn.data import PreferenceExample, SFTExample, load_preferences, load_sft, sft_from_preferences
from lldyn.decompose.llm import UpdateTerm
from lldyn.errors import LldynError
from lldyn.io import atomic_write_jsonl, read_jsonl
from lldyn.losses import PREFERENCE_LOSSES, preference_loss, sft_loss
from lldyn.rundir import RunDir
from lldyn.scoring import (Encoder, EncodedPair, ScoreConfig, ScoreRequest, collate, score, sequence_logps,
                           shared_prompt_logps)

METHODS = ("sft", "dpo", "ipo", "slic", "simpo", "extend", "sft_dpo")
OPTIMIZERS = ("adamw", "rmsprop", "sgd")
SCHEDULERS = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; written resolved to ``config.json``.

    Length of a phase: ``steps`` optimizer steps if given, else ``epochs`` passes over the data.
    The first (SFT) phase of ``extend``/``sft_dpo`` uses ``sft_steps``/``sft_epochs``/``sft_lr``.
    ``max_grad_norm`` 0 turns clipping off. ``eval_every`` 0 turns probe tracking off even with
    ``probes``; ``checkpoint_every`` 0 checkpoints only at phase ends.
    """

    method: str = "dpo"
    model: str = "smollm2-135m-instruct"
    data: str = "builtin:train"
    split: str = "train"
    limit: int | None = None
    skip_invalid: bool = False
    probes: str | None = None
    out: str = "runs/run"
    ref: str | None = None
    steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 5e-6
    warmup_steps: int = 0
    scheduler: str = "constant"
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    momentum: float = 0.0
    max_grad_norm: float = 10.0
    beta: float = 0.1
    simpo_gamma: float = 0.5
    sft_per_token: bool = False
    template: bool = True
    max_length: int = 512
    max_prompt_tokens: int | None = 256
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    lora_r: int = 0
    lora_alpha: int = 16
    eval_every: int = 20
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    sft_steps: int | None = None
    sft_epochs: float = 1.0
    sft_lr: float | None = None
    on_policy: bool = False
    preference_source: str | None = None
    base_url: str | None = None
    on_policy_refresh: int = 1
    on_policy_max_new_tokens: int = 48
    on_policy_temperature: float = 1.0
    decompose_every: int = 0
    initial_sample: bool = True
    squeeze_alarm: bool = True

    def __post_init__(self) -> None:
        check(self.method in METHODS, "method", f"unknown method {self.method!r}", "one of " + ", ".join(METHODS))
        check(self.optimizer in OPTIMIZERS, "optimizer", f"unknown optimizer {self.optimizer!r}",
              "one of " + ", ".join(OPTIMIZERS))
        check(self.scheduler in SCHEDULERS, "scheduler", f"unknown scheduler {self.scheduler!r}",
              "one of " + ", ".join(SCHEDULERS))
        check(self.lr > 0, "lr", f"learning rate must be > 0, got {self.lr}", "a positive number")
        check(self.sft_lr is None or self.sft_lr > 0, "sft_lr", f"must be > 0, got {self.sft_lr}", "a positive number")
        check(self.beta > 0, "beta", f"beta must be > 0, got {self.beta}", "a positive number such as 0.1")
        check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}", "a positive integer")
        check(self.grad_accum > 0, "grad_accum", f"must be > 0, got {self.grad_accum}", "a positive integer")
        check(self.steps is None or self.steps > 0, "steps", f"must be > 0, got {self.steps}", "a positive integer")
        check(self.sft_steps is None or self.sft_steps > 0, "sft_steps", f"must be > 0, got {self.sft_steps}",
              "a positive integer")
        check(self.epochs > 0 and self.sft_epochs > 0, "epochs", "epochs must be > 0", "a positive number")
        check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}", "an integer >= 0")
        check(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0, got {self.max_grad_norm}", "0 (off) or > 0")
        check(self.eval_every >= 0 and self.checkpoint_every >= 0 and self.decompose_every >= 0, "eval_every",
              "schedules must be >= 0", "0 (off) or a number of steps")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}", ">= 1")
        check(self.max_length > 1, "max_length", f"must be > 1, got {self.max_length}", "an integer > 1")
        check(self.max_prompt_tokens is None or 0 <= self.max_prompt_tokens < self.max_length, "max_prompt_tokens",
              f"must be in [0, max_length={self.max_length}), got {self.max_prompt_tokens}",
              "fewer prompt tokens than max_length (0 = no separate prompt cap)")
        check(self.on_policy_refresh >= 1, "on_policy_refresh", "must be >= 1", "a positive number of steps")
        if self.on_policy:
            check(self.method in ("dpo", "ipo", "slic"), "on_policy",
                  f"on-policy sampling needs a reference-based pairwise method, not {self.method!r}",
                  "method dpo, ipo or slic")
            check(bool(self.preference_source), "preference_source", "on-policy training needs a preference source",
                  "hf:MODEL, openai:MODEL or module:function")

    def scoring(self) -> ScoreConfig:
        """The engine's tokenisation for this run (``max_prompt_tokens`` 0 or None: no separate prompt cap)."""
        return ScoreConfig(template=self.template, max_length=self.max_length,
                           max_prompt_tokens=self.max_prompt_tokens or None)


class Phase(NamedTuple):
    """One stage of a method: ``kind`` 'sft' or a preference loss name; ``include_rejected`` for extend's SFT."""

    name: str
    kind: str
    steps: int | None
    epochs: float
    lr: float
    include_rejected: bool = False


def phases(cfg: TrainConfig) -> list[Phase]:
    """The phase list of ``cfg.method`` (see the module docstring)."""
    main = Phase(cfg.method, cfg.method, cfg.steps, cfg.epochs, cfg.lr)
    if cfg.method == "sft":
        return [main]
    if cfg.method in PREFERENCE_LOSSES:
        return [main]
    first = Phase("sft", "sft", cfg.sft_steps, cfg.sft_epochs, cfg.sft_lr or cfg.lr,
                  include_rejected=cfg.method == "extend")
    return [first, Phase("dpo", "dpo", cfg.steps, cfg.epochs, cfg.lr)]


# --------------------------------------------------------------------------- data


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
    """Preference pairs (empty for SFT-only files) and SFT examples (y+ of the pairs, or an SFT file)."""
    try:
        pairs = load_preferences(cfg.data, cfg.split, cfg.limit, skip_invalid=cfg.skip_invalid)
    except LldynError as err:
        if cfg.method != "sft" or not (err.field == "chosen" and err.message == "missing field"):
            raise
        return [], load_sft(cfg.data, cfg.split, cfg.limit, skip_invalid=cfg.skip_invalid)
    return pairs, sft_from_preferences(pairs)


def encode_phase_data(phase: Phase, pairs: Sequence[PreferenceExample], sft: Sequence[SFTExample],
                      encoder: Encoder, data_name: str) -> list[Example]:
    """Encode the examples one phase trains on; empty responses after truncation are refused."""
    out: list[Example] = []
    if phase.kind == "sft":
        items = sft_from_preferences(pairs, phase.include_rejected) if pairs else list(sft)
        for ex in items:
            enc = encoder.pair(ex.prompt, ex.response, ex.where)
            out.append(Example(ex.id, ex.prompt, ex.response, None, enc, None))
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
        import warnings

        warnings.warn(f"{data_name}: {len(out) - len(usable)} of {len(out)} pairs skipped: chosen and rejected are "
                      f"identical after truncation (max_length)", stacklevel=2)
    return usable


def batch_order(n_examples: int, batch_size: int, seed: int, phase_index: int, epoch: int) -> list[list[int]]:
    """The micro-batches of one epoch: a permutation that depends only on (seed, phase, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + phase_index * 1009 + epoch)
    perm = torch.randperm(n_examples, generator=g).tolist()
    return [perm[i:i + batch_size] for i in range(0, n_examples - batch_size + 1, batch_size)]


def phase_length(phase: Phase, n_examples: int, cfg: TrainConfig) -> int:
    """Number of optimizer steps of ``phase``."""
    if phase.steps is not None:
        return phase.steps
    per_epoch = (n_examples // cfg.batch_size) / cfg.grad_accum
    return max(1, int(math.floor(per_epoch * phase.epochs)))


def micro_batch(examples: Sequence[Example], cfg: TrainConfig, phase_index: int, index: int) -> list[Example]:
    """The ``index``-th micro-batch of a phase (epochs follow each other; a pure function of its inputs)."""
    per_epoch = len(examples) // cfg.batch_size
    epoch, within = divmod(index, per_epoch)
    rows = batch_order(len(examples), cfg.batch_size, cfg.seed, phase_index, epoch)[within]
    return [examples[i] for i in rows]


# --------------------------------------------------------------------------- optimizer


def make_optimizer(params: Sequence[torch.nn.Parameter], cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW, RMSprop (the paper's choice) or SGD from torch.

    AdamW and SGD use torch's fused kernels where every parameter allows them (floating point, on
    CPU or CUDA): on SmolLM2 the fused AdamW update takes ~0.2 s on this 2-core CPU against ~1.1 s
    for the default one, a third of a training step. RMSprop has no fused kernel in torch.
    """
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) or None
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    return torch.optim.SGD(params, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, fused=fused)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """transformers' schedulers with warm-up: constant, linear or cosine decay to 0."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if cfg.scheduler == "constant" else cfg.scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)


# --------------------------------------------------------------------------- losses of one micro-batch


@dataclass
class StepOutput:
    loss: torch.Tensor
    stats: dict[str, float]
    terms: list[UpdateTerm]


def sft_step(model: Any, batch: Sequence[Example], pad_id: int, cfg: TrainConfig, scale: float) -> StepOutput:
    """Mean SFT loss of a micro-batch; ``scale`` = 1 / grad_accum."""
    tb = collate([e.chosen_ids for e in batch], pad_id).to(cfg.device)
    st = sequence_logps(model, tb)
    out = sft_loss(st.logps, st.n_tokens, per_token=cfg.sft_per_token)
    n = len(batch)
    terms = [UpdateTerm(e.id, "response", e.prompt, e.chosen, float(out.coef[i]) * scale / n) for i, e in enumerate(batch)]
    stats = {"loss": out.loss.item(), "chosen_logp": st.logps.mean().item(),
             "chosen_mean_logp": (st.logps / st.n_tokens).mean().item()}
    return StepOutput(out.loss * scale, stats, terms)


def pair_step(model: Any, batch: Sequence[Example], pad_id: int, cfg: TrainConfig, kind: str,
              ref: dict[str, tuple[float, float]] | None, scale: float) -> StepOutput:
    """Mean preference loss of a micro-batch: chosen and rejected in one forward pass."""
    n = len(batch)
    encoded = [e.chosen_ids for e in batch] + [e.rejected_ids for e in batch]
    # y+ and y− share their prompt: it runs forward (and backward) once, not twice
    st = shared_prompt_logps(model, encoded, pad_id) if cfg.scoring().prefix_sharing else None  # type: ignore[arg-type]
    if st is None:
        st = sequence_logps(model, collate(encoded, pad_id).to(cfg.device))  # type: ignore[arg-type]
    logps, lens = st.logps, st.n_tokens
    ref_c = ref_r = None
    if kind != "simpo":
        assert ref is not None
        ref_c = torch.tensor([ref[e.id][0] for e in batch], dtype=logps.dtype, device=logps.device)
        ref_r = torch.tensor([ref[e.id][1] for e in batch], dtype=logps.dtype, device=logps.device)
    out = preference_loss(kind, logps[:n], logps[n:], ref_c, ref_r, lens[:n], lens[n:], cfg.beta, cfg.simpo_gamma)
    terms = []
    for i, e in enumerate(batch):
        terms.append(UpdateTerm(e.id, "chosen", e.prompt, e.chosen, float(out.chosen_coef[i]) * scale / n))
        terms.append(UpdateTerm(e.id, "rejected", e.prompt, e.rejected or "", float(out.rejected_coef[i]) * scale / n))
    stats = {"loss": out.loss.item(), "chosen_logp": logps[:n].mean().item(), "rejected_logp": logps[n:].mean().item(),
             "margin": float(out.margin.mean()), "reward_acc": float(out.reward_accuracy),
             "chosen_reward": float(out.chosen_rewards.mean()), "rejected_reward": float(out.rejected_rewards.mean())}
    return StepOutput(out.loss * scale, stats, terms)


# --------------------------------------------------------------------------- reference log-probs


class AdapterDisabled(NamedTuple):
    """The reference of an on-policy LoRA run: the policy itself with its adapter switched off, which is the
    starting model (a fresh LoRA adapter starts at zero) without a second copy in memory."""

    model: Any


def reference_logps(model: Any, tokenizer: Any, examples: Sequence[Example], cfg: TrainConfig
                    ) -> dict[str, tuple[float, float]]:
    """log π_ref(y+), log π_ref(y−) of every pair with the engine (no grad, prefix shared)."""
    if isinstance(model, AdapterDisabled):
        with model.model.disable_adapter():
            return reference_logps(model.model, tokenizer, examples, cfg)
    reqs = []
    for e in examples:
        reqs += [ScoreRequest(e.prompt, e.chosen), ScoreRequest(e.prompt, e.rejected or "")]
    res = score(model, tokenizer, reqs, cfg.scoring())
    return {e.id: (res[2 * i].logp, res[2 * i + 1].logp) for i, e in enumerate(examples)}


def _ref_file(run: RunDir, phase_index: int) -> Path:
    return run.path / f"ref_logps-{phase_index}.jsonl"


def load_or_compute_reference(run: RunDir | None, phase_index: int, ref_model: Any, tokenizer: Any,
                              examples: Sequence[Example], cfg: TrainConfig) -> dict[str, tuple[float, float]]:
    """Reference log-probs of a phase, kept in the run directory so a resumed run uses the same ones."""
    path = _ref_file(run, phase_index) if run is not None else None
    if path is not None and path.is_file():
        rows = {r["id"]: (r["chosen"], r["rejected"]) for r in read_jsonl(path)}
        if all(e.id in rows for e in examples):
            return rows
    ref = reference_logps(ref_model, tokenizer, examples, cfg)
    if path is not None:
        atomic_write_jsonl(path, [{"id": k, "chosen": c, "rejected": r} for k, (c, r) in ref.items()])
    return ref


# --------------------------------------------------------------------------- on-policy pairs


def on_policy_prompt_order(n_prompts: int, cfg: TrainConfig, round_index: int) -> list[int]:
    """The prompts of on-policy sampling round ``round_index``, in the order they are tried: a seeded
    permutation of all of them (a pure function of its inputs, so a resumed run tries the same ones)."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7919 * (round_index + 1))
    return torch.randperm(n_prompts, generator=g).tolist()


def on_policy_round(model: Any, tokenizer: Any, pairs: Sequence[PreferenceExample], source: Any, cfg: TrainConfig,
                    step: int, round_index: int) -> tuple[list[PreferenceExample], int]:
    """The pairs of one on-policy round (the ``on_policy_refresh`` steps from ``step`` on): two samples from
    the current policy for just the prompts those steps need (``refresh × batch_size × grad_accum``), more
    when the source leaves some undecided, until at least that many pairs or every prompt was tried.

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


def on_policy_pairs(model: Any, tokenizer: Any, pairs: Sequence[PreferenceExample], source: Any, cfg: TrainConfig,
                    step: int) -> list[PreferenceExample]:
    """Two samples per prompt from the current policy, labelled by ``source.prefer`` (unlabelled prompts dropped)."""
    from lldyn.generation import GenerationConfig, generate

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


ON_POLICY_DIR = "on_policy"


def on_policy_examples(run: RunDir, model: Any, tokenizer: Any, pairs: Sequence[PreferenceExample], source: Any,
                       cfg: TrainConfig, phase: Phase, encoder: Encoder, step: int,
                       global_step: int) -> tuple[list[Example], int, dict[str, float]]:
    """The encoded pairs of the on-policy round that contains phase step ``step``, its first step, and the
    metrics that describe it.

    A round starting now is sampled from the current policy and saved to ``RUN/on_policy/round-NNNNNN.jsonl``
    (what was sampled and how it was labelled, for the user to read). A run resumed in the middle of a round
    reads that round's pairs back: the policy that sampled them is gone, and sampling again from the resumed
    weights would train on other pairs than the uninterrupted run.
    """
    from lldyn.data import parse_preference_row, read_rows
    from lldyn.io import atomic_write_jsonl

    round_index, offset = divmod(step, cfg.on_policy_refresh)
    path = run.path / ON_POLICY_DIR / f"round-{round_index:06d}.jsonl"
    if offset and path.is_file():
        rows = list(read_rows(path))
        fresh = [parse_preference_row(row, where, i, "on_policy") for i, (row, where) in enumerate(rows)]
        tried = int(rows[0][0].get("prompts_sampled", len(fresh))) if rows else 0
    else:
        fresh, tried = on_policy_round(model, tokenizer, pairs, source, cfg, step, round_index)
        atomic_write_jsonl(path, [{"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                                   "round": round_index, "sampled_at_step": global_step - offset,
                                   "prompts_sampled": tried} for p in fresh])
    current = encode_phase_data(phase, fresh, [], encoder, str(path))
    _check_batch(cfg, len(current), phase, str(path))
    return current, step - offset, {"on_policy/round": round_index, "on_policy/pairs": len(current),
                                    "on_policy/prompts_sampled": tried}


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Processes:
    """The processes a run trains on: one (the default: every method below does nothing) or the ranks
    ``0 … world-1`` that ``accelerate launch`` started, for data parallelism.

    Each rank takes rows ``rank::world`` of every micro-batch and its loss is the mean over its rows;
    :meth:`average_gradients` then makes the update the one of the whole micro-batch (what DDP does,
    without wrapping the model, so checkpoints, probes and generation use the model as it is).
    """

    rank: int = 0
    world: int = 1
    device: str = "cpu"  # where collectives put their tensors (NCCL needs this rank's GPU)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that writes to the run directory."""
        return self.rank == 0

    def shard(self, batch: Sequence[Example]) -> list[Example]:
        """This rank's rows of a micro-batch."""
        return list(batch[self.rank::self.world])

    def wait(self) -> None:
        """Barrier: returns once every rank got here."""
        if self.world > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order (the tracker's ``gather``; accelerate flattens one level, hence ``[obj]``)."""
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return list(gather_object([obj]))

    def from_main(self, compute: Callable[[], Any]) -> Any:
        """``compute()`` run on rank 0 (the others wait) and its value sent to every rank, so all hold the very
        same one; an :class:`LldynError` it raises is raised on every rank (one clear error, not a hang)."""
        if self.world == 1:
            return compute()
        from accelerate.utils import broadcast_object_list

        value = None
        if self.is_main:
            try:
                value = compute()
            except LldynError as err:
                value = err
        value = broadcast_object_list([value])[0]
        if isinstance(value, LldynError):
            raise value
        return value

    def mean(self, stats: dict[str, float]) -> dict[str, float]:
        """Each statistic averaged over ranks: the whole micro-batch's mean, as every rank has as many rows."""
        if self.world == 1:
            return stats
        from accelerate.utils import reduce

        values = reduce(torch.tensor(list(stats.values()), dtype=torch.float64, device=self.device), "mean")
        return dict(zip(stats, values.tolist()))

    def all_finite(self, loss: torch.Tensor) -> bool:
        """Whether ``loss`` is finite on every rank (so that all ranks stop together, or none does)."""
        if self.world == 1:
            return bool(torch.isfinite(loss))
        from accelerate.utils import reduce

        bad = reduce((~torch.isfinite(loss.detach())).reshape(1).to(torch.float64), "sum")
        return float(bad) == 0

    def average_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over ranks, in place. Which parameters have a gradient
        depends on the model, not on the rows, so every rank skips the same ones."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(self.world)

    def same_start(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Rank 0's starting weights on every rank (seeded loading makes them equal already; this guarantees it)."""
        if self.world > 1:
            from accelerate.utils import broadcast

            broadcast([p.data for p in params])


def launched_processes(cfg: TrainConfig, decomposer: Any = None) -> Processes:
    """The processes ``accelerate launch`` (or ``torchrun``) started, from ``WORLD_SIZE``; one otherwise.

    accelerate sets up the process group: gloo for ``--device cpu``, NCCL for ``--device cuda``
    (each rank on its own GPU). What a multi-process run refuses is refused here, before any rank
    waits on another or anything is written.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes()
    check(cfg.batch_size % world == 0, "batch_size",
          f"batch size {cfg.batch_size} does not split evenly over {world} processes",
          f"a multiple of {world} (--batch-size is the global micro-batch; each process takes batch_size / {world} rows)")
    check(not cfg.on_policy, "on_policy", f"on-policy sampling is single-process only, got {world} processes",
          "a run without accelerate launch for --on-policy")
    check(cfg.decompose_every == 0 and decomposer is None, "decompose_every",
          f"the step decomposition is single-process only, got {world} processes",
          "--decompose-every 0, or a run without accelerate launch")
    check(cfg.device in ("cpu", "cuda"), "device", f"device {cfg.device!r} would put every process on one device",
          "cpu, or cuda (each process then uses its own GPU)")
    from accelerate import PartialState

    state = PartialState(cpu=cfg.device == "cpu")
    return Processes(state.process_index, state.num_processes, str(state.device))


# --------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    run: RunDir
    model: Any
    tokenizer: Any
    steps: int
    last_summary: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)


def _model_config(cfg: TrainConfig, name: str | None = None):
    from lldyn.models import ModelConfig

    return ModelConfig(name=name or cfg.model, dtype=cfg.dtype, device=cfg.device,
                       trust_remote_code=cfg.trust_remote_code, seed=cfg.seed, lora_r=cfg.lora_r,
                       lora_alpha=cfg.lora_alpha)


def run_config(cfg: TrainConfig) -> dict[str, Any]:
    """The resolved config written to ``config.json`` (no secrets: keys live only in the environment, and
    an endpoint URL is written without user info or query, where a pasted token would sit)."""
    import lldyn
    from lldyn.endpoint import public_url

    values = config_to_dict(cfg)
    if values.get("base_url"):
        values["base_url"] = public_url(values["base_url"])
    return {"kind": "train", "lldyn_version": lldyn.__version__, **values}


def _check_batch(cfg: TrainConfig, n: int, phase: Phase, data: str) -> None:
    if cfg.batch_size > n:
        raise LldynError(f"batch size {cfg.batch_size} is larger than the {n} usable examples of phase {phase.name!r}",
                         file=data, field="batch_size", expected=f"--batch-size <= {n}")


def train(cfg: TrainConfig, resume: bool = False, decomposer: Any = None,
          callbacks: Sequence[Callable] = (), progress: bool = True) -> TrainResult:
    """Run ``cfg`` into the run directory ``cfg.out`` (see the module docstring)."""
    from lldyn.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    # Everything that can be refused is checked before anything is written.
    procs = launched_processes(cfg, decomposer)
    pairs, sft = load_training_data(cfg)
    plan = phases(cfg)
    if any(p.kind != "sft" for p in plan) and not pairs:
        raise LldynError("preference methods need pairs with chosen and rejected", file=cfg.data, field="chosen")
    source = None
    if cfg.on_policy:
        from lldyn.judge import load_preference_source

        source = load_preference_source(cfg.preference_source, base_url=cfg.base_url,
                                        trust_remote_code=cfg.trust_remote_code)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    lm = load_start_model(cfg)
    model, tokenizer = lm.model, lm.tokenizer
    pad_id = tokenizer.pad_token_id
    encoder = Encoder(tokenizer, cfg.scoring())
    phase_data = [encode_phase_data(phase, pairs, sft, encoder, cfg.data) for phase in plan]
    for phase, examples in zip(plan, phase_data):
        _check_batch(cfg, len(examples), phase, cfg.data)
    if cfg.ref is not None and not is_run_dir(cfg.ref):
        from lldyn.models import check_model_name

        check_model_name(cfg.ref)  # a bad --ref is refused before anything is written
    params = [p for p in model.parameters() if p.requires_grad]
    procs.same_start(params)
    run = procs.from_main(lambda: RunDir.create(cfg.out, run_config(cfg), resume=resume))

    if decomposer is None and cfg.decompose_every > 0:
        if not cfg.probes:
            raise LldynError("decomposition needs probes", field="decompose_every", expected="--probes FILE")
        from lldyn.decompose.llm import DecomposeConfig, StepDecomposer
        from lldyn.probes import ProbeSet

        decomposer = StepDecomposer(tokenizer, ProbeSet.coerce(cfg.probes), run,
                                    DecomposeConfig(score=cfg.scoring(), every=cfg.decompose_every))
    tracker = None
    if cfg.probes and cfg.eval_every > 0:
        from lldyn.tracking import Tracker

        all_callbacks = list(callbacks)
        if cfg.squeeze_alarm and any(p.kind != "sft" for p in plan):
            from lldyn.squeeze import squeeze_alarm

            # measured from the start of the preference phase (after SFT in sft_dpo / extend)
            first = next(i for i, p in enumerate(plan) if p.kind != "sft")
            all_callbacks.append(squeeze_alarm(from_step=sum(
                phase_length(p, len(d), cfg) for p, d in zip(plan[:first], phase_data[:first]))))
        tracker = Tracker(model, tokenizer, cfg.probes, run, every=cfg.eval_every, score_config=cfg.scoring(),
                          callbacks=all_callbacks, initial_sample=cfg.initial_sample,
                          progress=False, rank=procs.rank, world_size=procs.world, gather=procs.gather)

    start_phase, start_step, global_step = 0, 0, 0
    ckpt = latest_checkpoint(run.checkpoints) if resume else None
    restart = resume and ckpt is None and run.has_metrics()  # killed before the first checkpoint: start over cleanly
    procs.wait()  # every rank has read the run directory (tracker history, checkpoints) before rank 0 rewrites it
    if restart:
        if procs.is_main:
            run.truncate_after(-1)
        if tracker is not None:
            tracker.rewind(-1)
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, restore_rng=False)
        start_phase, start_step, global_step = state["phase"], state["phase_step"], state["step"]
        if procs.is_main:
            run.truncate_after(global_step)
        if tracker is not None:
            tracker.rewind(global_step)

    last_summary = None
    for pi, phase in enumerate(plan):
        if pi < start_phase:
            continue
        examples = phase_data[pi]
        total = phase_length(phase, len(examples), cfg)
        optimizer = make_optimizer(params, cfg, phase.lr)
        scheduler = make_scheduler(optimizer, cfg, total)
        step = 0
        if ckpt is not None and pi == start_phase:
            if start_step >= total:  # the checkpoint closed this phase; a kill may have come before its last evaluation
                last_summary = _track_phase_end(tracker, model, global_step) or last_summary
                continue
            load_checkpoint(ckpt, model, optimizer, scheduler, restore_rng=True)
            step = start_step
        ref_values = None
        ref_model = None
        if phase.kind not in ("sft", "simpo"):
            ref_model = _reference_model(cfg, model, lm, pi, plan, resumed=step > 0)
            if not cfg.on_policy:  # rank 0 reads or computes (and writes) them; every rank gets the same values
                ref_values = procs.from_main(
                    lambda: load_or_compute_reference(run, pi, ref_model, tokenizer, examples, cfg))
                if ref_model is not model and cfg.ref is not None:
                    ref_model = None
        if tracker is not None and global_step == 0:
            last_summary = tracker.maybe_track(0) or last_summary

        model.train()
        bar = _progress(total, step, f"{phase.name}", progress and procs.is_main)
        current, round_start, round_info = examples, 0, {}
        while step < total:
            t0 = time.perf_counter()
            if cfg.on_policy and (step % cfg.on_policy_refresh == 0 or current is examples):
                current, round_start, round_info = on_policy_examples(run, model, tokenizer, pairs, source, cfg, phase,
                                                                      encoder, step, global_step)
                ref_values = reference_logps(ref_model, tokenizer, current, cfg)
                model.train()
            optimizer.zero_grad(set_to_none=True)
            agg: dict[str, float] = {}
            terms: list[UpdateTerm] = []
            for k in range(cfg.grad_accum):
                index = (step - round_start) * cfg.grad_accum + k  # within the on-policy round (0 off-policy)
                batch = procs.shard(micro_batch(current, cfg, pi, index))
                if phase.kind == "sft":
                    out = sft_step(model, batch, pad_id, cfg, 1.0 / cfg.grad_accum)
                else:
                    out = pair_step(model, batch, pad_id, cfg, phase.kind, ref_values, 1.0 / cfg.grad_accum)
                if not procs.all_finite(out.loss):
                    _stop_non_finite(run, model, optimizer, scheduler, pi, step, global_step, procs.mean(out.stats),
                                     cfg, procs)
                out.loss.backward()
                terms += out.terms
                for key, v in out.stats.items():
                    agg[key] = agg.get(key, 0.0) + v / cfg.grad_accum
            procs.average_gradients(params)
            agg = procs.mean(agg)
            if cfg.max_grad_norm > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            else:
                grad_norm = float(torch.linalg.vector_norm(torch.stack(
                    [p.grad.norm() for p in params if p.grad is not None])))
            if not math.isfinite(grad_norm):
                _stop_non_finite(run, model, optimizer, scheduler, pi, step, global_step, {"grad_norm": grad_norm}, cfg,
                                 procs)
            decompose_now = decomposer is not None and (global_step + 1) % (cfg.decompose_every or 1) == 0
            if decompose_now:
                decomposer.before_step(global_step + 1, model, terms, optimizer)
            lr_now = optimizer.param_groups[0]["lr"]
            optimizer.step()
            # before the scheduler moves the learning rate on: the decomposer reads this step's lr
            extra = decomposer.after_step(global_step + 1, model, optimizer) if decompose_now else None
            scheduler.step()
            step += 1
            global_step += 1
            row = {"step": global_step, "event": "train", "phase": phase.name, "phase_step": step, **agg,
                   "lr": lr_now, "grad_norm": grad_norm, "seconds": time.perf_counter() - t0, **round_info,
                   **(extra or {})}
            if procs.is_main:
                run.log_metrics(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{agg['loss']:.4f}")
            if tracker is not None and tracker.should_track(global_step):
                model.eval()
                last_summary = tracker.track(global_step)
                model.train()
            if step == total or (cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0):
                if not weights_finite(params):  # a step overflowed them with a finite loss: never saved
                    _stop_non_finite(run, model, optimizer, scheduler, pi, step - 1, global_step - 1,
                                     {"weights": math.nan}, cfg, procs)
                procs.from_main(lambda: save_checkpoint(run.checkpoints, global_step, model, optimizer, scheduler,
                                                        {"phase": pi, "phase_step": step, "phase_name": phase.name},
                                                        keep=cfg.keep_checkpoints))
        if bar is not None:
            bar.close()
        last_summary = _track_phase_end(tracker, model, global_step) or last_summary
        model.eval()
        del ref_model
    procs.wait()  # no rank leaves (and tears down the process group) while rank 0 still writes
    return TrainResult(run, model, tokenizer, global_step, last_summary or (tracker.history[-1] if tracker and tracker.history else None))


def _track_phase_end(tracker: Any, model: Any, global_step: int) -> Any:
    """Evaluate the probes at the end of a phase unless that step was evaluated already (None then)."""
    if tracker is None or any(h.step == global_step for h in tracker.history):
        return None
    model.eval()
    return tracker.track(global_step)


def is_run_dir(path: str | Path) -> bool:
    """A directory ``lldyn train`` wrote into (``config.json`` and ``checkpoints/``)."""
    return (Path(path) / "config.json").is_file() and (Path(path) / "checkpoints").is_dir()


def is_checkpoint_dir(path: str | Path) -> bool:
    """``RUN/checkpoints/step-XXXXXXXX`` of a run directory."""
    path = Path(path)
    return path.is_dir() and path.parent.name == "checkpoints" and is_run_dir(path.parent.parent)


def load_model_or_run(spec: str | Path, trust_remote_code: bool = False):
    """A model spec (alias, .gguf, model directory, Hub id), an lldyn run directory (its latest checkpoint)
    or one checkpoint of a run (``RUN/checkpoints/step-XXXXXXXX``, e.g. the end of a run's SFT phase)
    → LoadedModel. ``trust_remote_code``: the caller's flag (``--trust-remote-code``), for runs too."""
    if is_checkpoint_dir(spec):
        return load_run_model(Path(spec).parent.parent, spec, trust_remote_code=trust_remote_code)
    if is_run_dir(spec) or (Path(spec) / "metrics.jsonl").is_file():  # a run without checkpoints: a clear error
        return load_run_model(spec, trust_remote_code=trust_remote_code)
    from lldyn.models import ModelConfig, load_model

    return load_model(ModelConfig(name=str(spec), trust_remote_code=trust_remote_code))


def load_start_model(cfg: TrainConfig):
    """The model to finetune: ``cfg.model`` as a model spec, or the final model of an earlier run directory
    (so SFT → DPO can be two runs; a LoRA adapter of the earlier run is merged first)."""
    from lldyn.models import add_lora, load_model

    if not is_run_dir(cfg.model):
        return load_model(_model_config(cfg))
    lm = load_run_model(cfg.model, trust_remote_code=cfg.trust_remote_code)
    model = lm.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if cfg.lora_r > 0:
        model = add_lora(model, _model_config(cfg))
    lm.model = model
    return lm


def _reference_model(cfg: TrainConfig, model: Any, lm: Any, phase_index: int, plan: Sequence[Phase],
                     resumed: bool = False) -> Any:
    """The DPO reference: ``--ref`` if given, else the model as it is at the start of this phase.

    Off-policy, the reference is only needed for the log-probs computed right now, so the policy
    itself serves (no copy). On-policy it must stay frozen: with LoRA, the policy with its adapter
    disabled (:class:`AdapterDisabled`, no copy); otherwise a frozen deep copy — or, when the run
    was ``resumed`` in the middle of the phase (the policy already moved), the starting model loaded
    again (on-policy runs are single-phase, so the phase starts from the starting model).
    """
    from lldyn.models import load_model

    if cfg.ref is not None:
        from dataclasses import replace

        if is_run_dir(cfg.ref):  # an earlier run's final model, e.g. the SFT run of a two-run pipeline
            ref = load_run_model(cfg.ref, trust_remote_code=cfg.trust_remote_code).model
            return ref.merge_and_unload() if hasattr(ref, "merge_and_unload") else ref
        return load_model(replace(_model_config(cfg, cfg.ref), lora_r=0)).model
    if not cfg.on_policy:
        return model
    if cfg.lora_r > 0 and hasattr(model, "disable_adapter"):
        return AdapterDisabled(model)
    frozen = load_start_model(cfg).model if resumed else copy.deepcopy(model)
    frozen.eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


def weights_finite(params: Sequence[torch.nn.Parameter]) -> bool:
    """Whether every parameter is finite (the same answer on every rank: the weights are in sync)."""
    return all(bool(torch.isfinite(p).all()) for p in params)


def _stop_non_finite(run: RunDir, model: Any, optimizer: Any, scheduler: Any, phase_index: int, phase_step: int,
                     global_step: int, stats: dict[str, float], cfg: TrainConfig, procs: Processes = Processes()) -> None:
    """Keep the last good weights (this step has not been applied) and stop with a clear message (all ranks
    stop here together; rank 0 writes)."""
    from lldyn.checkpoint import latest_checkpoint, save_checkpoint

    optimizer.zero_grad(set_to_none=True)

    def keep_last_good() -> Path | None:
        last = latest_checkpoint(run.checkpoints)
        # The weights themselves may already be non-finite (an earlier step overflowed them without a
        # non-finite loss): those are never saved; the last checkpoint stays the last good one.
        finite = weights_finite([p for p in model.parameters() if p.requires_grad])
        if finite and (last is None or int(last.name.split("-")[-1]) != global_step):
            last = save_checkpoint(run.checkpoints, global_step, model, optimizer, scheduler,
                                   {"phase": phase_index, "phase_step": phase_step, "stopped": "non-finite"},
                                   keep=cfg.keep_checkpoints + 1)
        run.log_metrics({"step": global_step + 1, "event": "stopped", "reason": "non-finite loss, gradient or weights",
                         "weights_finite": finite,
                         **{k: (v if math.isfinite(v) else str(v)) for k, v in stats.items()}})
        return last

    last = procs.from_main(keep_last_good)
    kept = f"last good weights kept in {last}" if last is not None else \
        "the weights are already non-finite and no earlier checkpoint exists, so none was kept"
    raise LldynError(f"non-finite loss, gradient or weights at step {global_step + 1} ({', '.join(f'{k}={v}' for k, v in stats.items())}); "
                     f"training stopped, {kept}", field="lr",
                     expected="a smaller learning rate, gradient clipping, or clean data")


def _progress(total: int, done: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=desc, unit="step", dynamic_ncols=True)


def run_train_config(run_dir: str | Path, trust_remote_code: bool = False) -> TrainConfig:
    """The :class:`TrainConfig` a run directory was trained with (its ``config.json``).

    ``trust_remote_code`` is the caller's flag, never the run's: a run directory may come from anyone, and
    its ``config.json`` saying ``trust_remote_code = true`` must not run a model's code unasked.
    """
    from lldyn.config import build_config

    run = RunDir(run_dir)
    values = {k: v for k, v in run.config().items() if k not in ("kind", "lldyn_version")}
    values["trust_remote_code"] = trust_remote_code
    return build_config(TrainConfig, values, file=str(run.path / "config.json"))


def load_run_model(run_dir: str | Path, checkpoint: str | Path | None = None, trust_remote_code: bool = False):
    """The model of a run: its base model (from ``config.json``, see :func:`run_train_config`) with the latest
    (or given) checkpoint loaded."""
    from lldyn.checkpoint import latest_checkpoint, load_checkpoint

    run = RunDir(run_dir)
    lm = load_start_model(run_train_config(run.path, trust_remote_code))
    ckpt = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run.checkpoints)
    if ckpt is None:
        raise LldynError("run has no checkpoint yet", file=str(run.checkpoints), expected="a finished or checkpointed run")
    load_checkpoint(ckpt, lm.model, restore_rng=False)
    lm.model.eval()
    return lm
