"""The live squeeze alarm: off-policy DPO's squeezing effect, seen in the probes while it happens.

The tracker's squeeze signals (:data:`lldyn.tracking.SIGNALS`, means over the probe prompts) at two
evaluations are compared: off-policy DPO squeezes when log π(y+) and log π(y−) both fall while the
teacher-forced argmax y* and the top-1 probability along the responses rise (Ren & Sutherland,
Sec. 3.3 and 4.2, Fig. 4: the mass a negative gradient frees on an unlikely y− goes to the argmax, not
to y+). The theory toy behind it is :mod:`lldyn.experiments.squeeze_toy`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from lldyn.config import check
from lldyn.rundir import TrackSummary

log = logging.getLogger("lldyn")

ALARM_DELTAS = ("logp_chosen", "logp_rejected", "logp_argmax", "top1")


@dataclass(frozen=True)
class SqueezeAlarmConfig:
    """When the squeeze alarm fires.

    logp_tol: nats; a mean log π (summed over response tokens) must fall, or rise, by more than this
        to count, both since the previous evaluation and since the first one.
    top1_tol: the same for the mean top-1 probability along the y+ and y− positions.
    """

    logp_tol: float = 0.05
    top1_tol: float = 1e-3

    def __post_init__(self) -> None:
        check(self.logp_tol >= 0, "logp_tol", f"must be >= 0, got {self.logp_tol}", "a tolerance in nats")
        check(self.top1_tol >= 0, "top1_tol", f"must be >= 0, got {self.top1_tol}", "a probability tolerance")


def squeeze_deltas(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """The four alarm deltas between two evaluations' signals (keys of ``lldyn.tracking.SIGNALS``).

    Returns ``logp_chosen``, ``logp_rejected``, ``logp_argmax``: changes of mean log π(y+), log π(y−),
    log π(y*); ``top1``: change of the top-1 mass, the mean of ``top1_chosen`` and ``top1_rejected``.
    A missing signal gives NaN (and so no alarm).
    """
    def get(signals: Mapping[str, float], key: str) -> float:
        value = signals.get(key)
        return math.nan if value is None else float(value)

    def top1(signals: Mapping[str, float]) -> float:
        return 0.5 * (get(signals, "top1_chosen") + get(signals, "top1_rejected"))

    out = {k: get(after, k) - get(before, k) for k in ALARM_DELTAS[:3]}
    out["top1"] = top1(after) - top1(before)
    return out


def is_squeezing(deltas: Mapping[str, float], config: SqueezeAlarmConfig = SqueezeAlarmConfig()) -> bool:
    """y+ and y− fall, y* and the top-1 mass rise, each beyond its tolerance (NaN never counts)."""
    tol = config.logp_tol
    return bool(deltas["logp_chosen"] < -tol and deltas["logp_rejected"] < -tol
                and deltas["logp_argmax"] > tol and deltas["top1"] > config.top1_tol)


def squeeze_flags(signals: Sequence[Mapping[str, float]],
                  config: SqueezeAlarmConfig = SqueezeAlarmConfig()) -> list[bool]:
    """Alarm state of each evaluation, in step order: squeezing compared with the previous one *and*
    with the first one (``signals[0]``, step 0). The first evaluation never fires."""
    flags = [False]
    for i in range(1, len(signals)):
        flags.append(is_squeezing(squeeze_deltas(signals[i - 1], signals[i]), config)
                     and is_squeezing(squeeze_deltas(signals[0], signals[i]), config))
    return flags[:len(signals)]


def _interval_start(steps: Sequence[int], flags: Sequence[bool], last: int) -> int:
    """Start of the run of alarms ending at index ``last``: the evaluation before its first alarm
    (the effect is measured from there)."""
    first = last
    while first > 0 and flags[first - 1]:
        first -= 1
    return steps[first - 1] if first > 0 else steps[first]


def alarm_intervals(steps: Sequence[int], flags: Sequence[bool]) -> list[tuple[int, int]]:
    """Step intervals ``(start, end)`` of the runs of consecutive alarms in ``flags`` (one per evaluation at
    ``steps``, in order): ``start`` is the evaluation before the first alarm of a run, ``end`` its last
    alarm's step. Shared by every alarm of this package (the squeeze alarm, :mod:`lldyn.squeeze.lld`)."""
    intervals = []
    for i, on in enumerate(flags):
        if on and (i + 1 == len(flags) or not flags[i + 1]):
            intervals.append((_interval_start(steps, flags, i), steps[i]))
    return intervals


