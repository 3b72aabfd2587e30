"""``lldyn train --report-to``: the scalars of metrics.jsonl, read back from TensorBoard's event files."""
from __future__ import annotations

import json
import math

import pytest

from lldyn.cli import main

TINY_DPO = ["train", "--model", "tiny-random-llama", "--data", "builtin:train", "--limit", "8", "--steps", "3",
            "--batch-size", "2", "--max-length", "96", "--max-prompt-tokens", "48", "--lr", "1e-3",
            "--eval-every", "2", "--no-initial-sample"]


def test_tensorboard_gets_the_same_scalars_as_metrics_jsonl(tmp_path, builtin_probes):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(TINY_DPO + ["--probes", str(builtin_probes), "--report-to", "tensorboard", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected: dict[str, dict[int, float]] = {}
    for row in rows:
        for key, value in row.items():
            if key not in ("step", "event") and isinstance(value, (int, float)) and math.isfinite(value):
                expected.setdefault(key, {})[row["step"]] = float(value)
    # what a user reads: losses, family means and deltas, squeeze signals and the alarm
    for key in ("loss", "chosen_logp", "family_mean/chosen", "family_delta/rejected", "signal/logp_argmax",
                "squeeze/alarm"):
        assert key in expected, sorted(expected)
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == sorted(expected)
    for key, by_step in expected.items():
        got = {e.step: e.value for e in events.Scalars(key)}
        assert sorted(got) == sorted(by_step), key
        for step, value in by_step.items():  # event files hold float32
            assert got[step] == pytest.approx(value, rel=1e-6, abs=1e-6), (key, step)
    assert sorted(expected["family_mean/chosen"]) == [0, 2, 3] and sorted(expected["loss"]) == [1, 2, 3]
    config = json.loads((out / "config.json").read_text())
    assert config["report_to"] == "tensorboard"


def test_report_to_refusals_are_one_line_and_write_nothing(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    for value, message in (("wandb", "--report-to wandb needs the package wandb, which is not installed"),
                           ("mlflow", "unknown report_to 'mlflow'")):
        out = tmp_path / value
        assert main(TINY_DPO + ["--report-to", value, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "'report_to'" in err[0], err
        assert not out.exists()


def test_resuming_may_change_report_to(tmp_path):
    """Where rows are also sent is not part of the run: a run without --report-to resumes with it."""
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    out = tmp_path / "run"
    steps = TINY_DPO.index("--steps") + 1
    first = TINY_DPO[:steps] + ["2"] + TINY_DPO[steps + 1:] + ["--checkpoint-every", "1", "--out", str(out)]
    assert main(first) == 0
    assert "report_to" not in json.loads((out / "config.json").read_text())
    assert main(first + ["--resume", "--report-to", "tensorboard"]) == 0
    assert any((out / "tensorboard").iterdir())
