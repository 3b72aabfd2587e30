"""lldyn reproduce grpo: the pipeline end to end on the tiny model (its files against independent recomputation),
the LLD verdict by hand, the shipped config on SmolLM2 (slow), and bench/grpo.py on the tiny model."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import requires_smollm2
from lldyn.experiments.reproduce import configs_dir, lld_verdict

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}

# A reward that varies on a random model's completions (a deterministic function of the tokens): the tiny model
# never states a gold answer, so --reward builtin would give every completion 0 and nothing would train.
REWARDS = '''
def ids_reward(prompts, completions, completion_ids, **kwargs):
    return [float(sum(ids) % 2) for ids in completion_ids]
'''


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lldyn.cli", *args], cwd=cwd, capture_output=True, text=True, env=ENV)


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_reproduce_grpo_quick_on_the_tiny_model(tmp_path):
    """The shipped config with the tiny model, a token-parity reward and a large learning rate, --quick (2 steps
    of 4 completions, both evaluated and decomposed): the data kept are the pairs with a gold answer, the probes
    the configured families, and the summary's numbers equal what is recomputed from the run's own files (the
    probe table for the samples' change, decompose.jsonl for the parts) and from the starting model (its greedy
    completions)."""
    (tmp_path / "rewards_here.py").write_text(REWARDS)
    shipped = (configs_dir() / "grpo.toml").read_text()
    config = shipped.replace('reward = "builtin"', 'reward = "rewards_here:ids_reward"').replace("lr = 1e-4", "lr = 1e-2")
    assert config.count("rewards_here") == 1 and "lr = 1e-2" in config
    (tmp_path / "grpo.toml").write_text(config)
    proc = cli("reproduce", "grpo", "--quick", "--config", "grpo.toml", "--model", "tiny-random-llama", "--out", "exp",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "exp"
    run = out / "grpo"

    from lldyn.data import load_preferences

    train, held = rows(out / "data" / "train.jsonl"), rows(out / "data" / "held_out.jsonl")
    assert train and all(r.get("answer") for r in train + held)
    assert [r["id"] for r in held] == [p.id for p in load_preferences("builtin:test") if p.extra.get("answer")]
    assert {r["family"] for r in rows(out / "probes.jsonl")} == {"chosen", "rejected"}
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["method"], cfg["reward"], cfg["steps"], cfg["decompose_every"], cfg["num_generations"]) == (
        "grpo", "rewards_here:ids_reward", 2, 1, 4)

    summary = json.loads((out / "grpo_summary.json").read_text())
    assert f"reward (mean, 1-step windows): first {summary['reward_first']:.3f}" in proc.stdout
    assert "LLD: " + summary["lld"] in proc.stdout

    # greedy accuracy: one row per model and held-out prompt; the starting model's completions regenerated here
    greedy = rows(out / "greedy_accuracy.jsonl")
    assert [r["model"] for r in greedy] == ["start"] * len(held) + ["final"] * len(held)
    for model in ("start", "final"):
        mine = [r["reward"] == 1.0 for r in greedy if r["model"] == model]
        assert summary["accuracy_" + ("before" if model == "start" else "after")] == pytest.approx(sum(mine) / len(mine))
    from lldyn.generation import GenerationConfig, generate
    from lldyn.models import ModelConfig, load_model

    lm = load_model(ModelConfig(name="tiny-random-llama"))
    texts = generate(lm.model, lm.tokenizer, [r["prompt"] for r in held],
                     GenerationConfig(max_new_tokens=cfg["max_completion_length"], max_prompt_tokens=cfg["max_prompt_tokens"]))
    assert texts == [r["completion"].strip() for r in greedy if r["model"] == "start"]

    # the samples' mean change since step 0, from the probe table
    samples = rows(run / "policy_samples.jsonl")
    counts = {f: sum(s["family"] == f for s in samples) for f in ("sample_correct", "sample_incorrect")}
    assert summary["samples"] == counts and counts["sample_correct"] > 0 and counts["sample_incorrect"] > 0
    table = rows(run / "probe_table.jsonl")
    last = max(r["step"] for r in table)
    assert summary["tracked_at"] == last == 2
    for family, key in (("sample_correct", "delta_correct"), ("sample_incorrect", "delta_incorrect")):
        logp = {(r["step"], r["prompt_id"], r["sample"]): r["logp"] for r in table if r["family"] == family}
        changes = [logp[(last, p, s)] - logp[(0, p, s)] for (step, p, s) in logp if step == 0]
        assert len(changes) == counts[family]
        assert summary[key] == pytest.approx(sum(changes) / len(changes), abs=1e-4)

    # the decomposition: every probe row's parts add up to its prediction; the correct samples' parts summed over
    # the decomposed steps; the first decomposed step starts from the step-0 log π of the same (exact) tokens
    decomposed = rows(run / "decompose.jsonl")
    for r in decomposed:
        assert sum(r["parts"].values()) == pytest.approx(r["predicted"], abs=1e-4)
    correct = [r for r in decomposed if r["family"] == "sample_correct"]
    steps = sorted({r["step"] for r in correct})
    assert summary["decomposed_steps"] == len(steps) == 2
    for part, key in (("positive", "correct_positive"), ("negative", "correct_negative")):
        per_step = [[r["parts"].get(part, 0.0) for r in correct if r["step"] == s] for s in steps]
        assert summary[key] == pytest.approx(sum(sum(v) / len(v) for v in per_step), abs=1e-6)
    assert summary["correct_positive"] != 0.0 and summary["correct_negative"] != 0.0  # groups with mixed rewards
    pos, neg = summary["correct_positive"], summary["correct_negative"]
    assert summary["negative_share"] == pytest.approx(abs(neg) / (abs(pos) + abs(neg)))
    step0 = {(r["prompt_id"], r["sample"]): r["logp"] for r in table if r["step"] == 0 and r["family"] == "sample_correct"}
    for r in correct:
        if r["step"] == steps[0]:
            prompt_id, _, sample = r["probe_id"].rsplit("/", 2)
            assert r["logp_before"] == pytest.approx(step0[(prompt_id, int(sample))], abs=1e-4)


@pytest.mark.parametrize("change, needle", [
    (('probe_families = ["chosen", "rejected"]', 'probe_families = ["chosen", "nope"]'),
     "field 'experiment.probe_families': unknown probe families ['nope']"),
    (('probe_select = "spread"', 'probe_select = "best"'), "field 'experiment.probe_select': unknown selection 'best'"),
    (('num_generations = 4', 'num_generations = 1'), "GRPO needs at least 2 completions per prompt"),
    (('loss_type = "dapo"', 'loss_type = "ppo"'), "unknown GRPO loss type 'ppo'"),
    (('data = "builtin:train"', 'data = "pairs.jsonl"'), "pairs.jsonl, field 'answer': no pair has a gold answer"),
])
def test_reproduce_grpo_bad_config_is_one_clear_error_and_writes_nothing(tmp_path, change, needle):
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Say {i}.", "chosen": "Yes.",
                                                              "rejected": "No."}) + "\n" for i in range(8)))
    config = (configs_dir() / "grpo.toml").read_text()
    assert change[0] in config
    (tmp_path / "bad.toml").write_text(config.replace(change[0], change[1]))
    proc = cli("reproduce", "grpo", "--config", "bad.toml", "--model", "tiny-random-llama", "--out", "exp", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "exp").exists()


def test_lld_verdict_by_hand():
    assert lld_verdict(None, None, 0.1, 0.5, 0).startswith("not measured")
    assert lld_verdict(-0.5, -2.0, 0.5, 0.5, 0).startswith("not testable: the reward did not rise")
    fell = lld_verdict(-0.25, -1.0, 0.25, 0.5, 3)
    assert fell.startswith("shows: the correct samples' log pi changed by -0.250 nats, the incorrect samples' by -1.000")
    assert "reward 0.250 -> 0.500; the live LLD alarm fired at 3 evaluation(s)" in fell
    assert lld_verdict(0.0, None, 0.25, 0.5, 0).startswith("shows:")
    assert lld_verdict(0.4, -1.0, 0.25, 0.5, 0).startswith("does not show as a fall (the correct samples' log pi "
                                                           "changed by +0.400 nats")


def test_reproduce_grpo_config_is_shipped_and_cpu_sized():
    from lldyn.config import read_toml

    raw = read_toml(configs_dir() / "grpo.toml")
    e, t = raw["experiment"], raw["train"]
    assert (e["data"], e["test_data"], e["answered_only"]) == ("builtin:train", "builtin:test", True)
    assert (t["method"], t["model"], t["reward"]) == ("grpo", "smollm2-135m-instruct", "builtin")
    assert t["decompose_every"] > 0 and t["batch_size"] % t["num_generations"] == 0
    assert "/work" not in (configs_dir() / "grpo.toml").read_text()


@requires_smollm2
@pytest.mark.slow
def test_reproduce_grpo_quick_on_smollm2(tmp_path):
    """The shipped config on the embedded model, --quick (2 steps, 8-token completions): it runs end to end and
    reports every number the issue asks for."""
    proc = cli("reproduce", "grpo", "--quick", "--out", "exp", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "exp" / "grpo_summary.json").read_text())
    assert summary["steps"] == 2 and summary["held_out"] == 32
    assert sum(summary["samples"].values()) == 3 * 4  # the builtin reward scores every draw
    assert summary["decomposed_steps"] == (2 if summary["samples"]["sample_correct"] else 0)
    for needle in ("reward (mean", "greedy accuracy on 32 held-out prompts", "correct samples", "LLD: "):
        assert needle in proc.stdout


def test_bench_grpo_runs_on_the_tiny_model():
    """bench/grpo.py at its smallest: both runs complete and generate the same number of tokens per step (the tiny
    model never stops early: batch × max completion length)."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "grpo.py"), "--model", "tiny-random-llama", "--batch",
                           "4", "--num-generations", "2", "--max-completion-length", "4", "--steps", "1", "--warmup",
                           "1", "--rounds", "1"], capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tokens = re.findall(r"round 1  (lldyn|trl) .* (\d+\.\d) completion tokens/step", proc.stdout)
    assert sorted(tokens) == [("lldyn", "16.0"), ("trl", "16.0")], proc.stdout
    assert re.search(r"lldyn / trl per step +\d+\.\d\dx faster", proc.stdout)
