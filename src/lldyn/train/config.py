"""What a training run is: :class:`TrainConfig` (written resolved to ``config.json``) and its phases.

Methods are phase lists:

==========  ================================================================================
sft         SFT on (x, y+)
dpo …       one pairwise phase (dpo, ipo, slic, simpo); reference = the starting model
sft_dpo     SFT on (x, y+), then DPO with the SFT model as reference (the usual pipeline)
extend      SFT on (x, y+) *and* (x, y−), then DPO with that model as reference (paper Sec. 4.3)
grpo        on-policy RL: groups of completions sampled from the policy, scored by a reward (one phase)
==========  ================================================================================

Defaults that depend on the method (resolved at construction, written resolved to ``config.json``):
``batch_size`` 4, and 8 for grpo (TRL's ``per_device_train_batch_size``, so that the default
``num_generations`` 8 divides it); ``beta`` 0.1 (DPO's), and 0.0 for grpo (TRL's GRPOConfig: no KL).
The GRPO fields (:data:`GRPO_FIELDS`) apply to grpo only: another method refuses them set, and its
``config.json`` does not carry them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from lldyn.config import build_config, check, config_to_dict
from lldyn.squeeze.nthr import NTHRConfig
from lldyn.losses import GRPO_LOSSES, PREFERENCE_LOSSES, SCALE_REWARDS
from lldyn.models import ModelConfig, check_dtype_on_device
from lldyn.report_to import REPORT_TO
from lldyn.rundir import RunDir
from lldyn.runs import model_config
from lldyn.scoring import ScoreConfig
from lldyn.tracking import FreeRunConfig

METHODS = ("sft", "dpo", "ipo", "slic", "simpo", "extend", "sft_dpo", "grpo")
OPTIMIZERS = ("adamw", "rmsprop", "sgd")
SCHEDULERS = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; written resolved to ``config.json``.

    Length of a phase: ``steps`` optimizer steps if given, else ``epochs`` passes over the data.
    The first (SFT) phase of ``extend``/``sft_dpo`` uses ``sft_steps``/``sft_epochs``/``sft_lr``.
    ``max_grad_norm`` 0 turns clipping off. ``eval_every`` 0 turns probe tracking off even with
    ``probes``; ``checkpoint_every`` 0 checkpoints only at phase ends. ``batch_size`` and ``beta`` default
    by method (module docstring).

    GRPO (``method="grpo"``; names and defaults as TRL 1.16's GRPOConfig): ``reward`` (``builtin`` or
    ``module:function``, :mod:`lldyn.rewards`), ``num_generations`` completions per prompt, sampled with
    ``temperature``/``top_p`` up to ``max_completion_length`` tokens; ``loss_type``, ``epsilon``,
    ``epsilon_high``, ``scale_rewards``, ``mask_truncated_completions`` as in
    :func:`lldyn.losses.grpo_loss` / :func:`lldyn.losses.group_advantages`. ``nthr`` turns on NTHR (Deng et al.,
    arXiv 2505.18830; :mod:`lldyn.squeeze.nthr`): tokens of incorrect completions that influence the group's correct ones
    more than ``nthr_threshold`` × the correct tokens' mean keep ``nthr_scale`` of their penalty. ``batch_size`` counts
    completions (TRL's per-device batch); one optimizer step trains on a generation batch of
    ``batch_size × grad_accum`` completions: ``batch_size × grad_accum / num_generations`` prompts.

    GRPO observation (with ``probes``; docs/grpo.md): ``probe_samples`` draws per probe prompt from the starting
    policy (0 = none), split by the reward at ``probe_samples_correct_at`` into ``sample_correct`` /
    ``sample_incorrect`` (:mod:`lldyn.policy_samples`); ``probe_greedy``: the current greedy answer to each
    probe prompt at every evaluation (``max_completion_length`` tokens) and its accuracy against the gold
    answers; ``lld_alarm`` with its thresholds ``lld_reward_rise`` and ``lld_logp_rise`` (:mod:`lldyn.squeeze.lld`).
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
    batch_size: int | None = None
    grad_accum: int = 1
    lr: float = 5e-6
    warmup_steps: int = 0
    scheduler: str = "constant"
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    momentum: float = 0.0
    max_grad_norm: float = 10.0
    beta: float | None = None
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
    fsdp: bool = False
    report_to: str = "none"
    generate_prompts: int = 0
    generate_tokens: int = 48
    generate_every: int = 1
    initial_sample: bool = True
    squeeze_alarm: bool = True
    reward: str = "builtin"
    num_generations: int = 8
    max_completion_length: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    loss_type: str = "dapo"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    scale_rewards: str = "group"
    mask_truncated_completions: bool = False
    probe_samples: int = 4
    probe_samples_correct_at: float = 1.0
    probe_greedy: bool = True
    lld_alarm: bool = True
    lld_reward_rise: float = 0.0
    lld_logp_rise: float = 0.0
    nthr: bool = False
    nthr_threshold: float = 1.0
    nthr_scale: float = 0.5

    def __post_init__(self) -> None:
        check(self.method in METHODS, "method", f"unknown method {self.method!r}", "one of " + ", ".join(METHODS))
        grpo = self.method == "grpo"
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", 8 if grpo else 4)
        if self.beta is None:
            object.__setattr__(self, "beta", 0.0 if grpo else 0.1)
        check(self.optimizer in OPTIMIZERS, "optimizer", f"unknown optimizer {self.optimizer!r}",
              "one of " + ", ".join(OPTIMIZERS))
        check(self.scheduler in SCHEDULERS, "scheduler", f"unknown scheduler {self.scheduler!r}",
              "one of " + ", ".join(SCHEDULERS))
        check(self.lr > 0, "lr", f"learning rate must be > 0, got {self.lr}", "a positive number")
        check(self.sft_lr is None or self.sft_lr > 0, "sft_lr", f"must be > 0, got {self.sft_lr}", "a positive number")
        if not grpo:
            check(self.beta > 0, "beta", f"beta must be > 0, got {self.beta}", "a positive number such as 0.1")
            for name, default in GRPO_FIELDS.items():
                check(getattr(self, name) == default, name, f"{name} applies to --method grpo only, not {self.method}",
                      f"--method grpo, or no --{name.replace('_', '-')}")
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
        if grpo:
            check_grpo(self)
        check_dtype_on_device(self.dtype, self.device)
        check(self.report_to in REPORT_TO, "report_to", f"unknown report_to {self.report_to!r}",
              "one of " + ", ".join(REPORT_TO))
        self.free_run()  # refuses a bad budget at construction
        check(self.generate_prompts == 0 or (bool(self.probes) and self.eval_every > 0), "generate_prompts",
              "free-running generations are made at probe evaluations, and this run has none",
              "--probes FILE and --eval-every > 0, or --generate-prompts 0")

    def free_run(self) -> FreeRunConfig:
        """The repeater's budget (``generate_prompts`` 0: off)."""
        return FreeRunConfig(self.generate_prompts, self.generate_tokens, self.generate_every)

    def scoring(self) -> ScoreConfig:
        """The engine's tokenisation for this run (``max_prompt_tokens`` 0 or None: no separate prompt cap)."""
        return ScoreConfig(template=self.template, max_length=self.max_length,
                           max_prompt_tokens=self.max_prompt_tokens or None)

    def model_config(self, name: str | None = None) -> ModelConfig:
        """How to load ``name`` (default: the run's starting ``model``) with this run's dtype, device and LoRA."""
        return model_config(config_to_dict(self), self.trust_remote_code, name)


