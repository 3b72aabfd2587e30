"""The one-command pipelines: lldyn demo and lldyn reproduce sft|dpo|extend (shortened, tiny model)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import requires_smollm2
from lldyn.rundir import RunDir
from lldyn.summary import phase_changes

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lldyn.cli", *args], cwd=cwd, capture_output=True, text=True, env=ENV)


def test_demo_quick_runs_sft_then_dpo_and_reports(tmp_path):
    proc = cli("demo", "--quick", "--model", "tiny-random-llama", "--out", "demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "demo"
    assert (out / "report.html").is_file() and (out / "probes.jsonl").is_file()
    sft, dpo = RunDir(out / "sft"), RunDir(out / "dpo")
    assert sft.config()["method"] == "sft" and dpo.config()["method"] == "dpo"
    assert dpo.config()["model"] == str(Path("demo") / "sft")  # DPO starts from the SFT run
    assert "What moved" in proc.stdout and "SFT (steps" in proc.stdout and "DPO (steps" in proc.stdout
    for run in (sft, dpo):  # the repeater is on in the demo: greedy generations at every evaluation, within budget
        generations = run.generations()
        assert {r.step for r in generations} == {s.step for s in run.probe_summaries()}
        assert len({r.prompt_id for r in generations}) == 4 and max(r.n_tokens for r in generations) <= 8
    assert "Greedy generations over training (the repeater)" in (out / "report.html").read_text()
    # Rerunning the finished demo resumes (nothing retrained) and reports again.
    again = cli("demo", "--quick", "--model", "tiny-random-llama", "--out", "demo", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [r.step for r in sft.train_rows()] == [1, 2, 3, 4]


@pytest.mark.parametrize("experiment", ["sft", "dpo", "extend"])
def test_reproduce_configs_complete_shortened(tmp_path, experiment):
    proc = cli("reproduce", experiment, "--quick", "--model", "tiny-random-llama", "--data", "builtin:train",
               "--out", "exp", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "exp"
    held = [json.loads(x)["id"] for x in (out / "data" / "held_out.jsonl").read_text().splitlines()]
    train_ids = [json.loads(x)["id"] for x in (out / "data" / "train.jsonl").read_text().splitlines()]
    assert held and not set(held) & set(train_ids)
    runs = ["baseline", "extend"] if experiment == "extend" else [experiment]
    for name in runs:
        run = RunDir(out / name)
        assert run.config()["data"] == str(Path("exp") / "data" / "train.jsonl")
        assert phase_changes(run.path), name
    assert (out / "report.html").is_file()
    if experiment == "sft":
        assert not (out / "held_out_dpo.jsonl").exists()
        return
    if experiment == "dpo":  # reproduce dpo generates at every evaluation (the repeater)
        assert {r.step for r in RunDir(out / "dpo").generations()} == {s.step for s in RunDir(out / "dpo").probe_summaries()}
    # What the DPO phase did to the held-out prompts: y+, y− and y* at the phase's start and end, per run.
    rows = [json.loads(x) for x in (out / "held_out_dpo.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * len(held) * len(runs)
    assert {(r["run"], r["prompt_id"], r["kind"]) for r in rows} == {
        (name, pid, kind) for name in runs for pid in held for kind in ("chosen", "rejected", "argmax")}
    from lldyn.experiments.reproduce import preference_phase_models
    from lldyn.data import load_preferences
    from lldyn.scoring import ScoreRequest, score

    cfg, start, end = preference_phase_models(out / runs[0])
    first = load_preferences(str(out / "data" / "held_out.jsonl"))[0]
    for load, key in ((start, "before"), (end, "after")):
        lm = load()
        res = score(lm.model, lm.tokenizer, [ScoreRequest(first.prompt, first.chosen)], cfg.scoring())[0]
        row = next(r for r in rows if r["run"] == runs[0] and r["prompt_id"] == first.id and r["kind"] == "chosen")
        assert row[key] == pytest.approx(res.logp, abs=1e-4)
    assert "held-out prompts (never trained on), over the DPO phase" in proc.stdout
    assert (out / "figures" / "held_out_dpo.png").read_bytes().startswith(b"\x89PNG")
    assert "Held-out prompts over the DPO phase" in (out / "report.html").read_text()


def test_reproduce_ships_gpu_configs_with_the_papers_hyperparameters():
    from lldyn.experiments.reproduce import configs_dir
    from lldyn.config import read_toml

    for name in ("qwen2.5-0.5b-dpo", "pythia-410m-extend"):
        raw = read_toml(configs_dir() / f"{name}.toml")
        for section in [s for s in raw if s != "experiment"]:
            t = raw[section]
            assert (t["optimizer"], t["lr"], t["warmup_steps"], t["max_grad_norm"], t["batch_size"], t["beta"],
                    t["max_length"], t["max_prompt_tokens"]) == ("rmsprop", 5e-7, 150, 10.0, 4, 0.1, 512, 256)


def test_reproduce_test_data_holds_out_the_builtin_test_split_with_its_gold_answers(tmp_path):
    """--test-data builtin:test: every pair read is trained on, the held-out pairs are the built-in test split and
    keep their answer fields (for lldyn judge --judge reference); data that overlaps the training pairs is refused."""
    from lldyn.data import load_preferences
    from lldyn.errors import LldynError
    from lldyn.experiments.reproduce import load_experiment, set_up

    e = load_experiment("extend", tmp_path / "exp", model="tiny-random-llama", data="builtin:train", quick=True,
                        test_data="builtin:test")
    assert e.config.test_data == "builtin:test"
    assert set_up(e).startswith("24 training pairs, 49 held out")
    def rows(path):
        return [json.loads(x) for x in path.read_text().splitlines()]

    test = load_preferences("builtin:test")
    assert [r["id"] for r in rows(e.held_out_file)] == [p.id for p in test]
    assert [r["id"] for r in rows(e.train_file)] == [p.id for p in load_preferences("builtin:train", limit=24)]
    for row, pair in zip(rows(e.held_out_file), test):
        assert row.get("answer") == pair.extra.get("answer")
        assert row.get("answer_aliases") == pair.extra.get("answer_aliases")
    clash = load_experiment("dpo", tmp_path / "clash", model="tiny-random-llama", data="builtin:train", quick=True,
                            test_data="builtin:train")
    with pytest.raises(LldynError, match="also a training pair"):
        set_up(clash)
    assert not (tmp_path / "clash").exists()


def test_reproduce_missing_data_is_one_clear_error(tmp_path):
    proc = cli("reproduce", "dpo", "--data", "nope.jsonl", "--out", "exp", cwd=tmp_path)
    assert proc.returncode == 2 and "nope.jsonl" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "exp").exists()


@requires_smollm2
@pytest.mark.slow
def test_demo_claims_on_smollm2_shortened(tmp_path):
    """The demo's configuration with 8 probe prompts instead of 32: SFT lifts y+ and y_j+; DPO squeezes:
    y+ and y− fall while the argmax y* and the top-1 mass rise (docs/results.md has the full demo's numbers)."""
    from lldyn.experiments.demo import default_config_path

    text = default_config_path().read_text()
    (tmp_path / "demo.toml").write_text(text.replace("probe_prompts = 32", "probe_prompts = 8"))
    proc = cli("demo", "--config", "demo.toml", "--out", "demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (sft,) = phase_changes(tmp_path / "demo" / "sft")
    (dpo,) = phase_changes(tmp_path / "demo" / "dpo")
    assert sft.delta["chosen"] > 0 and sft.delta["other_chosen"] > 0
    assert dpo.delta["chosen"] < 0 and dpo.delta["rejected"] < dpo.delta["chosen"]
    assert dpo.delta["argmax"] > 0 and dpo.top1_delta > 0
    assert "squeezing" in proc.stdout
