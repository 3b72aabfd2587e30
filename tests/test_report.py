"""The report: hand-worked curves, several runs, a self-contained HTML that escapes data text."""
from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lldyn.probes import Probe, ProbeSet
from lldyn.report import DELTA_FIGURE, LOGP_FIGURE, SIGNALS_FIGURE, SQUEEZE_FIGURE, family_curves, load_run, run_label, write_report
from lldyn.rundir import RunDir
from lldyn.tracking import Tracker

SCRIPT = "<script>alert('pwned')</script>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_family_curves_hand_worked():
    rows = [{"step": s, "prompt_id": p, "family": "chosen", "logp": v}
            for s, vals in ((0, (-4.0, -3.0, -2.0, -1.0)), (10, (-6.0, -3.0, -2.0, -1.0)))
            for p, v in zip("abcd", vals)]
    steps, mean, q25, q75 = family_curves(rows)["chosen"]
    assert steps == [0, 10]
    assert mean == [-2.5, -3.0]
    # numpy-style linear quantiles of (-4, -3, -2, -1): position 0.75 → -3.25, position 2.25 → -1.75
    assert q25 == [-3.25, -3.75] and q75 == [-1.75, -1.75]
    steps, mean, q25, q75 = family_curves(reversed(rows), delta=True)["chosen"]  # row order does not matter
    # only prompt a moved (by −2): deltas (−2, 0, 0, 0) → mean −0.5, 25th percentile −2 + 0.75·2 = −0.5, 75th 0
    assert mean == [0.0, -0.5] and q25 == [0.0, -0.5] and q75 == [0.0, 0.0]


def test_run_label_from_config(tmp_path):
    assert run_label({"label": "mine"}, tmp_path) == "mine"
    assert run_label({"method": "dpo", "lr": 5e-6}, tmp_path / "r1") == "dpo lr=5e-06 (r1)"
    assert run_label({}, tmp_path / "r2") == "r2"


@pytest.fixture(scope="module")
def tracked_runs(tmp_path_factory):
    """Two tiny runs (an "sft"- and a "dpo"-labelled one) tracking probes whose texts carry a <script>."""
    import torch

    from lldyn.models import ModelConfig, load_model

    base = tmp_path_factory.mktemp("runs")
    prompt = f"Say {SCRIPT} please?"
    probes = ProbeSet((Probe("x<1>", "chosen", prompt, f"Sure: {SCRIPT}"), Probe("x<1>", "rejected", prompt, "No & no."),
                       Probe("y", "chosen", "Capital of France?", "Paris."),
                       Probe("y", "rejected", "Capital of France?", "Rome.")))
    paths = []
    for i, (label, lr) in enumerate(((f"sft {SCRIPT}", 0.02), ("dpo", 0.05))):
        lm = load_model(ModelConfig(name="tiny-random-llama"))
        run = RunDir.create(base / f"run{i}", {"label": label, "lr": lr})
        tracker = Tracker(lm.model, lm.tokenizer, probes, run=run, every=5, initial_sample=False)
        gen = torch.Generator().manual_seed(i)
        for step in (0, 5, 10):
            if step:
                with torch.no_grad():
                    for p in lm.model.parameters():
                        p.add_(lr * torch.randn(p.shape, generator=gen))
            tracker.track(step)
        paths.append(run.path)
    return paths


def test_report_escapes_data_text_and_is_self_contained(tracked_runs, tmp_path):
    out = tmp_path / "report"
    page = write_report(tracked_runs, out)
    assert page == out / "report.html"
    text = page.read_text()
    assert "<script" not in text.lower()  # the report itself has no scripts; every <script> came from data
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in text
    assert "Sure: &lt;script&gt;" in text and "x&lt;1&gt;" in text and "No &amp; no." in text
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)  # self-contained
    for name in (SQUEEZE_FIGURE, LOGP_FIGURE, DELTA_FIGURE, SIGNALS_FIGURE):
        png = (out / "figures" / name).read_bytes()
        assert png.startswith(PNG_MAGIC)
        assert base64.b64encode(png).decode() in text  # the figure drawn is the figure embedded


def test_last_step_table_shows_each_runs_mean_change(tracked_runs, tmp_path):
    text = write_report(tracked_runs, tmp_path).read_text()
    table = text.split("Mean change of log π at the last step")[1].split("</table>")[0]
    runs = [load_run(p) for p in tracked_runs]
    for fam in ("chosen", "rejected", "argmax"):
        cells = re.search(rf"<tr><th>{fam}</th>(.*?)</tr>", table).group(1)
        shown = [float(c) for c in re.findall(r"<td>([^<]*)</td>", cells)]
        expect = []
        for run in runs:
            first = {r["prompt_id"]: r["logp"] for r in run.table if r["family"] == fam and r["step"] == 0}
            last = [r["logp"] - first[r["prompt_id"]] for r in run.table if r["family"] == fam and r["step"] == 10]
            expect.append(sum(last) / len(last))
        assert shown == [pytest.approx(e, abs=0.006) for e in expect]  # printed with two decimals
    assert "step 10" in table


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "lldyn.cli", *args], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                               "HOME": str(Path.home())})
    return proc.returncode, proc.stdout, proc.stderr


def test_cli_report_two_runs_side_by_side(tracked_runs, tmp_path):
    code, stdout, stderr = run_cli("report", *map(str, tracked_runs), "--out", str(tmp_path / "both"))
    assert code == 0, stderr
    assert "report.html" in stdout
    text = (tmp_path / "both" / "report.html").read_text()
    assert "sft &lt;script&gt;" in text and "<li>dpo:" in text  # both runs, labelled from their config.json
    assert "Example probes of dpo" in text


@pytest.mark.parametrize("case", ["missing_run", "no_table"])
def test_cli_report_bad_input(tracked_runs, tmp_path, case):
    run = tmp_path / "empty_run"
    if case == "no_table":
        RunDir.create(run, {"label": "nothing tracked"})
    code, _, stderr = run_cli("report", str(tracked_runs[0]), str(run), "--out", str(tmp_path / "out"))
    assert code == 2 and "Traceback" not in stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("lldyn report: error:") and str(run) in line
    assert ("run directory not found" if case == "missing_run" else "no probe table") in line
    assert not (tmp_path / "out").exists()  # nothing drawn before every run was read


def test_report_marks_the_squeeze_alarm_interval(tracked_runs, tmp_path):
    """A run whose squeeze alarm fired at step 10 (since step 5) gets that interval listed and hatched."""
    import json
    import shutil

    from lldyn.report import squeeze_summary

    squeezed = tmp_path / "squeezed"
    shutil.copytree(tracked_runs[1], squeezed)
    with open(squeezed / "metrics.jsonl", "a") as f:  # later rows of a step win
        for step, alarm in ((0, False), (5, False), (10, True)):
            f.write(json.dumps({"step": step, "event": "probes", "squeeze/alarm": alarm}) + "\n")
    runs = [load_run(tracked_runs[0]), load_run(squeezed)]
    assert runs[0].squeeze_intervals == [] and runs[1].squeeze_intervals == [(5, 10)]
    summary = squeeze_summary(runs)
    assert "did not fire" in summary and "squeeze alarm steps 5–10" in summary
    page = write_report([tracked_runs[0], squeezed], tmp_path / "report").read_text()
    assert "squeeze alarm steps 5–10" in page
    plain = write_report([tracked_runs[0], tracked_runs[1]], tmp_path / "plain")
    # the hatching changes the drawn figure
    assert (tmp_path / "report" / "figures" / LOGP_FIGURE).read_bytes() != (plain.parent / "figures" / LOGP_FIGURE).read_bytes()
