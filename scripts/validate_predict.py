"""Validate ``lldyn predict`` on real DPO phases: does the first-order prediction of a whole phase rank the held-out
prompts' Δ log π(y+) better than the trivial baselines and the squeeze-risk score?

Two cases, each an SFT run followed by a DPO phase that starts from the SFT model (its reference):

* ``demo``: the demo's runs (``src/lldyn/configs/demo.toml``: SFT 30 steps, then DPO 30 steps, AdamW lr 2e-5,
  β 0.1, batch 4, built-in data); held-out prompts = the built-in test pairs (``builtin:test``).
* ``hh``: ``lldyn reproduce dpo`` on HH-RLHF harmless-base test pairs (one sft_dpo run: SFT 100, DPO 100 steps,
  batch 2); held-out pairs = its ``data/held_out.jsonl``; the DPO phase starts from the SFT phase's last
  checkpoint (:func:`lldyn.experiments.reproduce.preference_phase_models`).

The runs are trained here with probe tracking off (tracking only evaluates; the weights are those of ``lldyn demo``
/ ``lldyn reproduce dpo``, whose data set-up and configs are used as they are); a finished run is reused.

For each case, at the DPO phase's start: the squeeze-risk score and CHES (:mod:`lldyn.squeeze.risk`), log π(y+)
and len(y+); ``lldyn predict``'s prediction of the phase (:func:`lldyn.predict.predict_phase`) for every
``--prefix-steps`` K (0: before training; K > 0: K real steps, then linearised); at the phase's end the actual
Δ log π(y+). Spearman ρ of each predictor with the actual Δ log π(y+) (two-sided permutation p-values).

Writes ``OUT/CASE/results.json`` and ``OUT/CASE/pairs.jsonl`` and prints Markdown tables for docs/predict.md.
``--horizons H ...`` instead compares the prediction of the first H steps with the actual change after H real
steps (``OUT/CASE/horizons.json``): how far the linearisation at θ0 holds.

    HF_HUB_OFFLINE=1 PYTHONPATH=src nice -n 5 .venv/bin/python scripts/validate_predict.py --out /tmp/validate-predict
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
HH_DATA = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
CASES = ("demo", "hh")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/validate-predict")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--hh-data", default=str(HH_DATA))
    p.add_argument("--prefix-steps", nargs="+", type=int, default=[0, 5, 10])
    p.add_argument("--permutations", type=int, default=10000)
    p.add_argument("--horizons", nargs="*", type=int, default=[],
                   help="also predict only the first H steps and compare with the actual change after H real steps "
                        "(how far the linearisation holds; needs a constant schedule)")
    p.add_argument("--train-only", action="store_true", help="train (or finish) the runs, then stop")
    p.add_argument("--reanalyse", action="store_true", help="no model: tables from OUT/CASE/pairs.jsonl")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- the runs


def untracked(cfg):
    return replace(cfg, probes=None, eval_every=0, initial_sample=False)


def demo_run(out: Path) -> tuple[Path, str]:
    """Train the demo's SFT and DPO runs (tracking off); returns (the DPO run, the held-out pairs)."""
    from lldyn.experiments.demo import load_demo
    from lldyn.train import train

    demo = load_demo(out)
    for cfg in (demo.sft, demo.dpo):
        cfg = untracked(cfg)
        print(f"== demo {cfg.method}: {cfg.steps} steps → {cfg.out}", flush=True)
        train(cfg, resume=(Path(cfg.out) / "config.json").is_file(), progress=False)
    return Path(demo.dpo.out), "builtin:test"


def hh_run(out: Path, data: str) -> tuple[Path, str]:
    """Set up and train ``lldyn reproduce dpo`` (tracking off); returns (the sft_dpo run, its held-out pairs)."""
    from lldyn.experiments.reproduce import load_experiment, set_up
    from lldyn.train import train

    e = load_experiment("dpo", out, data=data)
    made = set_up(e)
    if made:
        print(made, flush=True)
    cfg = untracked(e.runs[0])
    print(f"== hh {cfg.method}: {cfg.sft_steps} + {cfg.steps} steps → {cfg.out}", flush=True)
    train(cfg, resume=(Path(cfg.out) / "config.json").is_file(), progress=False)
    return Path(cfg.out), str(e.held_out_file)


# --------------------------------------------------------------------------- measuring


PREDICTORS = {
    "predict_k0": "lldyn predict (before training)",
    "logp_chosen": "baseline: log π(y+) at the phase start",
    "n_tokens_chosen": "baseline: len(y+) (tokens)",
    "risk": "squeeze risk",
    "ches": "CHES (Razin et al. 2024)",
}