FREE_RUN_FIELDS: dict[str, Any] = {f: TrainConfig.__dataclass_fields__[f].default for f in (
    "generate_prompts", "generate_tokens", "generate_every")}

GRPO_FIELDS: dict[str, Any] = {f: TrainConfig.__dataclass_fields__[f].default for f in (
    "reward", "num_generations", "max_completion_length", "temperature", "top_p", "loss_type", "epsilon",
    "epsilon_high", "scale_rewards", "mask_truncated_completions", "probe_samples", "probe_samples_correct_at",
    "probe_greedy", "lld_alarm", "lld_reward_rise", "lld_logp_rise", "nthr", "nthr_threshold", "nthr_scale")}
NTHR_FIELDS = ("nthr", "nthr_threshold", "nthr_scale")


def check_grpo(cfg: TrainConfig) -> None:
    """What a GRPO config must hold (as TRL's GRPOConfig refuses it), before anything runs."""
    check(cfg.num_generations >= 2, "num_generations",
          f"GRPO needs at least 2 completions per prompt to compare them, got num_generations={cfg.num_generations}",
          "an integer >= 2 (TRL's default is 8)")
    generation_batch = cfg.batch_size * cfg.grad_accum
    check(generation_batch % cfg.num_generations == 0, "num_generations",
          f"the generation batch of {generation_batch} completions (batch_size {cfg.batch_size} × grad_accum "
          f"{cfg.grad_accum}) does not split into groups of num_generations={cfg.num_generations}",
          f"--batch-size × --grad-accum a multiple of {cfg.num_generations}")
    check(cfg.loss_type in GRPO_LOSSES, "loss_type", f"unknown GRPO loss type {cfg.loss_type!r}",
          "one of " + ", ".join(GRPO_LOSSES))
    check(cfg.scale_rewards in SCALE_REWARDS, "scale_rewards", f"unknown scale_rewards {cfg.scale_rewards!r}",
          "one of " + ", ".join(SCALE_REWARDS))
    check(cfg.beta >= 0, "beta", f"the KL coefficient must be >= 0, got {cfg.beta}", "0 (no KL, TRL's default) or > 0")
    check(cfg.ref is None or cfg.beta > 0, "ref", "--ref is the reference of the KL term, which beta 0 turns off",
          "--beta > 0 with --ref, or no --ref")
    check(cfg.epsilon >= 0 and (cfg.epsilon_high is None or cfg.epsilon_high >= 0), "epsilon",
          f"clip ranges must be >= 0, got epsilon={cfg.epsilon}, epsilon_high={cfg.epsilon_high}", "numbers >= 0")
    check(cfg.max_completion_length > 0, "max_completion_length", f"must be > 0, got {cfg.max_completion_length}",
          "a positive number of tokens")
    check(cfg.temperature > 0, "temperature", f"must be > 0, got {cfg.temperature}", "a positive number")
    check(0 < cfg.top_p <= 1, "top_p", f"must be in (0, 1], got {cfg.top_p}", "a number in (0, 1]")
    check(bool(cfg.reward.strip()), "reward", "no reward", "builtin or module:function")
    check(cfg.probe_samples >= 0, "probe_samples", f"must be >= 0, got {cfg.probe_samples}",
          "a number of samples per probe prompt (0 = none)")
    check(math.isfinite(cfg.probe_samples_correct_at), "probe_samples_correct_at",
          f"must be finite, got {cfg.probe_samples_correct_at}", "the reward at which a sample counts as correct")
    check(cfg.lld_reward_rise >= 0 and math.isfinite(cfg.lld_reward_rise) and math.isfinite(cfg.lld_logp_rise),
          "lld_reward_rise", f"LLD thresholds must be finite (reward rise >= 0), got {cfg.lld_reward_rise}, "
          f"{cfg.lld_logp_rise}", "lld_reward_rise >= 0 and a finite lld_logp_rise (nats)")
    if cfg.nthr:
        NTHRConfig(cfg.nthr_threshold, cfg.nthr_scale)
    else:
        for name in NTHR_FIELDS[1:]:
            check(getattr(cfg, name) == GRPO_FIELDS[name], name, f"{name} applies with --nthr only", "--nthr, or no "
                  f"--{name.replace('_', '-')}")


