"""Validate the squeeze risk score against what off-policy DPO actually does (issue 7, run once).

On SmolLM2-135M-Instruct and real HH-RLHF pairs (``../shared/data/hh-rlhf``):

1. select the first ``--pairs`` pairs (file order) whose prompt has at most ``--max-prompt-tokens``
   tokens and whose two responses have at most ``--max-response-tokens`` tokens each (EOS included)
   under the chat template, so nothing is truncated, and whose responses differ;
2. at step 0, compute the squeeze risk and the CHES baseline of every pair
   (:func:`lldyn.squeeze.risk.squeeze_risk`) and log π(y+), log π(y−), log π(y*) with the engine;
3. run ``--steps`` off-policy DPO steps on exactly those pairs with ``lldyn.train.train`` (AdamW,
   constant learning rate, reference = the starting model);
4. score the pairs again and report Spearman(score, −Δ log π(y+)) for the risk score, its parts,
   CHES and two length baselines, with two-sided permutation p-values.

With ``--from-runs START END`` nothing is trained: the start model is START's (a run directory's final
model, or one checkpoint ``RUN/checkpoints/step-N``: END's starting point and DPO reference) and the end
model END's; the pairs are END's training data (``--data`` overrides, e.g. with held-out pairs added),
all of them unless ``--pairs``, scored with END's truncation policy as END trained on them. This validates the score on a run
that squeezes, e.g. the demo's ``runs/demo/sft`` and ``runs/demo/dpo``, or the DPO phase of a one-run
SFT → DPO (START = its SFT-end checkpoint, END = the run); each row also says whether the pair was in one
of the batches of END's preference phase.

Writes ``OUT/results.json`` (everything), ``OUT/pairs.jsonl`` (per pair: scores and changes),
``OUT/train_pairs.jsonl`` (the selected pairs) and the run directory ``OUT/run`` (its checkpoint is
deleted at the end unless ``--keep-checkpoint``), and prints a Markdown table for docs/squeezing.md.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/validate_squeeze_risk.py --out runs/validate-squeeze-risk
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"

# name → (what it is, how to read it from a pair's row); higher = predicted larger drop of log π(y+).
PREDICTORS = {
    "risk": "squeeze risk (mean over y− tokens of c−‖π−e_y‖ · top-1 · −log π(y−_t))",
    "risk_sum": "squeeze risk × len(y−) (summed over y− tokens)",
    "ches": "CHES (Razin et al. 2024)",
    "ches_ln": "length-normalised CHES (Razin et al. 2024)",
    "neg_surprise": "part: −mean log π(y−) per token",
    "neg_top1": "part: mean top-1 probability along y−",
    "neg_low_entropy": "part: −mean entropy along y−",
    "neg_residual": "part: mean c−‖π − e_y‖ along y−",
    "n_tokens_chosen": "baseline: length of y+",
    "n_tokens_rejected": "baseline: length of y−",
    "logp_chosen": "baseline: log π(y+) at step 0",
}
# Targets: the drop of log π(y+) (summed over its tokens, what the issue asks for) and the same per token
# of y+ (which takes out the length of y+, a strong confound of the summed drop).
TARGETS = {"drop": "−Δ log π(y+)", "drop_per_token": "−Δ log π(y+) per token of y+"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--out", default=str(ROOT / "runs" / "validate-squeeze-risk"))
    p.add_argument("--pairs", type=int, default=None, help="how many pairs (default: 48; all with --from-runs)")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-prompt-tokens", type=int, default=96)
    p.add_argument("--max-response-tokens", type=int, default=48)
    p.add_argument("--permutations", type=int, default=10000)
    p.add_argument("--keep-checkpoint", action="store_true")
    p.add_argument("--from-runs", nargs=2, metavar=("START_RUN", "END_RUN"), default=None,
                   help="no training: score START_RUN's and END_RUN's final models (see the module docstring)")
    p.add_argument("--reanalyse", action="store_true",
                   help="no model: recompute the tables from OUT/pairs.jsonl and update OUT/results.json")
    return p.parse_args(argv)


def select_pairs(pairs, encoder, n: int | None, max_prompt: int, max_response: int, untruncated: bool = True):
    """The first ``n`` (None: all) pairs whose two responses differ and, with ``untruncated``, that the
    encoder's config scores untruncated with at most ``max_response`` response tokens. Without it (a run's
    own pairs) pairs are taken as the run trained on them, cut by its truncation policy."""
    chosen = []
    for p in pairs:
        if p.chosen.strip() == p.rejected.strip():
            continue
        encoded = [encoder.pair(p.prompt, r) for r in (p.chosen, p.rejected)]
        if untruncated and (len(encoder.prompt(p.prompt)) > max_prompt
                            or any(e.truncated or len(e.response_ids) > max_response for e in encoded)):
            continue
        chosen.append(p)
        if len(chosen) == n:
            break
    return chosen


def engine_scores(model, tokenizer, pairs, config):
    """(log π(y+), log π(y−), log π(y*)) per pair, y* the teacher-forced argmax along y+."""
    from lldyn.scoring import ScoreRequest, score

    reqs = [ScoreRequest(p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)]
    res = score(model, tokenizer, reqs, config)
    return [(res[2 * i].logp, res[2 * i + 1].logp, res[2 * i].argmax_logp) for i in range(len(pairs))]


def analyse(rows: list[dict], permutations: int, seed: int) -> dict:
    """Spearman ρ and permutation p of every predictor against every target, from per-pair rows."""
    from lldyn.squeeze.risk import spearman, spearman_permutation_p

    targets = {"drop": [-r["d_logp_chosen"] for r in rows],
               "drop_per_token": [-r["d_logp_chosen"] / r["n_tokens_chosen"] for r in rows]}
    table = {}
    for name, what in PREDICTORS.items():
        xs = [r[name] for r in rows]
        table[name] = {"what": what}
        for target, ys in targets.items():
            table[name][target] = {"spearman": spearman(xs, ys),
                                   "p_value": spearman_permutation_p(xs, ys, permutations, seed)}
        table[name]["rho_with_len_chosen"] = spearman(xs, [r["n_tokens_chosen"] for r in rows])
    return table


def print_tables(results: dict) -> None:
    s = results["summary"]
    print(f"\nmean Δ log π: y+ {s['mean_d_logp_chosen']:+.3f}, y− {s['mean_d_logp_rejected']:+.3f}, "
          f"y* {s['mean_d_logp_argmax']:+.3f}; y+ fell for {s['frac_chosen_fell']:.0%} of pairs, "
          f"y+ and y− both for {s['frac_both_fell']:.0%}")
    head = " | ".join(f"ρ with {t} | p" for t in TARGETS.values())
    print(f"\n| predictor | {head} | ρ with len(y+) |\n| --- |" + " ---: | ---: |" * len(TARGETS) + " ---: |")
    pval = lambda p: f"{p:.3f}" if p >= 0.001 else "<0.001"  # noqa: E731
    for c in results["correlations"].values():
        cells = " | ".join(f"{c[t]['spearman']:+.3f} | {pval(c[t]['p_value'])}" for t in TARGETS)
        print(f"| {c['what']} | {cells} | {c['rho_with_len_chosen']:+.2f} |")
    print(f"\n(|ρ| > {s['rho_null_95']:.2f} is needed for p < 0.05 with n = {s['n_pairs']})")


def main(argv: list[str] | None = None) -> int:
    import torch

    from lldyn.data import load_preferences
    from lldyn.io import atomic_write_json, atomic_write_jsonl
    from lldyn.models import ModelConfig, load_model
    from lldyn.scoring import Encoder, ScoreConfig
    from lldyn.squeeze.risk import SqueezeRiskConfig, squeeze_risk
    from lldyn.train import TrainConfig, train

    args = parse_args(argv)
    if args.reanalyse:
        out = Path(args.out)
        rows = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
        for row in rows:
            row.setdefault("neg_low_entropy", -row["neg_entropy"])
        results = json.loads((out / "results.json").read_text())
        results.update(analyse_all(rows, args))
        results["targets"] = TARGETS
        results["reanalysed"] = "correlations recomputed from pairs.jsonl (no model run) by --reanalyse"
        atomic_write_json(out / "results.json", results)
        print_all(results)
        return 0
    end_cfg = None
    if args.from_runs:
        from lldyn.train import run_train_config

        end_cfg = run_train_config(args.from_runs[1])
        if args.data == str(DEFAULT_DATA):
            args.data = end_cfg.data
        args.beta, args.seed = end_cfg.beta, end_cfg.seed
        # END's own truncation: its prompt cap (none: any prompt that leaves room) and max length
        args.max_prompt_tokens = end_cfg.max_prompt_tokens or end_cfg.max_length - 1
        args.max_response_tokens = end_cfg.max_length - (end_cfg.max_prompt_tokens or 1)
    elif not Path(args.data).is_file():
        print(f"validate_squeeze_risk: data not found: {args.data} (needs ../shared/data)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    max_length = end_cfg.max_length if end_cfg else args.max_prompt_tokens + args.max_response_tokens
    score_cfg = ScoreConfig(max_length=max_length, max_prompt_tokens=args.max_prompt_tokens)

    t_start = time.perf_counter()
    if args.from_runs:
        from lldyn.runs import load_model_or_run

        lm = load_model_or_run(args.from_runs[0])
        all_pairs = load_preferences(args.data, end_cfg.split, None, skip_invalid=True)
        pairs = select_pairs(all_pairs, Encoder(lm.tokenizer, score_cfg), args.pairs, args.max_prompt_tokens,
                             args.max_response_tokens, untruncated=False)
    else:
        args.pairs = args.pairs or 48
        lm = load_model(ModelConfig(name=args.model))
        all_pairs = load_preferences(args.data, skip_invalid=True)
        pairs = select_pairs(all_pairs, Encoder(lm.tokenizer, score_cfg), args.pairs, args.max_prompt_tokens,
                             args.max_response_tokens)
    if args.pairs is not None and len(pairs) < args.pairs:
        print(f"only {len(pairs)} pairs fit the limits", file=sys.stderr)
    data_file = out / "train_pairs.jsonl"
    atomic_write_jsonl(data_file, [p.to_json() for p in pairs])
    limits = (f"max length {max_length}, prompts cut to {args.max_prompt_tokens} tokens" if args.from_runs else
              f"prompt <= {args.max_prompt_tokens}, responses <= {args.max_response_tokens} tokens, untruncated")
    print(f"{len(pairs)} pairs selected from {len(all_pairs)} ({limits})", flush=True)

    t0 = time.perf_counter()
    risks = squeeze_risk(lm.model, lm.tokenizer, pairs, SqueezeRiskConfig(beta=args.beta, score=score_cfg))
    t_risk = time.perf_counter() - t0
    before = engine_scores(lm.model, lm.tokenizer, pairs, score_cfg)
    del lm
    print(f"step-0 risk + CHES for {len(pairs)} pairs: {t_risk:.1f} s", flush=True)

    if args.from_runs:
        from lldyn.rundir import RunDir
        from lldyn.runs import load_model_or_run

        t0 = time.perf_counter()
        end = load_model_or_run(args.from_runs[1])
        after = engine_scores(end.model, end.tokenizer, pairs, score_cfg)
        t_train = time.perf_counter() - t0
        rows = [r.to_json() for r in RunDir(args.from_runs[1]).train_rows()]
        train_rows = [r for r in rows if r.get("phase") not in (None, "sft")] or rows
        trained = trained_ids(end_cfg, train_rows, phase_index=int(len(train_rows) < len(rows)))
        return finish(args, out, pairs, risks, before, after, train_rows, t_risk, t_train, t_start, trained)

    run_dir = out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # this script's own previous run
    cfg = TrainConfig(method="dpo", model=args.model, data=str(data_file), out=str(run_dir), steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr, optimizer="adamw", scheduler="constant",
                      beta=args.beta, max_length=max_length, max_prompt_tokens=args.max_prompt_tokens,
                      seed=args.seed, eval_every=0, keep_checkpoints=1, initial_sample=False)
    t0 = time.perf_counter()
    result = train(cfg, progress=False)
    t_train = time.perf_counter() - t0
    after = engine_scores(result.model, result.tokenizer, pairs, score_cfg)
    print(f"{args.steps} DPO steps: {t_train:.1f} s", flush=True)
    if not args.keep_checkpoint:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    train_rows = [r.to_json() for r in result.run.train_rows()]
    return finish(args, out, pairs, risks, before, after, train_rows, t_risk, t_train, t_start, None)


def trained_ids(cfg, train_rows: list[dict], phase_index: int) -> set[str]:
    """Ids of the pairs in the batches of a run's preference phase (``train_rows``, one per step), from its
    own training data and data order (epochs wrap; assumes every pair was usable, as on this data)."""
    from lldyn.data import load_preferences
    from lldyn.train.batches import batch_order

    ids = [p.id for p in load_preferences(cfg.data, cfg.split, cfg.limit, skip_invalid=cfg.skip_invalid)]
    per_epoch = len(ids) // cfg.batch_size
    trained = set()
    for k in range(len(train_rows) * cfg.grad_accum):
        epoch, within = divmod(k, per_epoch)
        trained.update(ids[i] for i in batch_order(len(ids), cfg.batch_size, cfg.seed, phase_index, epoch)[within])
    return trained


def summarise(rows: list[dict]) -> dict:
    """What DPO did to the pairs of ``rows`` (means, fractions) and the |ρ| needed for p < 0.05."""
    import numpy as np

    d_chosen = np.array([r["d_logp_chosen"] for r in rows])
    d_rejected = np.array([r["d_logp_rejected"] for r in rows])
    return {
        "n_pairs": len(rows), "mean_d_logp_chosen": float(d_chosen.mean()),
        "mean_d_logp_rejected": float(d_rejected.mean()),
        "mean_d_logp_argmax": float(np.mean([r["d_logp_argmax"] for r in rows])),
        "frac_chosen_fell": float((d_chosen < 0).mean()), "frac_both_fell": float(((d_chosen < 0) & (d_rejected < 0)).mean()),
        "median_d_logp_chosen": float(np.median(d_chosen)), "rho_null_95": 1.96 / float(np.sqrt(len(rows) - 1)),
    }


def analyse_all(rows: list[dict], args: argparse.Namespace) -> dict:
    """Summary and correlations of all pairs and, when rows say whether a pair was trained on, of the others."""
    out = {"summary": summarise(rows), "correlations": analyse(rows, args.permutations, args.seed)}
    if rows and "trained" in rows[0]:
        untrained = [r for r in rows if not r["trained"]]
        out["n_trained"] = len(rows) - len(untrained)
        out["untrained"] = {"summary": summarise(untrained),
                            "correlations": analyse(untrained, args.permutations, args.seed)}
    return out


def print_all(results: dict) -> None:
    print_tables(results)
    if "untrained" in results:
        print(f"\nonly the {results['untrained']['summary']['n_pairs']} pairs that were in no training batch:")
        print_tables(results["untrained"])


def finish(args, out, pairs, risks, before, after, train_rows, t_risk, t_train, t_start, trained) -> int:
    """Per-pair rows, correlations and the summary; written to OUT and printed."""
    from lldyn.io import atomic_write_json, atomic_write_jsonl
    from lldyn.squeeze.risk import rank_pairs

    ranked = {r.id: r for r in rank_pairs(risks)}
    rows = []
    for r, b, a in zip(risks, before, after):
        row = ranked[r.id].to_json()
        row.update({"neg_low_entropy": -r.neg_entropy, "logp_argmax": b[2], "d_logp_chosen": a[0] - b[0],
                    "d_logp_rejected": a[1] - b[1], "d_logp_argmax": a[2] - b[2]})
        if trained is not None:
            row["trained"] = r.id in trained
        rows.append(row)
    results = {
        "what": "Spearman(score at step 0, -Δ log π(y+) after off-policy DPO), "
                f"{args.model}, {Path(args.data).name}",
        "targets": TARGETS,
        "args": vars(args), "data": str(args.data), "seconds": {"risk_and_ches": t_risk, "train": t_train,
                                                                "total": time.perf_counter() - t_start},
        "train": {"first_loss": train_rows[0].get("loss") if train_rows else None,
                  "last_loss": train_rows[-1].get("loss") if train_rows else None,
                  "last_reward_acc": train_rows[-1].get("reward_acc") if train_rows else None},
        **analyse_all(rows, args), "pair_ids": [p.id for p in pairs],
    }
    atomic_write_json(out / "results.json", results)
    atomic_write_jsonl(out / "pairs.jsonl", rows)
    print_all(results)
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
