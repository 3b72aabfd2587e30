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

from lldyn.distributed import Processes
from lldyn.errors import LldynError
from lldyn.probes import ProbeSet
from lldyn.rundir import RunDir, TrackSummary
from lldyn.scoring import ScoreConfig
from lldyn.squeeze import SqueezeAlarm
from lldyn.tracking import FreeRunConfig, Tracker, TrackerCallback

log = logging.getLogger("lldyn")
PREFIX = "lldyn/"


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
    """

    def __init__(self, probes: ProbeSet | str | Path, every: int = 20, out: str | Path | None = None,
                 score_config: ScoreConfig = ScoreConfig(), callbacks: Sequence[TrackerCallback] = (),
                 initial_sample: bool = True, generation_config: Any = None, label: str | None = None,
                 tokenizer: Any = None, squeeze_alarm: bool | None = None,
                 free_run: FreeRunConfig | None = None) -> None:
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
        self.tracker: Tracker | None = None
        self._handler: CallbackHandler | None = None

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
        run = None
        if self.out is not None:
            if procs.is_main:
                lr = float(args.learning_rate)
                config = {"source": "LearningDynamicsCallback", "method": _method_of(args),
                          "label": self.label or f"{_method_of(args)} lr={lr:g}",
                          "model": str(getattr(getattr(model, "config", None), "_name_or_path", "") or ""),
                          "learning_rate": lr, "seed": int(args.seed), "every": self.every,
                          "initial_sample": self.initial_sample,
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
        alarm = hasattr(args, "beta") if self.squeeze_alarm is None else self.squeeze_alarm
        if alarm and not any(isinstance(c, SqueezeAlarm) for c in callbacks):
            callbacks.append(SqueezeAlarm())
        return Tracker(model, tokenizer, self.probes, run=run, every=self.every, score_config=self.score_config,
                       callbacks=callbacks, initial_sample=self.initial_sample,
                       generation_config=self.generation_config, processes=procs, free_run=self.free_run)

    def _track(self, args, state, control) -> None:
        assert self.tracker is not None
        summary = self.tracker.maybe_track(state.global_step)
        if summary is not None:
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
