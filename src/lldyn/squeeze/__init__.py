"""The squeezing effect in real runs (Ren & Sutherland, Sec. 3.3): seen live, and predicted before training.

:mod:`lldyn.squeeze.alarm`: the live alarm, a tracker callback that fires while y+ and y− fall and the
argmax y* rises. :mod:`lldyn.squeeze.risk`: a per-pair squeeze risk score at step 0 and the CHES baseline.
:mod:`lldyn.squeeze.nthr`: GRPO's counterpart (Deng et al. 2025): NTHR's per-token weights and the per-prompt LLD
risk (GWHES) before training.
The theory toy that explains the effect is an experiment: :mod:`lldyn.experiments.squeeze_toy`.
:mod:`lldyn.squeeze.lld`: GRPO's live alarm for lazy likelihood displacement (the reward rises while the correct
samples' log π does not).
"""
from lldyn.squeeze.alarm import (SqueezeAlarm, SqueezeAlarmConfig, alarm_intervals, is_squeezing, squeeze_alarm,
                                 squeeze_deltas, squeeze_flags, squeeze_intervals)
from lldyn.squeeze.lld import LLDAlarm, LLDAlarmConfig, is_lazy, lld_alarm, lld_deltas, lld_flags, lld_intervals
from lldyn.squeeze.risk import PairRisk, SqueezeRiskConfig, rank_pairs, squeeze_risk

__all__ = ["LLDAlarm", "LLDAlarmConfig", "PairRisk", "SqueezeAlarm", "SqueezeAlarmConfig", "SqueezeRiskConfig",
           "alarm_intervals", "is_lazy", "is_squeezing", "lld_alarm", "lld_deltas", "lld_flags", "lld_intervals",
           "rank_pairs", "squeeze_alarm", "squeeze_deltas", "squeeze_flags", "squeeze_intervals", "squeeze_risk"]
