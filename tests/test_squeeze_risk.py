"""Squeeze risk before training: engine-computed, deterministic, hand-worked; CHES by hand; Spearman; the CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch

from lldyn.cli import main
from lldyn.data import PreferenceExample
from lldyn.errors import LldynError
from lldyn.scoring import Encoder, ScoreConfig, ScoreRequest, ScoreResult, score
from lldyn.squeeze.risk import (
    SqueezeRiskConfig,
    ches_from_sums,
    ches_scores,
    negative_coef,
    pair_risk,
    rank_pairs,
    rankdata,
    residual_norms,
    spearman,
    spearman_permutation_p,
    squeeze_risk,
)

from conftest import HH_PAIRS, requires_shared

PAIRS = [
    PreferenceExample("a", "Capital of France?", "Paris.", "Rome is the capital of France, obviously."),
    PreferenceExample("b", "2+2?", "4", "5"),
    PreferenceExample("c", [{"role": "user", "content": "Name a colour."}], "Blue is a colour.", "Blue is a colour!"),
    PreferenceExample("d", "Say hi.", "Hi there, nice to meet you.", "No."),
]


def result(token_probs, top1, entropies, n=None):
    logps = tuple(math.log(p) for p in token_probs)
    return ScoreResult(sum(logps), n or len(logps), 0.0, 0.0, 0.0, (), False, logps, tuple(top1), tuple(entropies))


def entropy(p):
    return -sum(x * math.log(x) for x in p if x > 0)


# --- hand-worked numbers ----------------------------------------------------------------------

def test_negative_coefficient_is_beta_over_two_at_step_zero():
    assert negative_coef(0.1) == pytest.approx(0.05, abs=1e-15)
    assert negative_coef(0.5) == pytest.approx(0.25, abs=1e-15)


def test_residual_norm_by_hand():
    # π = (0.7, 0.2, 0.1), y = label 1 (not the argmax): Σπ² ≥ 0.7² + 0.2² = 0.53 (> e^{-H} = 0.4485);
    # ‖π − e_y‖ ≈ sqrt(1 − 0.4 + 0.53) = sqrt(1.13), just under the exact sqrt(1 − 0.4 + 0.54).
    pi = (0.7, 0.2, 0.1)
    approx, = residual_norms([math.log(0.2)], [0.7], [entropy(pi)])
    assert approx == pytest.approx(math.sqrt(1.13), abs=1e-12)
    assert approx <= math.sqrt(1.14)
    # Uniform over 4 labels: e^{-H} = 1/4 = Σπ² exactly, so the norm is exact: sqrt(1 − 1/2 + 1/4).
    uniform, = residual_norms([math.log(0.25)], [0.25], [math.log(4)])
    assert uniform == pytest.approx(math.sqrt(0.75), abs=1e-12)
    # All mass on y: no residual.
    one_hot, = residual_norms([0.0], [1.0], [0.0])
    assert one_hot == pytest.approx(0.0, abs=1e-12)


def test_pair_risk_by_hand():
    # y− has two tokens: π(y−_1) = 0.2 under π = (0.7, 0.2, 0.1); π(y−_2) = 0.25 under a uniform π over 4.
    rejected = result([0.2, 0.25], [0.7, 0.25], [entropy((0.7, 0.2, 0.1)), math.log(4)])
    chosen = result([0.5], [0.5], [0.7])
    c = 0.05
    g1, g2 = c * math.sqrt(1.13), c * math.sqrt(0.75)
    r1, r2 = g1 * 0.7 * -math.log(0.2), g2 * 0.25 * -math.log(0.25)
    risk = pair_risk("x", chosen, rejected, c)
    assert risk.risk == pytest.approx((r1 + r2) / 2, rel=1e-12)
    assert risk.risk_sum == pytest.approx(r1 + r2, rel=1e-12)
    assert risk.neg_surprise == pytest.approx(-(math.log(0.2) + math.log(0.25)) / 2, rel=1e-12)
    assert risk.neg_top1 == pytest.approx(0.475)
    assert risk.neg_residual == pytest.approx((g1 + g2) / 2)
    assert (risk.n_tokens_chosen, risk.n_tokens_rejected, risk.coef) == (1, 2, c)
    # Each factor raises the risk: a less likely y−, a peakier π, a larger β.
    less_likely = pair_risk("x", chosen, result([0.1, 0.25], [0.7, 0.25], [entropy((0.7, 0.2, 0.1)), math.log(4)]), c)
    peakier = pair_risk("x", chosen, result([0.2, 0.25], [0.75, 0.25], [entropy((0.75, 0.2, 0.05)), math.log(4)]), c)
    assert less_likely.risk > risk.risk and peakier.risk > risk.risk
    assert pair_risk("x", chosen, rejected, 2 * c).risk == pytest.approx(2 * risk.risk)
    with pytest.raises(ValueError, match="per_token"):
        pair_risk("x", chosen, rejected._replace(token_logps=None), c)


def test_ches_from_sums_by_hand():
    s_plus = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    s_minus = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    ches, ches_ln = ches_from_sums(s_plus, s_minus, torch.tensor([2]), torch.tensor([1]))
    # ⟨s+, s−⟩ − ‖s+‖² = 0.5 − 1; normalised: 0.5 / (2·1) − 1 / 2² = 0.
    assert float(ches[0]) == pytest.approx(-0.5)
    assert float(ches_ln[0]) == pytest.approx(0.0)


def test_spearman_by_hand_and_with_ties():
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 − 6·Σd²/(n(n²−1)) = 1 − 12/60
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert rankdata([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    stats = pytest.importorskip("scipy.stats")
    x, y = [3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert spearman_permutation_p(list(range(20)), list(range(20)), n_perm=999) == pytest.approx(1 / 1000)
    assert spearman_permutation_p(x, y, n_perm=999) > 0.05


# --- through the engine on the tiny model ---------------------------------------------------

def test_risk_is_deterministic_and_computed_by_the_engine(tiny):
    cfg = SqueezeRiskConfig(beta=0.1)
    first = squeeze_risk(tiny.model, tiny.tokenizer, PAIRS, cfg)
    second = squeeze_risk(tiny.model, tiny.tokenizer, PAIRS, cfg)
    assert first == second  # identical floats, not approximately
    reqs = [ScoreRequest(p.prompt, r) for p in PAIRS for r in (p.chosen, p.rejected)]
    res = score(tiny.model, tiny.tokenizer, reqs, ScoreConfig(), per_token=True)
    for i, risk in enumerate(first):
        rej, cho = res[2 * i + 1], res[2 * i]
        assert risk.neg_surprise == pytest.approx(-sum(rej.token_logps) / len(rej.token_logps), abs=1e-6)
        assert risk.neg_top1 == pytest.approx(sum(rej.top1_probs) / len(rej.top1_probs), abs=1e-6)
        assert (risk.logp_chosen, risk.logp_rejected) == pytest.approx((cho.logp, rej.logp), abs=1e-5)
        assert risk.n_tokens_rejected == rej.n_tokens
        assert risk.coef == pytest.approx(0.05)
        assert 0 < risk.neg_residual <= 0.05 * math.sqrt(2) and risk.risk > 0
        assert risk.risk_sum == pytest.approx(risk.risk * risk.n_tokens_rejected)


def test_residual_norm_never_exceeds_the_exact_one(tiny):
    """Against a naive full softmax: the engine-based Σπ² bound gives ‖π − e_y‖ from below."""
    enc = Encoder(tiny.tokenizer, ScoreConfig()).pair(PAIRS[0].prompt, PAIRS[0].rejected)
    res, = score(tiny.model, tiny.tokenizer, [ScoreRequest(PAIRS[0].prompt, PAIRS[0].rejected)], per_token=True)
    ids = torch.tensor([list(enc.prompt_ids) + list(enc.response_ids)])
    with torch.no_grad():
        probs = torch.softmax(tiny.model(input_ids=ids).logits[0].double(), -1)
    n = len(enc.prompt_ids)
    rows = probs[n - 1:n - 1 + len(enc.response_ids)]
    onehot = torch.nn.functional.one_hot(torch.tensor(enc.response_ids), rows.shape[-1]).double()
    exact = (rows - onehot).norm(dim=-1)
    approx = torch.tensor(residual_norms(res.token_logps, res.top1_probs, res.entropies), dtype=torch.float64)
    assert (approx <= exact + 1e-5).all()
    assert (exact - approx).max() < 1e-3  # the tiny model is near-uniform: e^{-H} is almost Σπ²


def test_ches_equals_hand_computation_on_unpadded_sequences(tiny):
    got = ches_scores(tiny.model, tiny.tokenizer, PAIRS, ScoreConfig(), batch_size=3)  # padded batches
    enc = Encoder(tiny.tokenizer, ScoreConfig())
    for p, (ches, ches_ln) in zip(PAIRS, got):
        sums, lens = [], []
        for response in (p.chosen, p.rejected):
            e = enc.pair(p.prompt, response)
            ids = torch.tensor([list(e.prompt_ids) + list(e.response_ids)])
            with torch.no_grad():
                h = tiny.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].double()
            n, T = len(e.prompt_ids), len(e.response_ids)
            sums.append(h[n - 1:n - 1 + T].sum(0))  # hidden states that predict the T response tokens
            lens.append(T)
        cross, own = float(sums[0] @ sums[1]), float(sums[0] @ sums[0])
        assert ches == pytest.approx(cross - own, rel=1e-4, abs=1e-3)
        assert ches_ln == pytest.approx(cross / (lens[0] * lens[1]) - own / lens[0] ** 2, rel=1e-4, abs=1e-5)
    # Identical y+ and y−: ⟨s, s⟩ − ‖s‖² = 0.
    same, = ches_scores(tiny.model, tiny.tokenizer, [PreferenceExample("s", "Hi?", "Hello.", "Hello.")])
    assert same[0] == pytest.approx(0.0, abs=1e-9) and same[1] == pytest.approx(0.0, abs=1e-12)


def test_rank_pairs_sorts_riskiest_first(tiny):
    ranked = rank_pairs(squeeze_risk(tiny.model, tiny.tokenizer, PAIRS))
    assert [r.rank for r in ranked] == [1, 2, 3, 4]
    assert all(a.risk >= b.risk for a, b in zip(ranked, ranked[1:]))
    by_ches = sorted(ranked, key=lambda r: r.ches_rank)
    assert all(a.ches >= b.ches for a, b in zip(by_ches, by_ches[1:]))
    assert sorted(r.id for r in ranked) == ["a", "b", "c", "d"]


def test_config_validation():
    with pytest.raises(LldynError, match="beta"):
        SqueezeRiskConfig(beta=0.0)
    with pytest.raises(LldynError, match="ches_batch"):
        SqueezeRiskConfig(ches_batch=0)


# --- the CLI ------------------------------------------------------------------------------------

@pytest.fixture()
def pairs_file(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps({"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                         for p in PAIRS))
    return f


def test_cli_writes_a_sorted_file(tmp_path, pairs_file, capsys):
    out = tmp_path / "risk" / "risk.jsonl"
    assert main(["squeeze-risk", "--model", "tiny-random-llama", "--data", str(pairs_file), "--beta", "0.2",
                 "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert all(a["risk"] >= b["risk"] for a, b in zip(rows, rows[1:]))
    assert {r["id"] for r in rows} == {"a", "b", "c", "d"}
    assert sorted(r["ches_rank"] for r in rows) == [1, 2, 3, 4]
    assert {"neg_surprise", "neg_top1", "neg_entropy", "neg_residual", "ches", "ches_ln", "risk_sum"} <= set(rows[0])
    assert rows[0]["coef"] == pytest.approx(0.1)
    assert "wrote 4 pairs" in capsys.readouterr().out
    limited = tmp_path / "two.jsonl"
    assert main(["squeeze-risk", "--model", "tiny-random-llama", "--data", str(pairs_file), "--limit", "2",
                 "--no-ches", "--out", str(limited)]) == 0
    rows = [json.loads(line) for line in limited.read_text().splitlines()]
    assert {r["id"] for r in rows} == {"a", "b"} and all(r["ches"] is None for r in rows)


@pytest.mark.parametrize("case", ["missing_data", "out_is_dir", "bad_beta", "bad_limit"])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, pairs_file, capsys, case):
    data, out, extra = str(pairs_file), str(tmp_path / "o.jsonl"), []
    if case == "missing_data":
        data = str(tmp_path / "nope.jsonl")
    elif case == "out_is_dir":
        out = str(tmp_path)
    elif case == "bad_beta":
        extra = ["--beta", "-1"]
    else:
        extra = ["--limit", "0"]
    assert main(["squeeze-risk", "--model", "tiny-random-llama", "--data", data, "--out", out, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("lldyn squeeze-risk: error:")
    expect = {"missing_data": "nope.jsonl: data file not found", "out_is_dir": "output is a directory",
              "bad_beta": "beta", "bad_limit": "--limit"}[case]
    assert expect in err
    assert not (tmp_path / "o.jsonl").exists()


# --- the real model and data ----------------------------------------------------------------------

@pytest.mark.slow
@requires_shared
def test_real_hh_pairs_on_smollm2(smollm2):
    from lldyn.data import load_preferences

    pairs = load_preferences(str(HH_PAIRS), limit=4, skip_invalid=True)
    cfg = SqueezeRiskConfig(score=ScoreConfig(max_length=256, max_prompt_tokens=128))
    risks = squeeze_risk(smollm2.model, smollm2.tokenizer, pairs, cfg)
    assert risks == squeeze_risk(smollm2.model, smollm2.tokenizer, pairs, cfg)
    for r in risks:
        assert r.neg_surprise > 0 and 0 < r.neg_top1 <= 1 and r.neg_entropy >= 0
        assert 0 < r.neg_residual <= 0.05 * math.sqrt(2) + 1e-9 and r.risk > 0
        assert math.isfinite(r.ches) and math.isfinite(r.ches_ln)


def test_validation_script_from_runs_on_a_tiny_sft_then_dpo_run(tmp_path):
    """scripts/validate_squeeze_risk.py --from-runs on a one-run SFT → DPO (tiny model): start = the SFT-end
    checkpoint, end = the run; every pair gets both scores and its change, and the pairs of the DPO phase's
    batches are marked trained (the rest of --data, here held-out pairs added, untrained)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from lldyn.data import load_preferences
    from lldyn.train import TrainConfig, train

    root = Path(__file__).resolve().parents[1]
    pairs = load_preferences("builtin:train", limit=10)
    rows = [{"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:8]))
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = train(TrainConfig(method="sft_dpo", model="tiny-random-llama", data=str(tmp_path / "train.jsonl"),
                            sft_steps=2, steps=2, batch_size=2, lr=1e-3, max_length=512, max_prompt_tokens=256,
                            eval_every=0, initial_sample=False, out=str(tmp_path / "run")), progress=False)
    proc = subprocess.run([sys.executable, str(root / "scripts" / "validate_squeeze_risk.py"), "--from-runs",
                           str(run.run.path / "checkpoints" / "step-00000002"), str(run.run.path),
                           "--data", str(tmp_path / "all.jsonl"), "--out", str(tmp_path / "v"), "--permutations", "50"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "v" / "results.json").read_text())
    per_pair = [json.loads(x) for x in (tmp_path / "v" / "pairs.jsonl").read_text().splitlines()]
    assert len(per_pair) == results["summary"]["n_pairs"] >= 8
    assert results["n_trained"] == 4  # two DPO steps of batch 2
    assert {r["id"] for r in per_pair if r["trained"]} <= {r["id"] for r in rows[:8]}
    assert {"risk", "ches"} <= set(results["correlations"]) and "untrained" in results
    assert all(isinstance(r["d_logp_chosen"], float) for r in per_pair)
