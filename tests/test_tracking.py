"""Live tracking: values equal the engine's, argmax = the engine's y*, schedule, deltas, resume."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lldyn.data import load_preferences
from lldyn.errors import LldynError
from lldyn.generation import GenerationConfig, generate
from lldyn.probes import FAMILIES, STATIC_FAMILIES, ProbeSet, build_probes
from lldyn.rephrase import RuleRephraser
from lldyn.rundir import RunDir
from lldyn.scoring import Encoder, ScoreConfig, ScoreRequest, argmax_text, score
from lldyn.testing import naive_logp
from lldyn.distributed import Processes
from lldyn.rundir import INITIAL_SAMPLES, TrackSummary
from lldyn.tracking import SIGNALS, Tracker

GEN = GenerationConfig(max_new_tokens=12)  # short initial samples keep the tiny tests fast


def make_probes(limit: int = 3, seed: int = 0) -> ProbeSet:
    pairs = load_preferences("builtin")
    train = [p for p in pairs if p.extra.get("split") != "test"]
    test = [p for p in pairs if p.extra.get("split") == "test"]
    return build_probes(train, test, RuleRephraser(train), limit=limit, seed=seed)


@pytest.fixture(scope="module")
def probes() -> ProbeSet:
    return make_probes()


def table_at(run: RunDir, step: int) -> dict[tuple[str, str], dict]:
    return {(r["prompt_id"], r["family"]): r for r in run.probe_table() if r["step"] == step}


def perturb(model, seed: int, scale: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def test_rows_have_the_columns_and_equal_the_engine(tiny_fresh, probes, tmp_path):
    lm = tiny_fresh
    tracker = Tracker(lm.model, lm.tokenizer, probes, run=tmp_path / "run", generation_config=GEN)
    tracker.track(0)
    run = RunDir(tmp_path / "run")
    config = run.config()  # a bare path still gets a config.json that describes the tracking
    assert config["kind"] == "tracker" and config["every"] == 20 and config["score"]["max_length"] == 1024
    assert config["probes_sha256"] == probes.without_families(["initial_sample"]).fingerprint()
    rows = run.probe_table()
    for r in rows:
        assert {"step", "prompt_id", "family", "logp", "n_tokens"} <= set(r)
    got = table_at(run, 0)
    # every family (static, argmax, initial_sample) for every prompt
    assert set(got) == {(pid, f) for pid in probes.prompt_ids for f in FAMILIES}
    samples = [json.loads(line) for line in (run.path / INITIAL_SAMPLES).read_text().splitlines()]
    assert [s["prompt_id"] for s in samples] == probes.prompt_ids
    # the engine, called directly on the same weights, one request at a time
    enc = Encoder(lm.tokenizer, ScoreConfig())
    for p in probes:
        (res,) = score(lm.model, lm.tokenizer, [ScoreRequest(p.prompt, p.response)])
        row = got[(p.prompt_id, p.family)]
        assert row["logp"] == pytest.approx(res.logp, abs=1e-4) and row["n_tokens"] == res.n_tokens
        assert row["logp"] == pytest.approx(naive_logp(lm.model, enc.pair(p.prompt, p.response))[0], abs=1e-4)
        assert row["mean_logp"] == pytest.approx(res.logp / res.n_tokens, abs=1e-5)
    for s in samples:  # initial_sample = the starting model's own greedy response, scored like any probe
        prompt = probes.get(s["prompt_id"], "chosen").prompt
        assert s["response"] == generate(lm.model, lm.tokenizer, [prompt], GEN)[0]
        (res,) = score(lm.model, lm.tokenizer, [ScoreRequest(prompt, s["response"])])
        assert got[(s["prompt_id"], "initial_sample")]["logp"] == pytest.approx(res.logp, abs=1e-4)


def test_argmax_family_is_the_engines_y_star(tiny, probes):
    tracker = Tracker(tiny.model, tiny.tokenizer, probes, initial_sample=False)
    tracker.track(0)
    rows = {(r["prompt_id"], r["family"]): r for r in tracker.last_rows}
    enc = Encoder(tiny.tokenizer, ScoreConfig())
    for pid in probes.prompt_ids:
        chosen = probes.get(pid, "chosen")
        (res,) = score(tiny.model, tiny.tokenizer, [ScoreRequest(chosen.prompt, chosen.response)])
        row = rows[(pid, "argmax")]
        assert row["logp"] == pytest.approx(res.argmax_logp, abs=1e-5)
        assert row["text"] == argmax_text(tiny.tokenizer, res)
        assert row["n_tokens"] == res.n_tokens == rows[(pid, "chosen")]["n_tokens"]
        # and the slow reference: log π(y*) = Σ_t max_v log π(v | x, y+_<t)
        assert row["logp"] == pytest.approx(naive_logp(tiny.model, enc.pair(chosen.prompt, chosen.response))[1], abs=1e-4)
        assert row["logp"] >= rows[(pid, "chosen")]["logp"]  # y* is the per-position argmax: never below y+


def test_schedule_summaries_deltas_signals_and_callbacks(tiny_fresh, probes, tmp_path):
    lm = tiny_fresh
    seen = []

    def callback(summary, history):
        seen.append((summary.step, [h.step for h in history]))
        return {"my/flag": float(summary.step)}

    tracker = Tracker(lm.model, lm.tokenizer, probes, run=tmp_path / "run", every=2, callbacks=[callback],
                      generation_config=GEN)
    tracked = []
    for step in range(6):
        if step == 3:
            perturb(lm.model, seed=1)  # "training" between evaluations
        if tracker.maybe_track(step) is not None:
            tracked.append(step)
    assert tracked == [0, 2, 4]
    assert seen == [(0, [0]), (2, [0, 2]), (4, [0, 2, 4])]
    run = RunDir(tmp_path / "run")
    metrics = [m.to_json() for m in run.probe_summaries()]
    assert [m["step"] for m in metrics] == [0, 2, 4] and metrics[1]["my/flag"] == 2.0
    base, now = table_at(run, 0), table_at(run, 4)
    assert table_at(run, 2) == {k: {**v, "step": 2} for k, v in base.items()}  # nothing changed before step 3
    last = TrackSummary.from_json(metrics[-1])
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    for fam in FAMILIES:
        pids = probes.prompt_ids
        assert last.family_mean[fam] == pytest.approx(mean([now[(p, fam)]["logp"] for p in pids]), abs=1e-6)
        assert last.family_delta[fam] == pytest.approx(
            mean([now[(p, fam)]["logp"] - base[(p, fam)]["logp"] for p in pids]), abs=1e-6)
        assert metrics[1][f"family_delta/{fam}"] == 0.0
    assert any(abs(v) > 1e-3 for v in last.family_delta.values())  # the perturbation moved something
    assert set(last.signals) == set(SIGNALS)
    assert last.signals["top1_chosen"] == pytest.approx(mean([now[(p, "chosen")]["top1"] for p in probes.prompt_ids]))
    assert last.signals["entropy_rejected"] == pytest.approx(
        mean([now[(p, "rejected")]["entropy"] for p in probes.prompt_ids]))
    assert last.signals["logp_argmax"] == pytest.approx(last.family_mean["argmax"])
    for r in now.values():  # top-1 probability and entropy are what they claim to be
        assert 0 < r["top1"] <= 1 and 0 <= r["entropy"] <= math.log(lm.model.config.vocab_size) + 1e-4


def test_resume_picks_up_history_and_reuses_initial_samples(tiny_fresh, probes, tmp_path, monkeypatch):
    lm = tiny_fresh
    first = Tracker(lm.model, lm.tokenizer, probes, run=tmp_path / "run", every=2, generation_config=GEN)
    first.track(0)
    perturb(lm.model, seed=2)
    first.track(2)
    samples_before = (tmp_path / "run" / INITIAL_SAMPLES).read_text()

    def no_generation(*args, **kwargs):
        raise AssertionError("a resumed tracker must not regenerate the initial samples")

    monkeypatch.setattr("lldyn.generation.generate", no_generation)
    perturb(lm.model, seed=3)
    resumed = Tracker(lm.model, lm.tokenizer, str(tmp_path / "run" / "probes.jsonl"), run=tmp_path / "run", every=2,
                      generation_config=GEN)
    assert [h.step for h in resumed.history] == [0, 2]
    assert resumed.history[1].family_mean == first.history[1].family_mean
    assert resumed.maybe_track(2) is None  # already tracked before the interruption
    summary = resumed.maybe_track(4)
    assert summary is not None and summary.step == 4
    run = RunDir(tmp_path / "run")
    base, now = table_at(run, 0), table_at(run, 4)
    for fam in ("chosen", "initial_sample", "argmax"):  # deltas are still relative to step 0 of the first process
        expect = sum(now[(p, fam)]["logp"] - base[(p, fam)]["logp"] for p in probes.prompt_ids) / len(probes.prompt_ids)
        assert summary.family_delta[fam] == pytest.approx(expect, abs=1e-6)
    assert (tmp_path / "run" / INITIAL_SAMPLES).read_text() == samples_before
    assert [step for step, _ in run.events()] == [0, 2, 4]
    # resuming from a checkpoint at step 2 instead: rows after it dropped, step 4 tracked again
    run.truncate_after(2)
    resumed.rewind(2)
    assert [h.step for h in resumed.history] == [0, 2] and resumed.should_track(4)
    run.truncate_after(-1)
    resumed.rewind(-1)  # killed before the first checkpoint: the next evaluation is the new baseline
    assert resumed.history == [] and resumed.should_track(0)
    assert set(resumed.track(0).family_delta.values()) == {0.0}
    assert {r["step"] for r in run.probe_table()} == {0}


def test_resume_with_a_different_probe_set_is_refused(tiny, probes, tmp_path):
    Tracker(tiny.model, tiny.tokenizer, probes, run=tmp_path / "run", initial_sample=False).track(0)
    table = (tmp_path / "run" / "probe_table.jsonl").read_text()
    with pytest.raises(LldynError, match="different probe set") as err:
        Tracker(tiny.model, tiny.tokenizer, make_probes(seed=1), run=tmp_path / "run", initial_sample=False)
    assert err.value.file == str(tmp_path / "run" / "probes.jsonl")
    assert (tmp_path / "run" / "probe_table.jsonl").read_text() == table  # nothing written
    # the same probes with another rephraser label, or with initial samples added, are the same probe set
    same = ProbeSet(probes.probes, {"rephraser": "something else"})
    Tracker(tiny.model, tiny.tokenizer, same, run=tmp_path / "run", initial_sample=False)


def test_rank_shards_cover_the_single_process_rows(tiny, probes):
    """Under accelerate each rank scores prompts[rank::world]; together they are the single-process rows."""
    single = Tracker(tiny.model, tiny.tokenizer, probes, initial_sample=False).evaluate()
    shards = [Tracker(tiny.model, tiny.tokenizer, probes, initial_sample=False, processes=Processes(r, 2)).evaluate()
              for r in range(2)]
    assert {r["prompt_id"] for r in shards[0]}.isdisjoint({r["prompt_id"] for r in shards[1]})
    key = lambda r: (r["prompt_id"], r["family"])  # noqa: E731
    merged = sorted(shards[0] + shards[1], key=key)
    assert [key(r) for r in merged] == sorted(map(key, single))
    for a, b in zip(merged, sorted(single, key=key)):
        assert a["logp"] == pytest.approx(b["logp"], abs=1e-4) and a["n_tokens"] == b["n_tokens"]


def test_in_memory_tracker_and_bad_period(tiny, probes, tmp_path):
    tracker = Tracker(tiny.model, tiny.tokenizer, probes, initial_sample=False)
    summary = tracker.track(0)
    assert set(summary.family_mean) == set(STATIC_FAMILIES) | {"argmax"}
    assert len(tracker.last_rows) == len(probes) + len(probes.prompt_ids)  # + one argmax row per prompt
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(LldynError, match="every must be >= 1"):
        Tracker(tiny.model, tiny.tokenizer, probes, every=0)


# --------------------------------------------------------------------------- the real CLI


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "lldyn.cli", *args], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                               "HOME": str(Path.home())})
    return proc.returncode, proc.stdout, proc.stderr


def test_cli_train_resume_with_a_different_probe_set_is_refused(tmp_path):
    probes_path, run = tmp_path / "probes.jsonl", tmp_path / "run"
    make_probes(limit=2, seed=0).save(probes_path)
    train = ["train", "--method", "dpo", "--model", "tiny-random-llama", "--data", "builtin:train", "--limit", "8",
             "--probes", str(probes_path), "--out", str(run), "--steps", "2", "--batch-size", "2",
             "--eval-every", "1", "--checkpoint-every", "1", "--no-initial-sample", "--lr", "1e-3"]
    code, _, stderr = run_cli(*train)
    assert code == 0, stderr
    table = (run / "probe_table.jsonl").read_text()
    make_probes(limit=2, seed=1).save(probes_path)  # same path, other probes: the config alone cannot tell
    code, stdout, stderr = run_cli(*train, "--resume")
    assert code == 2 and "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("lldyn train: error:") and str(run / "probes.jsonl") in line
    assert "different probe set" in line
    assert (run / "probe_table.jsonl").read_text() == table
