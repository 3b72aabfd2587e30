"""What moved: per-phase changes of a run's probe evaluations, in words, on hand-written metrics rows."""
from __future__ import annotations

from lldyn.rundir import RunDir, TrackSummary, TrainRow
from lldyn.summary import PhaseChange, phase_changes, what_moved


def _evaluation(step: int, chosen: float, rejected: float, argmax: float, top1: float) -> TrackSummary:
    means = {"chosen": chosen, "rejected": rejected, "argmax": argmax}
    return TrackSummary(step, means, {}, {"top1_chosen": top1, "top1_rejected": top1})


def _sft_then_dpo(path) -> RunDir:
    """SFT steps 1-2, DPO steps 3-4; probes evaluated at steps 0, 2 and 4."""
    run = RunDir.create(path, {"method": "sft+dpo"})
    run.log(_evaluation(0, -10.0, -12.0, -3.0, 0.5))
    for step, phase in ((1, "sft"), (2, "sft")):
        run.log(TrainRow(step, phase, step, 1.0, 1e-3, 0.0, 0.0))
    run.log(_evaluation(2, -8.0, -11.5, -2.5, 0.6))
    for step, phase in ((3, "dpo"), (4, "dpo")):
        run.log(TrainRow(step, phase, step - 2, 1.0, 1e-3, 0.0, 0.0))
    run.log(_evaluation(4, -9.0, -20.0, -1.5, 0.75))
    return run


def test_phase_changes_span_the_evaluations_around_each_phase(tmp_path):
    sft, dpo = phase_changes(_sft_then_dpo(tmp_path / "run").path)
    assert sft == PhaseChange("sft", 0, 2, {"chosen": 2.0, "rejected": 0.5, "argmax": 0.5}, sft.top1_delta)
    assert dpo == PhaseChange("dpo", 2, 4, {"chosen": -1.0, "rejected": -8.5, "argmax": 1.0}, dpo.top1_delta)
    assert (round(sft.top1_delta, 9), round(dpo.top1_delta, 9)) == (0.1, 0.15)


def test_what_moved_is_one_line_per_phase_tagged_by_run_when_asked(tmp_path):
    a = _sft_then_dpo(tmp_path / "a").path
    b = _sft_then_dpo(tmp_path / "b").path
    lines = what_moved([a, b], tagged=True)
    assert len(lines) == 4
    assert lines[0] == ("[a] SFT (steps 0→2): chosen +2.00, rejected +0.50, argmax +0.50 nats; top-1 prob +0.100"
                        " — y+ up")
    assert lines[1] == ("[a] DPO (steps 2→4): chosen -1.00, rejected -8.50, argmax +1.00 nats; top-1 prob +0.150"
                        " — squeezing: y+ and y− fall while the argmax y* rises")
    assert [line.removeprefix("[b] ") for line in lines[2:]] == [line.removeprefix("[a] ") for line in lines[:2]]
    assert what_moved([a]) == [line.removeprefix("[a] ") for line in lines[:2]]
