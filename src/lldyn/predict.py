"""Predict a planned phase before training: each probe's Δ log π over the whole phase, to first order.

The decomposition (:mod:`lldyn.decompose.llm`) explains one step that happened. This module predicts a
phase that has not: from the plan alone (a :class:`~lldyn.train.TrainConfig`: method, data, model, steps,
batch size, optimizer, schedule, β …), before any real step is taken.

**Linearised at θ0.** Paper eq. (3), Δ log π(y | x_o) ≈ ⟨∇θ log π(y | x_o), Δθ⟩, with Δθ the change of the
**whole** phase. Every planned step t takes its gradient at the phase's start θ0 instead of at θ_t:

    g_t = ∇θ L(batch_t; θ0)                      (batch_t: the very micro-batches the run will draw)
    Δθ  = Σ_t Δθ_t,   Δθ_t = optimizer_step_t(s_t · g_t)
    Δ log π(probe) ≈ ⟨∇θ log π(probe) |θ0, Δθ⟩    (one jvp over the probe set)

s_t is the clipping factor of g_t (``max_grad_norm``); the learning rate of step t is the plan's schedule's.
So the phase costs one backward per planned batch, one optimizer update per step on a shadow copy of θ,
and **one** forward-mode jvp over all probes, whatever the number of steps. For SGD without momentum or
weight decay Δθ_t = −η_t s_t g_t, and the prediction is exactly the sum of the per-step first-order
predictions, each linearised at θ0 (the equation's −η A K G summed over the planned batches).

**The preconditioner (Adam, AdamW, RMSprop).** The plan's own optimizer — the same torch class, its
hyper-parameters, the plan's schedule — takes the planned gradients one after another on the shadow copy.
So Adam's second moment is the **running** average over the planned gradients,
v_t = β2 v_{t−1} + (1 − β2) g_t(θ0)², bias-corrected, and its momentum likewise: step 0 is exactly the
real step 0, and later steps differ only in that their gradients are taken at θ0. Why not freeze the
preconditioner after the first step (v = g_0²)? Adam would then divide every later gradient by |g_0|
coordinate by coordinate, an unbounded ratio: a coordinate the first batch did not touch (in an untied model
the embedding row of each token it does not contain) would move by η g_t / eps, eps = 1e-8. Adam's own update
is bounded per coordinate, and so is the running average's; it is what the optimizer itself would hold if the
gradients did not change, the first-order assumption already made for the gradients (docs/predict.md).

**Re-linearising after a real prefix** (``prefix_steps`` K): train K real steps (the run's own batches,
optimizer, schedule and clipping), then linearise again at θ_K for the remaining steps, continuing from
the real optimizer state. The prediction is then the actual change over the prefix (engine) plus the
linearised change of the rest. K = 0 (the default) is a prediction made before any training.

**Reference log-probs.** A DPO-family phase's reference values are computed at the phase's start as the
run computes them (:func:`lldyn.train.reference.reference_logps`; with no ``ref`` the policy itself, so the
margin at θ0 is 0).

On-policy phases cannot be planned (their batches are sampled during training) and are refused.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import torch

from lldyn.config import check
from lldyn.data import PreferenceExample
from lldyn.decompose.llm import jvp_logps
from lldyn.errors import LldynError
from lldyn.models import LoadedModel
from lldyn.probes import Probe
from lldyn.runs import load_model_or_run, load_start_model
from lldyn.scoring import EncodedPair, Encoder, score_encoded
from lldyn.train.batches import Example, check_batch, encode_phase_data, load_training_data, micro_batch
from lldyn.train.config import Phase, TrainConfig, phase_length, phases
from lldyn.train.optim import make_optimizer, make_scheduler
from lldyn.train.reference import reference_logps, reference_model
from lldyn.train.steps import pair_step, sft_step

__all__ = ["PhasePrediction", "PlannedPhase", "PredictConfig", "TrainConfig", "check_plan", "pair_probes",
           "planned_phase", "predict_phase", "summarise"]

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PredictConfig:
    """What to predict of a plan.

    phase: the name of the plan's phase (``sft`` or ``dpo`` of sft_dpo / extend; default: the first phase).
    start: the model the phase starts from (a model spec, a run directory or one of its checkpoints, or a
        loaded model); default the plan's ``model`` — only for the first phase: a later phase starts where
        the earlier one ends, which has not been trained.
    prefix_steps: real training steps before linearising (0: a prediction before any training).
    stated: the plan's fields the user set (TOML or flags): a phase whose ``steps`` exceed what its stated
        ``epochs`` hold is refused (:func:`planned_phase`).
    """

    phase: str | None = None
    start: Any = None
    prefix_steps: int = 0
    stated: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        check(self.prefix_steps >= 0, "prefix_steps", f"must be >= 0, got {self.prefix_steps}",
              "0 (predict before training) or a number of real steps")


class PhasePrediction(NamedTuple):
    """Predicted Δ log π of P probes over a planned phase.

    probes: the P probes, in the order of the tensors.
    start: (P,) log π at the phase's start θ0 (engine).
    predicted: (P,) prefix + linear, the predicted change over the whole phase.
    prefix: (P,) the actual change over the ``prefix_steps`` real steps (zeros without a prefix).
    linear: (P,) ⟨∇θ log π(probe), Δθ⟩ of the remaining steps, linearised after the prefix.
    steps, prefix_steps: the phase's length and how many of its steps were trained for real.
    seconds: wall time of the parts (``prefix``, ``gradients``, ``jvp``, ``total``).
    """

    probes: tuple[Probe, ...]
    start: torch.Tensor
    predicted: torch.Tensor
    prefix: torch.Tensor
    linear: torch.Tensor
    steps: int
    prefix_steps: int
    seconds: dict[str, float]

    def rows(self) -> list[dict[str, Any]]:
        """One table row per probe (what ``lldyn predict`` writes)."""
        return [{"probe_id": p.id, "prompt_id": p.prompt_id, "family": p.family,
                 "logp_start": float(self.start[i]), "predicted": float(self.predicted[i]),
                 "prefix_actual": float(self.prefix[i]), "linear": float(self.linear[i]),
                 "steps": self.steps, "prefix_steps": self.prefix_steps} for i, p in enumerate(self.probes)]


class PlannedPhase(NamedTuple):
    """A phase of a plan, resolved: its index in the method's phase list, its examples and its length."""

    index: int
    phase: Phase
    examples: list[Example]
    steps: int