def measure(run: Path, held_out: str, prefix_steps: list[int]) -> tuple[list[dict], dict]:
    """Per held-out pair: every predictor and the actual Δ log π(y+), Δ log π(y−) over the run's DPO phase."""
    import torch

    from lldyn.data import load_preferences
    from lldyn.experiments.reproduce import preference_phase_models
    from lldyn.predict import PredictConfig, pair_probes, predict_phase
    from lldyn.scoring import ScoreRequest, score
    from lldyn.squeeze.risk import SqueezeRiskConfig, squeeze_risk

    pairs = load_preferences(held_out)
    cfg, load_start, load_end = preference_phase_models(run)
    phase = "dpo" if cfg.method in ("sft_dpo", "extend") else None
    probes = pair_probes(pairs)
    rows = [{"id": p.id} for p in pairs]
    info: dict = {"run": str(run), "held_out": held_out, "n_pairs": len(pairs), "method": cfg.method,
                  "steps": cfg.steps, "lr": cfg.lr, "beta": cfg.beta, "batch_size": cfg.batch_size,
                  "optimizer": cfg.optimizer, "seconds": {}}

    def reqs():
        return [ScoreRequest(p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)]

    start = load_start()
    t = time.perf_counter()
    risks = squeeze_risk(start.model, start.tokenizer, pairs, SqueezeRiskConfig(beta=cfg.beta, score=cfg.scoring()))
    info["seconds"]["squeeze_risk"] = time.perf_counter() - t
    before = score(start.model, start.tokenizer, reqs(), cfg.scoring())
    for i, (row, r) in enumerate(zip(rows, risks)):
        row.update(risk=r.risk, risk_sum=r.risk_sum, ches=r.ches, ches_ln=r.ches_ln, logp_chosen=before[2 * i].logp,
                   logp_rejected=before[2 * i + 1].logp, n_tokens_chosen=before[2 * i].n_tokens)
    for k in prefix_steps:
        if start is None:
            start = load_start()
        print(f"-- predict, prefix {k}", flush=True)
        torch.manual_seed(cfg.seed)
        pred = predict_phase(cfg, probes, PredictConfig(phase=phase, start=start, prefix_steps=k), say=print)
        info["seconds"][f"predict_k{k}"] = pred.seconds
        for i, row in enumerate(rows):
            row[f"predict_k{k}"] = float(pred.predicted[2 * i])
            row[f"predict_k{k}_rejected"] = float(pred.predicted[2 * i + 1])
            row[f"prefix_k{k}"] = float(pred.prefix[2 * i])
        start = None  # predict moved its weights (prefix) or left them at θ0: load again for the next K
        gc.collect()
    end = load_end()
    after = score(end.model, end.tokenizer, reqs(), cfg.scoring())
    for i, row in enumerate(rows):
        row["d_logp_chosen"] = after[2 * i].logp - row["logp_chosen"]
        row["d_logp_rejected"] = after[2 * i + 1].logp - row["logp_rejected"]
    return rows, info


def horizons(run: Path, held_out: str, steps: list[int]) -> dict:
    """For each horizon H: the prediction of the first H steps alone (a plan of H steps, before training) against the
    actual change after H real steps (the real prefix of a plan of H + 1 steps), on the held-out y+ and y−."""
    import numpy as np

    from lldyn.data import load_preferences
    from lldyn.experiments.reproduce import preference_phase_models
    from lldyn.predict import PredictConfig, pair_probes, predict_phase
    from lldyn.squeeze.risk import spearman

    cfg, load_start, _ = preference_phase_models(run)
    if cfg.scheduler != "constant" or cfg.warmup_steps:
        raise SystemExit("--horizons needs a constant schedule (a shorter plan would change the learning rates)")
    phase = "dpo" if cfg.method in ("sft_dpo", "extend") else None
    probes = pair_probes(load_preferences(held_out))
    out = {}
    for h in steps:
        options = PredictConfig(phase=phase, start=load_start())
        pred = predict_phase(replace(cfg, steps=h), probes, options, say=print).predicted
        real = predict_phase(replace(cfg, steps=h + 1), probes, replace(options, start=load_start(), prefix_steps=h),
                             say=print).prefix
        row = {}
        for name, sl in (("chosen", slice(0, None, 2)), ("rejected", slice(1, None, 2))):
            p, a = pred[sl].numpy(), real[sl].numpy()
            row[name] = {"spearman": spearman(p, a), "pearson": float(np.corrcoef(p, a)[0, 1]),
                         "mean_predicted": float(p.mean()), "mean_actual": float(a.mean()),
                         "sign_agreement": float(((p < 0) == (a < 0)).mean())}
        out[str(h)] = row
        print(f"horizon {h}: " + "; ".join(f"{k} ρ {v['spearman']:+.3f}, Pearson {v['pearson']:+.3f}, mean predicted "
                                           f"{v['mean_predicted']:+.3f} vs actual {v['mean_actual']:+.3f}"
                                           for k, v in row.items()), flush=True)
    return out


