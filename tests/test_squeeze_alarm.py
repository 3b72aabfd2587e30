"""The live squeeze alarm: fires on a squeezing run, silent on SFT and on noise, intervals for the report."""
from __future__ import annotations

import logging
import random

import pytest
import torch

from lldyn.errors import LldynError
from lldyn.squeeze import (
    SqueezeAlarmConfig,
    is_squeezing,
    squeeze_alarm,
    squeeze_deltas,
    squeeze_flags,
    squeeze_intervals,
)
from lldyn.rundir import RunDir, TrackSummary, TrainRow


def signals(chosen, rejected, argmax, top1_c, top1_r):
    return {"logp_chosen": chosen, "logp_rejected": rejected, "logp_argmax": argmax, "top1_chosen": top1_c,
            "top1_rejected": top1_r, "entropy_chosen": 2.0, "entropy_rejected": 2.5}


def run_alarm(history_signals, steps=None, config=SqueezeAlarmConfig()):
    """Feed the callback one evaluation at a time, as the Tracker does; returns its outputs."""
    alarm = squeeze_alarm(config)
    steps = steps or [20 * i for i in range(len(history_signals))]
    history, outs = [], []
    for step, sig in zip(steps, history_signals):
        summary = TrackSummary(step, {}, {}, sig)
        out = alarm(summary, history + [summary])
        history.append(TrackSummary(step, {}, {}, sig, out))
        outs.append(out)
    return outs, history


# Off-policy DPO: y+ and y− fall, y* and the top-1 mass rise (paper Fig. 4), from step 20 on.
SQUEEZE = [signals(-40.0, -60.0, -10.0, 0.50, 0.40),
           signals(-39.0, -62.0, -9.5, 0.51, 0.41),     # step 20: y+ rises: DPO's early phase, no alarm
           signals(-41.0, -65.0, -8.0, 0.55, 0.45),     # step 40: y+ below step 0, all four conditions
           signals(-44.0, -70.0, -6.0, 0.60, 0.52),     # step 60: still squeezing
           signals(-43.0, -72.0, -6.5, 0.59, 0.50),     # step 80: y+ recovers a bit, y* falls: silent
           signals(-47.0, -80.0, -5.0, 0.65, 0.55)]     # step 100: squeezing again


def test_fires_on_a_squeezing_run_with_hand_worked_deltas(caplog):
    with caplog.at_level(logging.WARNING, logger="lldyn"):
        outs, _ = run_alarm(SQUEEZE)
    assert [o["squeeze/alarm"] for o in outs] == [False, False, True, True, False, True]
    assert [o["squeeze/since_step"] for o in outs] == [None, None, 20, 20, None, 80]
    # step 40 vs step 20, by hand: y+ −2, y− −3, y* +1.5, top-1 mean (0.55+0.45)/2 − (0.51+0.41)/2 = +0.04.
    assert outs[2]["squeeze/d_logp_chosen"] == pytest.approx(-2.0)
    assert outs[2]["squeeze/d_logp_rejected"] == pytest.approx(-3.0)
    assert outs[2]["squeeze/d_logp_argmax"] == pytest.approx(1.5)
    assert outs[2]["squeeze/d_top1"] == pytest.approx(0.04)
    assert "squeeze/d_top1" not in outs[0]  # nothing to compare with at the first evaluation
    lines = [r.getMessage() for r in caplog.records if r.name == "lldyn"]
    assert len(lines) == 3  # one line per firing evaluation, none when silent
    assert lines[0].startswith("squeeze alarm at step 40 (squeezing since step 20)")
    assert "log π(y+) -2.000" in lines[0] and "log π(y*) +1.500" in lines[0]


def test_silent_on_an_sft_like_run(caplog):
    # SFT: y+ rises; y− falls and the argmax and top-1 rise too (peakier), but y+ going up means no squeeze.
    sft = [signals(-40.0 + 3 * i, -60.0 - 2 * i, -10.0 + 1.0 * i, 0.5 + 0.02 * i, 0.4 + 0.01 * i) for i in range(8)]
    with caplog.at_level(logging.WARNING, logger="lldyn"):
        outs, _ = run_alarm(sft)
    assert not any(o["squeeze/alarm"] for o in outs)
    assert not caplog.records
    assert squeeze_intervals([TrackSummary(20 * i, {}, {}, s) for i, s in enumerate(sft)]) == []