def pair_probes(pairs: Sequence[PreferenceExample]) -> list[Probe]:
    """y+ and y− of each pair as probes (families ``chosen`` and ``rejected``, prompt id = the pair's id)."""
    return [Probe(p.id, family, p.prompt, response, (p.id,))
            for p in pairs for family, response in (("chosen", p.chosen), ("rejected", p.rejected))]


# --------------------------------------------------------------------------- the plan


def _phase_index(cfg: TrainConfig, name: str | None) -> int:
    plan = phases(cfg)
    if name is None:
        return 0
    names = [p.name for p in plan]
    if name not in names:
        raise LldynError(f"method {cfg.method!r} has no phase {name!r}", field="phase",
                         expected="one of " + ", ".join(names))
    return names.index(name)


def _length_fields(cfg: TrainConfig, index: int) -> tuple[str, str]:
    """The plan's fields that set the length of phase ``index``: (steps, epochs) or (sft_steps, sft_epochs)."""
    two_phase = len(phases(cfg)) > 1
    return ("sft_steps", "sft_epochs") if two_phase and index == 0 else ("steps", "epochs")


def check_plan(cfg: TrainConfig, options: PredictConfig) -> int:
    """Refusals that need no data or model (so they come first); returns the phase index."""
    check(not cfg.on_policy, "on_policy", "an on-policy phase cannot be planned: its batches are sampled during "
          "training", "an off-policy plan (--no-on-policy)")
    index = _phase_index(cfg, options.phase)
    if index > 0 and options.start is None:
        name = phases(cfg)[index].name
        raise LldynError(f"phase {name!r} of {cfg.method} starts where phase {phases(cfg)[index - 1].name!r} ends, "
                         "which is not trained yet", field="start",
                         expected=f"--start MODEL: the model at the start of the {name} phase (e.g. the SFT "
                                  "phase's last checkpoint RUN/checkpoints/step-N)")
    return index


def planned_phase(cfg: TrainConfig, options: PredictConfig, encoder: Encoder) -> PlannedPhase:
    """The phase to predict, with its encoded examples (as the run encodes them) and its length.

    The rule for a phase longer than the data allows: a phase's length is ``steps`` if given, else its
    ``epochs`` of the usable examples (as in training, where ``steps`` repeat the data as often as needed).
    A plan that states **both** (``stated``) but whose steps exceed what the stated epochs hold is refused,
    and so are ``prefix_steps`` that are not fewer than the phase's steps, and a batch larger than the data.
    """
    index = check_plan(cfg, options)
    phase = phases(cfg)[index]
    pairs, sft = load_training_data(cfg)
    examples = encode_phase_data(phase, pairs, sft, encoder, cfg.data)
    check_batch(cfg, len(examples), phase, cfg.data)
    steps = phase_length(phase, len(examples), cfg)
    steps_field, epochs_field = _length_fields(cfg, index)
    if phase.steps is not None and {steps_field, epochs_field} <= options.stated:
        allowed = phase_length(phase._replace(steps=None), len(examples), cfg)
        if steps > allowed:
            epochs = f"{phase.epochs:g} epoch{'' if phase.epochs == 1 else 's'}"
            raise LldynError(f"the plan says {steps} steps and {epochs}, but {epochs} of "
                             f"{len(examples)} usable examples at batch size {cfg.batch_size}"
                             f"{f' × grad_accum {cfg.grad_accum}' if cfg.grad_accum > 1 else ''} hold only "
                             f"{allowed} steps", file=cfg.data, field=steps_field,
                             expected=f"--{steps_field.replace('_', '-')} <= {allowed}, more "
                                      f"--{epochs_field.replace('_', '-')}, or only one of the two")
    if options.prefix_steps >= steps:
        raise LldynError(f"--prefix-steps {options.prefix_steps} leaves nothing to predict in a phase of {steps} steps",
                         field="prefix_steps", expected=f"0 <= --prefix-steps < {steps}")
    return PlannedPhase(index, phase, examples, steps)