def recorded_or_computed(evals: Sequence[TrackSummary], key: str, computed: Sequence[bool]) -> list[bool]:
    """Per evaluation, the alarm state recorded under ``key`` when present, else the recomputed one (runs
    tracked without the callback are shaded too)."""
    return [bool(e.extra[key]) if e.extra.get(key) is not None else c for e, c in zip(evals, computed)]


class SqueezeAlarm:
    """Tracker callback ``fn(summary, history) -> dict`` (see ``lldyn.tracking``) for the squeeze.

    Returns, for every evaluation, ``squeeze/alarm`` (bool) and ``squeeze/since_step`` (the step of
    the evaluation from which the current run of alarms is measured, None when silent), plus the
    four deltas since the previous evaluation ``squeeze/d_logp_chosen``, ``squeeze/d_logp_rejected``,
    ``squeeze/d_logp_argmax``, ``squeeze/d_top1`` (absent at the first evaluation). When it fires it
    logs one warning line on the ``lldyn`` logger.

    ``from_step`` is the evaluation the squeeze is measured from: the start of the preference phase.
    In a one-run SFT → DPO pipeline that is the end of SFT, not step 0: SFT first lifts y+ by many
    nats, and measured from step 0 DPO would have to undo all of it before the alarm could fire.
    Evaluations before ``from_step`` never fire.

    Stateless: the state is recomputed from ``history`` (which ends with ``summary``), so a resumed
    run gives the same answers as an uninterrupted one.
    """

    def __init__(self, config: SqueezeAlarmConfig = SqueezeAlarmConfig(), from_step: int = 0) -> None:
        self.config = config
        self.from_step = from_step

    def __call__(self, summary: TrackSummary, history: Sequence[TrackSummary]) -> dict[str, Any]:
        evals = sorted({s.step: s for s in [*history, summary]}.values(), key=lambda s: s.step)
        evals = [s for s in evals if self.from_step <= s.step <= summary.step]
        if len(evals) < 2:
            return {"squeeze/alarm": False, "squeeze/since_step": None}
        flags = squeeze_flags([s.signals for s in evals], self.config)
        steps = [s.step for s in evals]
        deltas = squeeze_deltas(evals[-2].signals, evals[-1].signals)
        firing = flags[-1]
        since = _interval_start(steps, flags, len(flags) - 1) if firing else None
        out: dict[str, Any] = {"squeeze/alarm": firing, "squeeze/since_step": since}
        out.update({f"squeeze/d_{k}": v for k, v in deltas.items()})
        if firing:
            log.warning(
                "squeeze alarm at step %d (squeezing since step %d): since step %d, log π(y+) %+.3f, "
                "log π(y−) %+.3f, log π(y*) %+.3f, top-1 prob %+.4f: the negative gradient is pushing mass "
                "into the argmax (see docs/squeezing.md)", summary.step, since, steps[-2],
                deltas["logp_chosen"], deltas["logp_rejected"], deltas["logp_argmax"], deltas["top1"])
        return out


def squeeze_alarm(config: SqueezeAlarmConfig = SqueezeAlarmConfig(), from_step: int = 0) -> SqueezeAlarm:
    """The squeeze alarm as a tracker callback: ``Tracker(..., callbacks=[squeeze_alarm()])``."""
    return SqueezeAlarm(config, from_step)


def squeeze_intervals(summaries: Sequence[TrackSummary], from_step: int = 0,
                      config: SqueezeAlarmConfig = SqueezeAlarmConfig()) -> list[tuple[int, int]]:
    """Step intervals ``(start, end)`` during which the alarm fired, for the report to shade.

    summaries: a run's probe evaluations (:meth:`lldyn.rundir.RunDir.probe_summaries`; the last one of a step
    wins); from_step: the start of the preference phase (:meth:`lldyn.rundir.RunDir.preference_start`).
    A recorded ``squeeze/alarm`` is used when present; otherwise the alarm is recomputed from the signals
    with ``config``, measured from ``from_step``, so runs tracked without the callback are shaded too.
    ``start`` is the evaluation before the first alarm of a run of alarms, ``end`` the last alarm's step.
    """
    by_step = {s.step: s for s in summaries if s.step >= from_step}
    steps = sorted(by_step)
    evals = [by_step[s] for s in steps]
    flags = recorded_or_computed(evals, "squeeze/alarm", squeeze_flags([e.signals for e in evals], config))
    return alarm_intervals(steps, flags)