def analyse(rows: list[dict], prefix_steps: list[int], permutations: int) -> dict:
    import numpy as np

    from lldyn.squeeze.risk import spearman, spearman_permutation_p

    names = dict(PREDICTORS)
    for k in prefix_steps:
        if k:
            names[f"predict_k{k}"] = f"lldyn predict, {k} real steps then linearised"
            names[f"prefix_k{k}"] = f"actual change over the first {k} steps alone"
    y = [r["d_logp_chosen"] for r in rows]
    table = {}
    for name, what in names.items():
        if name not in rows[0] or rows[0][name] is None:
            continue
        x = [r[name] for r in rows]
        table[name] = {"what": what, "spearman": spearman(x, y), "p_value": spearman_permutation_p(x, y, permutations),
                       "rho_with_len_chosen": spearman(x, [r["n_tokens_chosen"] for r in rows])}
    # Does predict beat each baseline? Paired bootstrap over pairs of ρ(predict) − |ρ(baseline)|, the baseline
    # taken with the sign it showed (which favours the baseline: its direction was not fixed in advance).
    rng = np.random.default_rng(0)
    boot = [rng.integers(0, len(rows), len(rows)) for _ in range(2000)]
    for k in prefix_steps:
        key = f"predict_k{k}"
        x = np.array([r[key] for r in rows])
        yy = np.array(y)
        for name in ("logp_chosen", "n_tokens_chosen", "risk", "ches"):
            if name not in table:
                continue
            b = np.array([r[name] for r in rows], dtype=float) * (1 if table[name]["spearman"] >= 0 else -1)
            diffs = np.array([spearman(x[i], yy[i]) - spearman(b[i], yy[i]) for i in boot])
            diffs = diffs[np.isfinite(diffs)]
            table[key].setdefault("minus", {})[name] = {
                "difference": table[key]["spearman"] - abs(table[name]["spearman"]),
                "ci95": [float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))]}
    d = np.array(y)
    summary = {"n_pairs": len(rows), "mean_d_logp_chosen": float(d.mean()), "frac_chosen_fell": float((d < 0).mean()),
               "mean_d_logp_rejected": float(np.mean([r["d_logp_rejected"] for r in rows]))}
    for k in prefix_steps:
        p = np.array([r[f"predict_k{k}"] for r in rows])
        summary[f"predict_k{k}"] = {
            "mean_predicted": float(p.mean()), "pearson": float(np.corrcoef(p, d)[0, 1]),
            "sign_agreement": float(((p < 0) == (d < 0)).mean()),
            "spearman_rejected": spearman([r[f"predict_k{k}_rejected"] for r in rows],
                                          [r["d_logp_rejected"] for r in rows])}
    return {"correlations": table, "summary": summary}


def print_tables(case: str, results: dict) -> None:
    s = results["summary"]
    print(f"\n### {case}: {s['n_pairs']} held-out pairs; mean Δ log π(y+) {s['mean_d_logp_chosen']:+.2f} "
          f"(fell for {s['frac_chosen_fell']:.0%}), mean Δ log π(y−) {s['mean_d_logp_rejected']:+.2f}")
    print("\n| predictor | ρ with Δ log π(y+) | p | ρ with len(y+) |\n| --- | ---: | ---: | ---: |")
    for c in results["correlations"].values():
        p = c["p_value"]
        print(f"| {c['what']} | {c['spearman']:+.3f} | {p:.3f} | {c['rho_with_len_chosen']:+.2f} |"
              if p >= 0.001 else f"| {c['what']} | {c['spearman']:+.3f} | <0.001 | {c['rho_with_len_chosen']:+.2f} |")
    for key, c in results["correlations"].items():
        for name, v in c.get("minus", {}).items():
            print(f"{key} − |{name}|: {v['difference']:+.3f} [95% bootstrap {v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]")
    for key, v in s.items():
        if key.startswith("predict_k"):
            print(f"{key}: mean predicted {v['mean_predicted']:+.3f}, Pearson {v['pearson']:+.3f}, sign agreement "
                  f"{v['sign_agreement']:.0%}, ρ on y− {v['spearman_rejected']:+.3f}")


def main(argv: list[str] | None = None) -> int:
    import torch

    from lldyn.io import atomic_write_json, atomic_write_jsonl

    args = parse_args(argv)
    out = Path(args.out)
    for case in args.cases:
        case_dir = out / case
        if args.reanalyse:
            rows = [json.loads(line) for line in (case_dir / "pairs.jsonl").read_text().splitlines()]
            results = json.loads((case_dir / "results.json").read_text())
            results.update(analyse(rows, results["prefix_steps"], args.permutations))
            atomic_write_json(case_dir / "results.json", results)
            print_tables(case, results)
            continue
        torch.manual_seed(0)
        t = time.perf_counter()
        run, held_out = demo_run(case_dir) if case == "demo" else hh_run(case_dir, args.hh_data)
        trained = time.perf_counter() - t
        if args.train_only:
            continue
        if args.horizons:
            result = horizons(run, held_out, args.horizons)
            atomic_write_json(case_dir / "horizons.json", result)
            continue
        t = time.perf_counter()
        rows, info = measure(run, held_out, args.prefix_steps)
        info["seconds"]["train"], info["seconds"]["measure"] = trained, time.perf_counter() - t
        results = {**info, "prefix_steps": args.prefix_steps, **analyse(rows, args.prefix_steps, args.permutations)}
        atomic_write_jsonl(case_dir / "pairs.jsonl", rows)
        atomic_write_json(case_dir / "results.json", results)
        print_tables(case, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