def _start_model(cfg: TrainConfig, options: PredictConfig) -> LoadedModel:
    """The model at the phase's start (seeded as training seeds it, so a LoRA adapter starts the same)."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if options.start is None:
        return load_start_model(cfg.model_config())
    if isinstance(options.start, LoadedModel):
        return options.start
    return load_model_or_run(str(options.start), trust_remote_code=cfg.trust_remote_code)


# --------------------------------------------------------------------------- one planned step


def _accumulate_gradient(model: Any, pad_id: int, cfg: TrainConfig, planned: PlannedPhase, ref: Any,
                         step: int) -> None:
    """Backward the loss of planned step ``step`` into ``.grad`` (its ``grad_accum`` micro-batches, the very
    ones the run draws: :func:`lldyn.train.batches.micro_batch`), as the training loop does."""
    for k in range(cfg.grad_accum):
        batch = micro_batch(planned.examples, cfg, planned.index, step * cfg.grad_accum + k)
        if planned.phase.kind == "sft":
            out = sft_step(model, batch, pad_id, cfg, 1.0 / cfg.grad_accum)
        else:
            out = pair_step(model, batch, pad_id, cfg, planned.phase.kind, ref, 1.0 / cfg.grad_accum)
        if not torch.isfinite(out.loss):
            raise LldynError(f"non-finite loss at planned step {step + 1}", field="lr",
                             expected="a plan whose loss is finite at the start (clean data, a sane model)")
        out.loss.backward()


def _clip(params: Sequence[torch.nn.Parameter], cfg: TrainConfig) -> None:
    if cfg.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)


# --------------------------------------------------------------------------- the prediction


def predict_phase(cfg: TrainConfig, probes: Sequence[Probe], options: PredictConfig = PredictConfig(),
                  say: Callable[[str], None] | None = None) -> PhasePrediction:
    """Predicted Δ log π of every probe over the planned phase (module docstring for the equations).

    Args:
        cfg: the plan (as for ``lldyn train``; ``probes``/``out`` are not read).
        probes: P probes (e.g. a :class:`lldyn.probes.ProbeSet`, or :func:`pair_probes` of held-out pairs),
            scored with the plan's tokenisation (``cfg.scoring()``).
        options: which phase, its start, the real prefix.
        say: gets a line as each part starts (None: quiet).
    Returns:
        :class:`PhasePrediction`. A loaded ``options.start`` model is left at the linearisation point
        (θ0, or θ_K after a prefix).
    """
    began = time.perf_counter()
    probes = tuple(probes)
    if not probes:
        raise LldynError("no probes to predict", field="probes", expected="--probes FILE and/or --pairs FILE")
    check_plan(cfg, options)
    lm = _start_model(cfg, options)
    model, tokenizer = lm.model, lm.tokenizer
    encoder = Encoder(tokenizer, cfg.scoring())
    planned = planned_phase(cfg, options, encoder)
    encoded = [encoder.pair(p.prompt, p.response) for p in probes]
    pad_id = tokenizer.pad_token_id
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    params = list(named.values())
    optimizer = make_optimizer(params, cfg, planned.phase.lr)
    scheduler = make_scheduler(optimizer, cfg, planned.steps)
    ref = None
    if planned.phase.kind not in ("sft", "simpo"):
        ref = reference_logps(reference_model(cfg, model), tokenizer, planned.examples, cfg)
    start = _logps(model, encoded, pad_id, cfg)
    seconds = {}

    t = time.perf_counter()
    model.train()
    if say and options.prefix_steps:
        say(f"training {options.prefix_steps} real steps before linearising")
    for step in range(options.prefix_steps):
        _planned_step(model, pad_id, cfg, planned, ref, step, optimizer, scheduler)
    anchor = {n: p.detach().clone() for n, p in named.items()}
    linear_start = _logps(model, encoded, pad_id, cfg) if options.prefix_steps else start
    seconds["prefix"] = time.perf_counter() - t

    t = time.perf_counter()
    if say:
        say(f"{planned.steps - options.prefix_steps} planned gradients at θ{options.prefix_steps or 0} "
            f"({planned.phase.name}, {cfg.optimizer}, lr {planned.phase.lr:g}, {cfg.scheduler})")
    delta = _linearised_delta(model, pad_id, cfg, planned, ref, range(options.prefix_steps, planned.steps),
                              optimizer, scheduler, anchor)
    del optimizer, scheduler
    seconds["gradients"] = time.perf_counter() - t
    if not all(bool(torch.isfinite(d).all()) for d in delta.values()):
        raise LldynError("the planned parameter change is not finite", field="lr",
                         expected="a smaller learning rate or gradient clipping")

    t = time.perf_counter()
    if say:
        say(f"one jvp over {len(probes)} probes")
    linear = jvp_logps(model, encoded, pad_id, [delta], anchor, cfg.scoring()).predicted[0]
    seconds["jvp"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - began
    model.eval()
    prefix = linear_start - start
    return PhasePrediction(probes, start, prefix + linear, prefix, linear, planned.steps, options.prefix_steps,
                           seconds)


def _planned_step(model: Any, pad_id: int, cfg: TrainConfig, planned: PlannedPhase, ref: Any, step: int,
                  optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """One optimizer step of the plan on its ``step``-th batch (a real step: the prefix)."""
    optimizer.zero_grad(set_to_none=True)
    _accumulate_gradient(model, pad_id, cfg, planned, ref, step)
    _clip(list(p for p in model.parameters() if p.requires_grad), cfg)
    optimizer.step()
    scheduler.step()


def _linearised_delta(model: Any, pad_id: int, cfg: TrainConfig, planned: PlannedPhase, ref: Any,
                      steps: Iterable[int], optimizer: torch.optim.Optimizer, scheduler: Any,
                      anchor: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Δθ of the planned ``steps`` with every gradient taken at ``anchor`` (θ_K): the plan's optimizer moves a
    shadow copy of θ. The parameters' storage is swapped, not copied: ``p.data`` points at the anchor for the
    backward and at the shadow for the optimizer's update; the model is left at the anchor."""
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    shadow = {n: p.data for n, p in named.items()}
    try:
        for step in steps:
            for n, p in named.items():
                p.data = anchor[n]
            optimizer.zero_grad(set_to_none=True)
            _accumulate_gradient(model, pad_id, cfg, planned, ref, step)
            _clip(list(named.values()), cfg)
            for n, p in named.items():
                p.data = shadow[n]
            optimizer.step()
            scheduler.step()
        return {n: shadow[n] - anchor[n] for n in named}
    finally:
        for n, p in named.items():
            p.data = anchor[n]
        optimizer.zero_grad(set_to_none=True)


