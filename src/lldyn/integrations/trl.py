"""``LearningDynamicsCallback``: lldyn's tracker inside Hugging Face ``Trainer`` and TRL trainers.

    from lldyn.integrations import LearningDynamicsCallback

    trainer = DPOTrainer(model=model, args=DPOConfig(...), train_dataset=ds, processing_class=tok,
                         callbacks=[LearningDynamicsCallback(probes="probes.jsonl", every=20, out="runs/dpo")])
    trainer.train()

The callback evaluates the probes at step 0 and every ``every`` optimizer steps with the one
log-prob engine (:class:`lldyn.tracking.Tracker`) on the trainer's own model object, and sends the
per-family means, changes since step 0 and squeeze signals through the trainer's logging
(``state.log_history`` and every callback's ``on_log``, so ``report_to`` backends such as
TensorBoard or W&B receive them) under keys ``lldyn/family_mean/<family>``, ... . With ``out`` it
also writes a run directory (``lldyn report OUT`` draws it).

Under ``accelerate launch`` every process scores the probes of its share of the prompts; the rows
are gathered (:class:`lldyn.distributed.Processes`, as in lldyn's own loop) and only the main process writes.

In TRL's ``GRPOTrainer`` (docs/grpo.md) give it the reward and the probe prompts' data rows, and it watches
what GRPO does to the starting policy's own samples, as ``lldyn train --method grpo`` does::

    cb = LearningDynamicsCallback(probes="probes.jsonl", every=10, out="runs/grpo", policy_samples=4,
                                  reward="builtin", prompts=load_prompts("builtin:train"))
    GRPOTrainer(model=..., reward_funcs=gold_answer_reward, args=GRPOConfig(...), callbacks=[cb], ...)

``policy_samples`` draws per probe prompt are sampled once at the start (with the GRPOConfig's
``max_completion_length``, ``temperature``, ``top_p`` and ``seed``; the global RNG is left as it was, so
TRL samples what it would have) and tracked as ``sample_correct`` / ``sample_incorrect``; each evaluation
records ``reward`` (the mean of the rewards TRL logged since the previous evaluation: TRL logs a step's
reward after ``on_step_end``, so the window ends one step earlier than lldyn train's), the greedy y*'s
accuracy, and the LLD alarm (:mod:`lldyn.squeeze.lld`).
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import math
from pathlib import Path
from typing import Any, Sequence

from accelerate import PartialState
from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler

from lldyn.data import PromptExample
from lldyn.distributed import Processes
from lldyn.errors import LldynError
from lldyn.generation import GenerationConfig
from lldyn.policy_samples import PolicySampleConfig, gold_answers, policy_samples, probe_prompts
from lldyn.probes import ProbeSet
from lldyn.rewards import RewardFunction, load_reward
from lldyn.rundir import AlarmRow, RunDir, TrackSummary
from lldyn.scoring import ScoreConfig
from lldyn.squeeze import LLDAlarm, LLDAlarmConfig, SqueezeAlarm
from lldyn.tracking import FreeRunConfig, Tracker, TrackerCallback

log = logging.getLogger("lldyn")
PREFIX = "lldyn/"


def _reward(reward: Any) -> RewardFunction | None:
    """``"builtin"`` / ``module:function``, a RewardFunction, or a TRL reward function, as a RewardFunction."""
    if reward is None or isinstance(reward, RewardFunction):
        return reward
    if isinstance(reward, str):
        return load_reward(reward)
    if callable(reward):
        return RewardFunction(getattr(reward, "__name__", "reward"), reward)
    raise LldynError(f"cannot use {type(reward).__name__} as a reward", field="reward",
                     expected='"builtin", "module:function", a RewardFunction or f(prompts, completions, **kwargs)')


def _method_of(args: Any) -> str:
    name = type(args).__name__
    return name[:-len("Config")].lower() if name.endswith("Config") else "trainer"


class LearningDynamicsCallback(TrainerCallback):
    """Track probe log-probs during ``Trainer`` / ``SFTTrainer`` / ``DPOTrainer`` training.

    Args:
        probes: a :class:`~lldyn.probes.ProbeSet` or a ``probes.jsonl`` path.
        every: evaluation period in optimizer steps (plus step 0).
        out: run directory to write (config, probe table, metrics), or None for logging only.
        score_config: the engine's tokenisation (chat template on by default, as TRL applies it).
        callbacks: tracker callbacks ``fn(summary, history) -> dict | None``.
        squeeze_alarm: add the live squeeze alarm (:class:`lldyn.squeeze.SqueezeAlarm`); None (default) = on
            for preference trainers (their config has ``beta``: DPO, CPO, ORPO, KTO ...), off for SFT.
        initial_sample: generate the ``initial_sample`` family at the start.
        label: name of the run in reports (default: trainer kind and learning rate).
        tokenizer: the tokenizer to score with, for a ``Trainer`` built without ``processing_class``
            (default: the trainer's ``processing_class``).
        free_run: the repeater's budget (:class:`lldyn.tracking.FreeRunConfig`): free-running greedy
            generations of the first probe prompts at every ``every``-th evaluation, with their degeneration
            measures (``generations.jsonl`` with ``out``; the summary under ``lldyn/generation/<key>``).
        policy_samples: GRPO: draws per probe prompt from the starting policy (an int: sampled as the trainer's
            GRPOConfig samples), or a :class:`~lldyn.policy_samples.PolicySampleConfig`; None/0 = none.
        reward: what splits the draws into correct and incorrect: ``"builtin"`` (the gold answer), a
            :class:`~lldyn.rewards.RewardFunction` or a TRL reward function ``f(prompts, completions, **kw)``.
        prompts: the probe prompts' data rows (:func:`lldyn.data.load_prompts`; a probe's ``prompt_id`` is its
            row's id): their fields reach the reward, and their gold answers give the y*'s accuracy.
        lld_alarm: the LLD alarm (:class:`lldyn.squeeze.LLDAlarm`) with ``lld_config``; None (default) = on
            when there are policy samples.
        greedy_answers: the ``greedy`` family (the current greedy answer to each probe prompt, up to the
            GRPOConfig's ``max_completion_length`` tokens) and its accuracy; None (default) = on with ``prompts``.
    """

    def __init__(self, probes: ProbeSet | str | Path, every: int = 20, out: str | Path | None = None,
                 score_config: ScoreConfig = ScoreConfig(), callbacks: Sequence[TrackerCallback] = (),
                 initial_sample: bool = True, generation_config: Any = None, label: str | None = None,
                 tokenizer: Any = None, squeeze_alarm: bool | None = None,
                 free_run: FreeRunConfig | None = None,
                 policy_samples: int | PolicySampleConfig | None = None, reward: Any = None,
                 prompts: Sequence[PromptExample] = (), lld_alarm: bool | None = None,
                 lld_config: LLDAlarmConfig = LLDAlarmConfig(), greedy_answers: bool | None = None) -> None:
        self.probes = ProbeSet.coerce(probes)
        self.tokenizer = tokenizer
        self.every = every
        self.out = None if out is None else Path(out)
        self.score_config = score_config
        self.callbacks = list(callbacks)
        self.squeeze_alarm = squeeze_alarm
        self.initial_sample = initial_sample
        self.generation_config = generation_config
        self.free_run = free_run if free_run is not None and free_run.enabled else None
        self.label = label
        self.policy_samples = policy_samples
        self.reward = _reward(reward)
        self.prompts = list(prompts)
        self.lld_alarm = lld_alarm
        self.lld_config = lld_config
        self.greedy_answers = greedy_answers
        if policy_samples and self.reward is None:
            raise LldynError("policy samples need a reward to split them", field="reward",
                             expected='reward="builtin", a RewardFunction or a TRL reward function')
        self.tracker: Tracker | None = None
        self._handler: CallbackHandler | None = None
        self._rewards: list[float] = []  # rewards TRL logged since the last evaluation

    # ------------------------------------------------------------------ trainer events
    def on_init_end(self, args, state, control, **kwargs):
        self._find_handler()

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._find_handler()
        self.tracker = self._make_tracker(args, state, model, processing_class)
        self._track(args, state, control)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.tracker is not None:
            if model is not None:
                self.tracker.model = model  # the object being trained (a trainer may swap it)
            self._track(args, state, control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        value = (logs or {}).get("reward")  # GRPOTrainer's mean reward (our own logs are all under lldyn/)
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            self._rewards.append(float(value))

    # ------------------------------------------------------------------ internals
    def _find_handler(self) -> None:
        """The trainer's CallbackHandler, found in the calling frames (callbacks get no trainer reference),
        so tracked metrics can be dispatched to every ``on_log`` like ``Trainer.log`` does."""
        if self._handler is not None:
            return
        frame = inspect.currentframe()
        try:
            for _ in range(6):
                frame = frame.f_back if frame is not None else None
                owner = frame.f_locals.get("self") if frame is not None else None
                if isinstance(owner, CallbackHandler) and self in owner.callbacks:
                    self._handler = owner
                    return
        finally:
            del frame

    def _make_tracker(self, args, state, model, processing_class) -> Tracker:
        tokenizer = self.tokenizer or getattr(processing_class, "tokenizer", None) or processing_class
        if model is None or tokenizer is None:
            raise LldynError("the trainer passed no model or processing_class to the callback",
                             field="processing_class", expected="Trainer(..., processing_class=tokenizer) or "
                             "LearningDynamicsCallback(..., tokenizer=tokenizer)")
        procs = Processes.of(PartialState())
        sample_cfg = self._sample_config(args)
        run = None
        if self.out is not None:
            if procs.is_main:
                lr = float(args.learning_rate)
                config = {"source": "LearningDynamicsCallback", "method": _method_of(args),
                          "label": self.label or f"{_method_of(args)} lr={lr:g}",
                          "model": str(getattr(getattr(model, "config", None), "_name_or_path", "") or ""),
                          "learning_rate": lr, "seed": int(args.seed), "every": self.every,
                          "initial_sample": self.initial_sample,
                          "policy_samples": dataclasses.asdict(sample_cfg) if sample_cfg else None,
                          "reward": self.reward.name if self.reward is not None else None,
                          "probes_sha256": self.probes.without_families(["initial_sample"]).fingerprint(),
                          "score": {k: getattr(self.score_config, k) for k in ("template", "system_prompt", "max_length",
                                                                               "max_prompt_tokens")}}
                if self.free_run is not None:
                    config["free_run"] = dataclasses.asdict(self.free_run)
                resumed = state.global_step > 0
                run = RunDir.create(self.out, config, resume=resumed)
                if resumed:
                    run.truncate_after(state.global_step)
            procs.wait()
            run = RunDir(self.out)
        callbacks = list(self.callbacks)
        grpo = hasattr(args, "num_generations")  # GRPOConfig has a beta too, but no squeezing to watch
        alarm = (hasattr(args, "beta") and not grpo) if self.squeeze_alarm is None else self.squeeze_alarm
        if alarm and not any(isinstance(c, SqueezeAlarm) for c in callbacks):
            callbacks.append(SqueezeAlarm())
        samples, gold = [], None
        if self.prompts:
            rows = [p for p in self.prompts if p.id in set(self.probes.prompt_ids)]
            gold = gold_answers(rows)
            if sample_cfg is not None:
                rows = probe_prompts(self.probes.prompt_ids, self.prompts, self.reward)
                samples = policy_samples(run, model, tokenizer, rows, self.reward, sample_cfg, write=procs.is_main)
        elif sample_cfg is not None:
            raise LldynError("policy samples need the probe prompts' data rows", field="prompts",
                             expected="LearningDynamicsCallback(..., prompts=lldyn.data.load_prompts(DATA))")
        lld = bool(samples) if self.lld_alarm is None else self.lld_alarm
        if lld and not any(isinstance(c, LLDAlarm) for c in callbacks):
            callbacks.append(LLDAlarm(self.lld_config))
        greedy = None
        if bool(self.prompts) if self.greedy_answers is None else self.greedy_answers:
            greedy = GenerationConfig(max_new_tokens=int(getattr(args, "max_completion_length", None) or 256),
                                      template=self.score_config.template,
                                      max_prompt_tokens=self.score_config.max_prompt_tokens)
        return Tracker(model, tokenizer, self.probes, run=run, every=self.every, score_config=self.score_config,
                       callbacks=callbacks, initial_sample=self.initial_sample,
                       generation_config=self.generation_config, processes=procs, free_run=self.free_run,
                       policy_samples=samples, gold=gold, greedy=greedy)

    def _sample_config(self, args) -> PolicySampleConfig | None:
        """The policy samples' config: as given, or ``n`` draws sampled as the trainer's GRPOConfig samples."""
        if not self.policy_samples:
            return None
        if isinstance(self.policy_samples, PolicySampleConfig):
            return self.policy_samples
        return PolicySampleConfig(n=int(self.policy_samples),
                                  max_new_tokens=int(getattr(args, "max_completion_length", None) or 256),
                                  temperature=float(getattr(args, "temperature", None) or 1.0),
                                  top_p=float(getattr(args, "top_p", None) or 1.0), seed=int(args.seed),
                                  template=self.score_config.template,
                                  max_prompt_tokens=self.score_config.max_prompt_tokens)

    def _track(self, args, state, control) -> None:
        assert self.tracker is not None
        if not self.tracker.should_track(state.global_step):
            return
        signals = {"reward": sum(self._rewards) / len(self._rewards)} if self._rewards else None
        summary = self.tracker.track(state.global_step, signals)
        self._rewards = []
        if summary.extra.get("lld/alarm") and self.tracker.is_writer:
            self.tracker.run.log(AlarmRow(summary.step, "lld", summary.extra.get("lld/since_step"),  # type: ignore
                                          {k: v for k, v in summary.extra.items() if k.startswith("lld/d_")}))
        self._emit(args, state, control, summary)

    def _emit(self, args, state, control, summary: TrackSummary) -> None:
        """Log like ``Trainer.log``: append to ``state.log_history`` and call every callback's ``on_log``."""
        logs = {PREFIX + k: float(v) for k, v in summary.to_json().items()  # booleans (the alarm) as 0/1
                if k not in ("step", "event") and isinstance(v, (int, float)) and math.isfinite(float(v))}
        state.log_history.append({**logs, "step": state.global_step})
        if self._handler is not None:
            # call_event, not handler.on_log: the latter clears control.should_log, which would drop
            # the trainer's own log (loss, lr) of this step.
            self._handler.call_event("on_log", args, state, control, logs=logs)
        elif not getattr(self, "_warned", False):
            self._warned = True
            log.warning("lldyn: trainer callback handler not found; probe metrics go to state.log_history only")

    def metrics(self) -> list[dict[str, Any]]:
        """The tracker's metric rows so far (one per evaluation)."""
        return [s.to_json() for s in (self.tracker.history if self.tracker else [])]