def test_each_condition_is_needed():
    base = {"logp_chosen": -1.0, "logp_rejected": -1.0, "logp_argmax": 1.0, "top1": 0.01}
    assert is_squeezing(base)
    for key, value in [("logp_chosen", 0.5), ("logp_rejected", 0.5), ("logp_argmax", -0.5), ("top1", -0.01),
                       ("logp_chosen", float("nan"))]:
        assert not is_squeezing({**base, key: value}), key


def test_silent_on_noise_below_tolerance_and_fires_above_it():
    rng = random.Random(0)
    cfg = SqueezeAlarmConfig(logp_tol=0.05, top1_tol=1e-3)

    def run(scale):
        """A steady drift in the squeeze direction (0.004·scale nats per evaluation) plus ±0.004 noise."""
        hist = []
        for i in range(12):
            noise = [rng.uniform(-0.004, 0.004) for _ in range(3)]
            hist.append(signals(-40.0 - scale * 0.004 * i + noise[0], -60.0 - scale * 0.004 * i + noise[1],
                                -10.0 + scale * 0.004 * i + noise[2], 0.5 + scale * 8e-5 * i, 0.4 + scale * 8e-5 * i))
        return squeeze_flags(hist, cfg)

    # Per evaluation the moves stay below the tolerances (≤ 0.012 nats, 8e-5 top-1): silent.
    assert not any(run(1.0))
    # 20x the drift (0.08 ± 0.008 nats, 1.6e-3 top-1 per evaluation): fires at every evaluation after step 0.
    assert run(20.0) == [False] + [True] * 11
    assert SqueezeAlarmConfig(logp_tol=0.0).logp_tol == 0.0
    with pytest.raises(LldynError, match="logp_tol"):
        SqueezeAlarmConfig(logp_tol=-1.0)


def test_compared_with_step_zero_as_well_as_the_previous_evaluation():
    # y+ climbs a lot, then falls a little while y* and top-1 rise: a fall vs the previous evaluation only.
    hist = [signals(-40.0, -60.0, -10.0, 0.5, 0.4), signals(-30.0, -62.0, -9.0, 0.52, 0.42),
            signals(-32.0, -64.0, -8.0, 0.54, 0.44)]
    assert is_squeezing(squeeze_deltas(hist[1], hist[2]))
    assert squeeze_flags(hist) == [False, False, False]


def test_stateless_resume_gives_the_same_answer():
    outs, history = run_alarm(SQUEEZE)
    # A resumed run rebuilds its history from metrics.jsonl rows (TrackSummary.from_json).
    rows = [s.to_json() for s in history]
    reloaded = [TrackSummary.from_json(r) for r in rows]
    again = squeeze_alarm()(reloaded[3], reloaded[:4])
    assert again == outs[3]


def test_intervals_for_the_report():
    outs, history = run_alarm(SQUEEZE)
    rows = list(history)
    assert squeeze_intervals(rows) == [(20, 60), (80, 100)]
    # Without recorded alarm keys (a run tracked without the callback) the alarm is recomputed from signals.
    bare = [TrackSummary(s.step, s.family_mean, s.family_delta, s.signals) for s in rows]
    assert squeeze_intervals(bare) == [(20, 60), (80, 100)]
    # Recorded alarms win (a run made with other tolerances), and a repeated step keeps its last row.
    last = rows[-1]
    rows[-1] = TrackSummary(last.step, {}, {}, last.signals, {**last.extra, "squeeze/alarm": False})
    assert squeeze_intervals(rows) == [(20, 60)]
    again = TrackSummary(last.step, {}, {}, last.signals, {**last.extra, "squeeze/alarm": True})
    assert squeeze_intervals(rows + [again]) == [(20, 60), (80, 100)]
    assert squeeze_intervals([]) == []