def _logps(model: Any, encoded: Sequence[EncodedPair], pad_id: int, cfg: TrainConfig) -> torch.Tensor:
    return torch.tensor([r.logp for r in score_encoded(model, encoded, pad_id, cfg.scoring())], dtype=torch.float64)


def summarise(prediction: PhasePrediction) -> dict[str, float]:
    """family → mean predicted Δ log π (nats)."""
    out: dict[str, list[float]] = {}
    for p, v in zip(prediction.probes, prediction.predicted.tolist()):
        out.setdefault(p.family, []).append(v)
    return {family: math.fsum(vs) / len(vs) for family, vs in out.items()}


# --------------------------------------------------------------------------- reading a plan


def load_plan(config: str | None, overrides: dict[str, Any]) -> tuple[TrainConfig, frozenset[str]]:
    """The plan and the fields it states: ``config`` is a TOML file of TrainConfig fields (as for ``lldyn train
    --config``) or a run directory (its ``config.json``: predict what that run's phase does), ``overrides`` the
    flags given. A run directory's config lists every field resolved, so only the flags count as stated there."""
    from pathlib import Path

    from lldyn.config import build_config, config_to_dict, load_config, read_toml
    from lldyn.runs import is_run_dir
    from lldyn.train.config import run_train_config

    values = {k: v for k, v in overrides.items() if v is not None}
    if config is not None and Path(config).is_dir():
        if not is_run_dir(config):
            raise LldynError("not a run directory (no config.json and checkpoints/)", file=str(config), field="config",
                             expected="a TOML file of TrainConfig fields or an lldyn run directory")
        base = config_to_dict(run_train_config(config, trust_remote_code=bool(values.get("trust_remote_code"))))
        return build_config(TrainConfig, {**base, **values}, file=str(Path(config) / "config.json")), frozenset(values)
    stated = set(values)
    if config is not None:
        stated |= set(read_toml(config))
    return load_config(TrainConfig, config, values), frozenset(stated)
