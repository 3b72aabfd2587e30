"""The live LLD alarm: GRPO's lazy likelihood displacement, seen in the probes while it happens.

Deng, Ren et al. (NeurIPS 2025, arXiv 2505.18830, Sec. 3) find that GRPO can raise the reward while the
log-likelihood of *correct* responses barely rises or even falls (lazy likelihood displacement, LLD): the
negative gradients of the incorrect responses of a group, which share tokens with the correct ones, pull them
down. lldyn watches the starting policy's own correct samples (family ``sample_correct``,
:mod:`lldyn.policy_samples`) and the training reward, both recorded in every probe evaluation's signals:
``logp_sample_correct`` (mean log π of the correct samples, summed over their tokens) and ``reward`` (the mean
training reward of the steps since the previous evaluation; none at step 0).

The alarm fires at an evaluation when, measured since the start,

* the reward rose: ``reward − reward₁ > reward_rise``, where ``reward₁`` is the first evaluation's reward
  window (steps 1..every: what the starting policy earns), and
* the correct samples' log π rose less than ``logp_rise`` nats since step 0: ``ℓ − ℓ₀ < logp_rise``.

Defaults: ``reward_rise`` 0.0 (any rise) and ``logp_rise`` 0.0 nats, so it fires when the correct samples'
log π is below its step-0 value while the reward is above its first window's: the paper's "even decreases".
Raise ``logp_rise`` (e.g. 1.0 nats) to also catch "rises only marginally" (what counts as marginal depends on
the response length: ℓ is summed over tokens); raise ``reward_rise`` above the reward's window-to-window noise
for a noisy reward. The state is recomputed from the evaluations' signals, so a resumed run answers as an
uninterrupted one; without correct samples (none of the draws was correct) or before the second reward window
it stays silent. The intervals shaded in reports share :func:`lldyn.squeeze.alarm.alarm_intervals`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from lldyn.config import check
from lldyn.rundir import TrackSummary
from lldyn.squeeze.alarm import _interval_start, alarm_intervals, recorded_or_computed

log = logging.getLogger("lldyn")

REWARD = "reward"
LOGP_CORRECT = "logp_sample_correct"
LOGP_INCORRECT = "logp_sample_incorrect"


@dataclass(frozen=True)
class LLDAlarmConfig:
    """When the LLD alarm fires (module docstring). reward_rise: the reward must rise by more than this since
    the first window (reward units); logp_rise: nats; the correct samples' mean log π must rise by less than
    this since step 0."""

    reward_rise: float = 0.0
    logp_rise: float = 0.0

    def __post_init__(self) -> None:
        check(self.reward_rise >= 0 and math.isfinite(self.reward_rise), "lld_reward_rise",
              f"must be a finite number >= 0, got {self.reward_rise}", "a reward tolerance >= 0")
        check(math.isfinite(self.logp_rise), "lld_logp_rise", f"must be finite, got {self.logp_rise}",
              "a number of nats (0.0: fire when the correct samples' log π fell)")


def _get(signals: Mapping[str, float], key: str) -> float:
    value = signals.get(key)
    return math.nan if value is None else float(value)


def lld_deltas(signals: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """What the alarm measures at the last of ``signals`` (one per evaluation, in step order, the first one
    step 0): ``d_reward`` (reward − the first earlier evaluation's reward that exists), ``d_logp_correct`` and
    ``d_logp_incorrect`` (since the first evaluation). NaN where a value is missing."""
    last, first = signals[-1], signals[0]
    earlier = [_get(s, REWARD) for s in signals[:-1]]
    base = next((r for r in earlier if not math.isnan(r)), math.nan)
    return {"d_reward": _get(last, REWARD) - base,
            "d_logp_correct": _get(last, LOGP_CORRECT) - _get(first, LOGP_CORRECT),
            "d_logp_incorrect": _get(last, LOGP_INCORRECT) - _get(first, LOGP_INCORRECT)}


def is_lazy(deltas: Mapping[str, float], config: LLDAlarmConfig = LLDAlarmConfig()) -> bool:
    """The reward rose beyond ``reward_rise`` while the correct samples' log π rose less than ``logp_rise``
    (NaN never counts)."""
    return bool(deltas["d_reward"] > config.reward_rise and deltas["d_logp_correct"] < config.logp_rise)


def lld_flags(signals: Sequence[Mapping[str, float]], config: LLDAlarmConfig = LLDAlarmConfig()) -> list[bool]:
    """Alarm state of each evaluation (signals in step order, the first at step 0)."""
    return [is_lazy(lld_deltas(signals[:i + 1]), config) if i else False for i in range(len(signals))]


class LLDAlarm:
    """Tracker callback ``fn(summary, history) -> dict`` (see ``lldyn.tracking``) for lazy likelihood
    displacement.

    Returns, for every evaluation, ``lld/alarm`` (bool), ``lld/since_step`` (the evaluation the current run of
    alarms is measured from, None when silent) and ``lld/d_reward``, ``lld/d_logp_correct``,
    ``lld/d_logp_incorrect`` (what :func:`lld_deltas` measured; absent at the first evaluation). When it fires it
    logs one warning line on the ``lldyn`` logger. Stateless (recomputed from ``history``).
    """

    def __init__(self, config: LLDAlarmConfig = LLDAlarmConfig()) -> None:
        self.config = config

    def __call__(self, summary: TrackSummary, history: Sequence[TrackSummary]) -> dict[str, Any]:
        evals = sorted({s.step: s for s in [*history, summary]}.values(), key=lambda s: s.step)
        evals = [s for s in evals if s.step <= summary.step]
        if len(evals) < 2:
            return {"lld/alarm": False, "lld/since_step": None}
        signals = [s.signals for s in evals]
        flags = lld_flags(signals, self.config)
        deltas = lld_deltas(signals)
        firing = flags[-1]
        since = _interval_start([s.step for s in evals], flags, len(flags) - 1) if firing else None
        out: dict[str, Any] = {"lld/alarm": firing, "lld/since_step": since}
        out.update({f"lld/{k}": v for k, v in deltas.items()})
        if firing:
            log.warning(
                "LLD alarm at step %d (since step %d): the reward rose %+.3f since its first window while the "
                "correct samples' log π moved %+.3f nats since step 0 (incorrect: %+.3f): lazy likelihood "
                "displacement, the negative gradients hold the correct answers down (see docs/grpo.md)",
                summary.step, since, deltas["d_reward"], deltas["d_logp_correct"], deltas["d_logp_incorrect"])
        return out


def lld_alarm(config: LLDAlarmConfig = LLDAlarmConfig()) -> LLDAlarm:
    """The LLD alarm as a tracker callback: ``Tracker(..., callbacks=[lld_alarm()])``."""
    return LLDAlarm(config)


def lld_intervals(summaries: Sequence[TrackSummary], config: LLDAlarmConfig = LLDAlarmConfig()
                  ) -> list[tuple[int, int]]:
    """Step intervals ``(start, end)`` during which the LLD alarm fired, for the report to shade: the recorded
    ``lld/alarm`` when present, otherwise recomputed from the signals with ``config``."""
    by_step = {s.step: s for s in summaries}
    steps = sorted(by_step)
    evals = [by_step[s] for s in steps]
    flags = recorded_or_computed(evals, "lld/alarm", lld_flags([e.signals for e in evals], config))
    return alarm_intervals(steps, flags)