def prompts_per_step(cfg: TrainConfig) -> int:
    """GRPO: prompts of one optimizer step's generation batch (``batch_size × grad_accum / num_generations``)."""
    return cfg.batch_size * cfg.grad_accum // cfg.num_generations


class Phase(NamedTuple):
    """One stage of a method: ``kind`` 'sft', a preference loss name or 'grpo'; ``include_rejected`` for extend's SFT."""

    name: str
    kind: str
    steps: int | None
    epochs: float
    lr: float
    include_rejected: bool = False


def phases(cfg: TrainConfig) -> list[Phase]:
    """The phase list of ``cfg.method`` (see the module docstring)."""
    main = Phase(cfg.method, cfg.method, cfg.steps, cfg.epochs, cfg.lr)
    if cfg.method in ("sft", "grpo") or cfg.method in PREFERENCE_LOSSES:
        return [main]
    first = Phase("sft", "sft", cfg.sft_steps, cfg.sft_epochs, cfg.sft_lr or cfg.lr,
                  include_rejected=cfg.method == "extend")
    return [first, Phase("dpo", "dpo", cfg.steps, cfg.epochs, cfg.lr)]


def phase_length(phase: Phase, n_examples: int, cfg: TrainConfig) -> int:
    """Number of optimizer steps of ``phase`` (``n_examples``: its examples, or prompts for grpo)."""
    if phase.steps is not None:
        return phase.steps
    if phase.kind == "grpo":
        per_epoch = float(n_examples // prompts_per_step(cfg))
    else:
        per_epoch = (n_examples // cfg.batch_size) / cfg.grad_accum
    return max(1, int(math.floor(per_epoch * phase.epochs)))


# config keys a resumed run may change: they say where rows are also sent, not what is trained
RESUME_FREE = ("resume", "report_to")


def run_config(cfg: TrainConfig) -> dict[str, Any]:
    """The resolved config written to ``config.json`` (no secrets: keys live only in the environment, and
    an endpoint URL is written without user info or query, where a pasted token would sit)."""
    import lldyn
    from lldyn.endpoint import public_url

    values = config_to_dict(cfg)
    if cfg.method != "grpo":  # a run of another method writes the config.json it always wrote
        values = {k: v for k, v in values.items() if k not in GRPO_FIELDS}
    elif not cfg.nthr:  # so does a GRPO run without NTHR
        values = {k: v for k, v in values.items() if k not in NTHR_FIELDS}
    if cfg.generate_prompts == 0:  # so does a run without free-running generations (runs made before can resume)
        values = {k: v for k, v in values.items() if k not in FREE_RUN_FIELDS}
    if values.get("base_url"):
        values["base_url"] = public_url(values["base_url"])
    if values.get("report_to") == "none":  # where metrics are also sent is not part of the run (see RESUME_FREE)
        del values["report_to"]
    return {"kind": "train", "lldyn_version": lldyn.__version__, **values}


def run_train_config(run_dir: str | Path, trust_remote_code: bool = False) -> TrainConfig:
    """The :class:`TrainConfig` a run directory was trained with (its ``config.json``).

    ``trust_remote_code`` is the caller's flag, never the run's: a run directory may come from anyone, and
    its ``config.json`` saying ``trust_remote_code = true`` must not run a model's code unasked.
    """
    run = RunDir(run_dir)
    values = {k: v for k, v in run.config().items() if k not in ("kind", "lldyn_version")}
    values["trust_remote_code"] = trust_remote_code
    return build_config(TrainConfig, values, file=str(run.config_path))
