"""lldyn lld-risk (lldyn.squeeze.nthr): the group scores by hand, a deterministic table for a seed, clear errors, and the
validation script end to end on the tiny model."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from lldyn.cli import main
from lldyn.squeeze.nthr import RISK_SCORES, TokenFeatures, group_risk

ROOT = Path(__file__).resolve().parents[1]
R0 = [0.5, -0.5]
TINY_RISK = ["lld-risk", "--model", "tiny-random-llama", "--data", "builtin:test", "--limit", "5", "--reward",
             "test_grpo_train:ids_reward", "--num-generations", "4", "--max-completion-length", "10"]


def feat(hidden, residual) -> TokenFeatures:
    return TokenFeatures(torch.tensor(hidden, dtype=torch.float64), torch.tensor(residual, dtype=torch.float64))


def test_group_scores_by_hand():
    """A correct completion of two tokens on (1, 0), an incorrect one of one token on (1, 1), all y = 0 under
    π = (½, ½) (‖e − π‖-products 0.5), advantages ±1; H0 = (2, 0), H1 = (1, 1), means (1, 0) and (1, 1).
    gwhes = ⟨H0, H1⟩ − ⟨H0, H0⟩ = 2 − 4; gwhes_ln = 1 − 1; cos = 1/√2; entk_pull: the step on the 3 tokens moves
    the correct completion by (1/3)·(4 × 0.5) − (1/3)·(2 × 0.5) = 1/3, per token 1/6, so the pull is −1/6;
    NTHR: τ = 0.5 (each correct token's tie to the other), the incorrect token's 2 × 0.5 = 1 > τ → flagged."""
    scores = group_risk([feat([[1.0, 0.0], [1.0, 0.0]], [R0, R0]), feat([[1.0, 1.0]], [R0])], [1.0, -1.0])
    assert scores["gwhes"] == pytest.approx(-2.0)
    assert scores["gwhes_ln"] == pytest.approx(0.0)
    assert scores["hidden_cos"] == pytest.approx(1 / math.sqrt(2))
    assert scores["entk_pull"] == pytest.approx(-1 / 6)
    assert scores["nthr_flagged"] == pytest.approx(1.0)
    empty = group_risk([feat([[1.0, 0.0]], [R0])] * 2, [0.0, 0.0])
    assert all(math.isnan(empty[k]) for k in RISK_SCORES)


def test_the_table_is_deterministic_for_a_seed_and_sorted_by_risk(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    assert main(TINY_RISK + ["--out", str(a)]) == 0
    assert main(TINY_RISK + ["--out", str(b)]) == 0
    assert main(TINY_RISK + ["--out", str(c), "--seed", "3"]) == 0
    assert a.read_bytes() == b.read_bytes()
    rows = [json.loads(x) for x in a.read_text().splitlines()]
    other = [json.loads(x) for x in c.read_text().splitlines()]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5] and len({r["id"] for r in rows}) == 5
    risky = [r["gwhes"] for r in rows if r["informative"]]
    assert risky and risky == sorted(risky, reverse=True)
    assert [r["informative"] for r in rows] == sorted((r["informative"] for r in rows), reverse=True)
    assert [r["correct_ids"] for r in rows] != [r["correct_ids"] for r in other]  # the seed is the sampling's
    for r in rows:
        assert r["n_correct"] + r["n_incorrect"] <= 4 and len(r["correct_ids"]) == r["n_correct"]
        assert len(r["correct_logps"]) == r["n_correct"]


@pytest.mark.parametrize("extra, needle", [
    (["--limit", "0"], "--limit"),
    (["--num-generations", "1"], "num_generations"),
    (["--reward", "nope"], "unknown reward"),
])
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(tmp_path, capsys, extra, needle):
    out = tmp_path / "risk.jsonl"
    args = [a for a in TINY_RISK if a not in ()] + ["--out", str(out)]
    assert main(args + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not out.exists()


def test_validation_script_end_to_end_on_the_tiny_model(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    sys.modules.pop("validate_lld_risk", None)
    import validate_lld_risk

    flags = ("reward=test_grpo_train:ids_reward,batch_size=4,grad_accum=2,num_generations=4,max_completion_length=10,"
             "max_length=96,max_prompt_tokens=48,lr=1e-3,seed=5")
    out = tmp_path / "val"
    assert validate_lld_risk.main(["--out", str(out), "--train-steps", "2", "--model", "tiny-random-llama",
                                   "--limit", "6", "--permutations", "50", "--greedy-tokens", "6",
                                   "--train-flags", flags]) == 0
    results = json.loads((out / "results.json").read_text())
    v = results["validation"]
    assert v["n_prompts"] == 6 and 0 < v["n_informative"] <= 6
    assert set(v["correlations"]) == {"gwhes", "gwhes_ln", "hidden_cos", "entk_pull", "nthr_flagged", "init_logp",
                                      "length", "frac_correct"}
    run = results["runs"]["grpo"]
    assert run["steps"] == 2 and run["n_measured"] >= v["n_informative"] and 0 <= run["accuracy_end"] <= 1
    rows = [json.loads(x) for x in (out / "risk.jsonl").read_text().splitlines()]
    measured = [r["d_logp_correct/grpo"] for r in rows if r["n_correct"]]
    assert measured and all(isinstance(d, float) and d != 0.0 for d in measured)  # the run moved them
    # the same run measured again from the written table gives the same numbers
    again = tmp_path / "again"
    assert validate_lld_risk.main(["--out", str(again), "--runs", str(out / "grpo"), "--risk-table",
                                   str(out / "risk.jsonl"), "--limit", "6", "--permutations", "50",
                                   "--greedy-tokens", "6"]) == 0
    second = json.loads((again / "results.json").read_text())
    assert second["validation"]["correlations"] == v["correlations"]
    assert second["runs"]["grpo"]["mean_d_logp_correct"] == run["mean_d_logp_correct"]