def test_alarm_in_a_real_tracker_stays_silent_during_sft(tiny_fresh, tmp_path):
    """A real (tiny) SFT run through the Tracker: the alarm's keys land in metrics.jsonl, it never fires."""
    from lldyn.losses import sft_loss
    from lldyn.probes import Probe, ProbeSet
    from lldyn.rundir import RunDir
    from lldyn.scoring import Encoder, ScoreConfig, collate, sequence_logps
    from lldyn.tracking import Tracker

    model, tok = tiny_fresh.model, tiny_fresh.tokenizer
    prompt, chosen, rejected = "Capital of France?", "Paris is the capital.", "I like turtles."
    probes = ProbeSet((Probe("p0", "chosen", prompt, chosen), Probe("p0", "rejected", prompt, rejected)))
    run = RunDir.create(tmp_path / "run", {"test": "squeeze-alarm"})
    tracker = Tracker(model, tok, probes, run, every=1, callbacks=[squeeze_alarm()], initial_sample=False)
    batch = collate([Encoder(tok, ScoreConfig()).pair(prompt, chosen)], tok.pad_token_id)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    tracker.maybe_track(0)
    for step in range(1, 5):
        loss = sft_loss(sequence_logps(model, batch).logps).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        tracker.maybe_track(step)
    rows = run.probe_summaries()
    assert [r.extra["squeeze/alarm"] for r in rows] == [False] * 5
    assert rows[-1].signals["logp_chosen"] > rows[0].signals["logp_chosen"] + 1.0  # SFT lifted y+
    assert squeeze_intervals(rows, run.preference_start()) == []


def test_in_an_sft_then_dpo_run_the_squeeze_is_measured_from_the_start_of_dpo(tmp_path):
    """SFT lifts y+ by 10 nats first; the DPO phase that follows squeezes. Measured from step 0, DPO would
    have to undo SFT's rise before the alarm could fire; measured from the end of SFT it fires."""
    sft = [signals(-50.0 + 5 * i, -70.0 + 3 * i, -12.0 + i, 0.45 + 0.02 * i, 0.35 + 0.02 * i) for i in range(3)]
    dpo = [signals(-40.0 - 2 * i, -64.0 - 5 * i, -10.0 + i, 0.49 + 0.02 * i, 0.39 + 0.02 * i) for i in range(1, 4)]
    evals, steps = sft + dpo, [0, 10, 20, 30, 40, 50]
    assert not any(o["squeeze/alarm"] for o in run_alarm(evals, steps)[0])  # from step 0: y+ still above it
    history, outs = [], []
    alarm = squeeze_alarm(from_step=20)
    for step, sig in zip(steps, evals):
        summary = TrackSummary(step, {}, {}, sig)
        outs.append(alarm(summary, history + [summary]))
        history.append(TrackSummary(step, {}, {}, sig, outs[-1]))
    assert [o["squeeze/alarm"] for o in outs] == [False, False, False, True, True, True]
    assert outs[3]["squeeze/since_step"] == 20
    # The report finds the phase start in the training rows (phase names) when it recomputes the alarm.
    run = RunDir.create(tmp_path / "run", {"test": "phase-start"})
    for s in range(1, 51):
        run.log(TrainRow(s, "sft" if s <= 20 else "dpo", s, 0.5, 1e-3, 1.0, 0.1))
    for st, sig in zip(steps, evals):
        run.log(TrackSummary(st, {}, {}, sig))
    assert run.preference_start() == 20
    assert squeeze_intervals(run.probe_summaries(), run.preference_start()) == [(20, 50)]


def test_lldyn_train_attaches_the_alarm_to_preference_runs_only(tmp_path):
    from lldyn.cli import main
    from lldyn.rundir import RunDir
    from lldyn.train import TrainConfig, train

    probes = tmp_path / "probes.jsonl"
    assert main(["probes", "build", "--data", "builtin", "--out", str(probes), "--limit", "2"]) == 0
    base = dict(model="tiny-random-llama", data="builtin:train", limit=8, batch_size=2, max_length=96,
                max_prompt_tokens=48, lr=1e-3, probes=str(probes), eval_every=1, initial_sample=False)
    for method, has_alarm in (("sft", False), ("dpo", True), ("sft_dpo", True)):
        cfg = TrainConfig(method=method, steps=2, sft_steps=2, out=str(tmp_path / method), **base)
        train(cfg, progress=False)
        probe_rows = [s.to_json() for s in RunDir(cfg.out).probe_summaries()]
        assert all(("squeeze/alarm" in r) == has_alarm for r in probe_rows), method
        if method == "sft_dpo":  # silent (no evaluation to compare with) until the DPO phase starts at step 2
            assert [r["squeeze/since_step"] is None and r["squeeze/alarm"] is False
                    for r in probe_rows if r["step"] <= 2] == [True, True, True]
            assert "squeeze/d_logp_chosen" not in [r for r in probe_rows if r["step"] == 2][0]
