"""Validate ``lldyn lld-risk`` against what GRPO does, and compare GRPO runs (issue 17, run once).

1. At the starting weights of the first run, the LLD risk table of the held-out prompts (``--held-out``, default
   the built-in test prompts with a gold answer): a group of completions per prompt sampled as the run samples
   them, split by the reward, every score of :mod:`lldyn.squeeze.nthr` and the trivial baselines.
2. Each run's final model scores those same correct completions again: the target of a prompt is the change of
   its correct completions' log π (mean over them, summed over tokens; and per token).
3. For the first run: Spearman ρ of every score and baseline with the *drop* (−Δ, so positive ρ = the score ranks
   the prompts whose correct completions fell, or rose least, first), with two-sided permutation p-values
   (:func:`lldyn.squeeze.risk.spearman_permutation_p`), over the informative prompts (both correct and incorrect
   completions; the others have no score).
4. For every run: mean Δ log π of the correct completions, the share of prompts where it fell, the run's mean
   reward over its first and last steps, and greedy accuracy against the gold answers on the held-out prompts at
   the start and the end (:func:`lldyn.rewards.gold_answer_reward` on greedy completions).

With ``--train-steps N`` it first trains a plain GRPO run into ``OUT/grpo`` (``--model``, ``--data`` …) and uses it
as the first run. Writes ``OUT/results.json``, ``OUT/risk.jsonl`` (the table with each run's Δ) and prints Markdown.

    PYTHONPATH=src HF_HUB_OFFLINE=1 .venv/bin/python scripts/validate_lld_risk.py --out runs/lld-val \\
        --runs runs/grpo-plain runs/grpo-nthr
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TARGETS = {"drop": "−Δ log π(correct)", "drop_per_token": "−Δ log π(correct) per token"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--runs", nargs="*", default=[], help="finished GRPO run directories (the first is validated)")
    p.add_argument("--held-out", default="builtin:test", help="prompts with gold answers (default builtin:test)")
    p.add_argument("--limit", type=int, default=None, help="only the first N held-out prompts")
    p.add_argument("--reward", default=None, help="reward (default: the first run's)")
    p.add_argument("--risk-seed", type=int, default=0, help="sampling seed of the risk table")
    p.add_argument("--risk-table", default=None, help="a table `lldyn lld-risk` wrote for the held-out prompts at the "
                                                      "first run's starting weights and sampling settings (reused)")
    p.add_argument("--permutations", type=int, default=10000)
    p.add_argument("--greedy-tokens", type=int, default=48, help="greedy completion budget for accuracy")
    p.add_argument("--train-steps", type=int, default=None, help="train a plain GRPO run into OUT/grpo first")
    p.add_argument("--model", default="smollm2-135m-instruct", help="with --train-steps: the starting model")
    p.add_argument("--data", default="builtin:train", help="with --train-steps: training prompts")
    p.add_argument("--train-flags", default="", help="with --train-steps: more TrainConfig fields, k=v,k=v")
    return p.parse_args(argv)


def train_plain(args: argparse.Namespace, out: Path) -> Path:
    """A plain GRPO run into OUT/grpo from --model/--data/--train-flags (values parsed as the config file does)."""
    from lldyn.config import build_config
    from lldyn.train import TrainConfig, train

    values = {"method": "grpo", "model": args.model, "data": args.data, "steps": args.train_steps,
              "out": str(out / "grpo"), "eval_every": 0, "initial_sample": False, "skip_invalid": True}
    for item in filter(None, args.train_flags.split(",")):
        key, _, value = item.partition("=")
        values[key.strip()] = value.strip()
    train(build_config(TrainConfig, values), progress=False)
    return out / "grpo"


def read_risk_table(path: str) -> list:
    """The rows of a table ``lldyn lld-risk`` (or this script's risk.jsonl) wrote, as :class:`lldyn.squeeze.nthr.PromptRisk`."""
    from lldyn.io import read_jsonl
    from lldyn.squeeze.nthr import PromptRisk

    out = []
    for row in read_jsonl(path):
        row = {k: v for k, v in row.items() if k in PromptRisk.__dataclass_fields__}
        row["prompt_ids"] = tuple(row["prompt_ids"])
        row["correct_ids"] = tuple(tuple(ids) for ids in row["correct_ids"])
        row["correct_logps"] = tuple(row["correct_logps"])
        out.append(PromptRisk(**{k: (math.nan if v is None else v) for k, v in row.items()}))
    return out


def greedy_accuracy(model, tokenizer, prompts, cfg, max_new_tokens: int) -> float:
    """Share of ``prompts`` whose greedy completion states the gold answer (the builtin reward)."""
    from lldyn.generation import GenerationConfig, generate
    from lldyn.rewards import gold_answer_reward

    texts = generate(model, tokenizer, [p.prompt for p in prompts], GenerationConfig(
        max_new_tokens=max_new_tokens, template=cfg.template, batch_size=8, max_prompt_tokens=cfg.max_prompt_tokens))
    got = gold_answer_reward([p.prompt for p in prompts], texts, answer=[p.fields.get("answer") for p in prompts],
                             answer_aliases=[p.fields.get("answer_aliases") for p in prompts])
    return sum(1.0 for g in got if g == 1.0) / len(prompts)


def correct_changes(model, risks, pad_id: int) -> list[tuple[float, float] | None]:
    """Per prompt: (mean Δ log π, mean Δ log π per token) of its correct completions, None without any."""
    from lldyn.scoring import EncodedPair, score_encoded

    out = []
    for r in risks:
        if not r.correct_ids:
            out.append(None)
            continue
        after = score_encoded(model, [EncodedPair(r.prompt_ids, ids) for ids in r.correct_ids], pad_id)
        deltas = [a.logp - b for a, b in zip(after, r.correct_logps)]
        per_token = [d / len(ids) for d, ids in zip(deltas, r.correct_ids)]
        out.append((sum(deltas) / len(deltas), sum(per_token) / len(per_token)))
    return out


def correlations(rows: list[dict], permutations: int) -> dict:
    """Spearman ρ and permutation p of every score and baseline with each target, over the informative rows."""
    from lldyn.squeeze.nthr import RISK_BASELINES, RISK_SCORES
    from lldyn.squeeze.risk import spearman, spearman_permutation_p

    table = {}
    for name in RISK_SCORES + RISK_BASELINES:
        xs = [r[name] for r in rows]
        table[name] = {"kind": "score" if name in RISK_SCORES else "baseline"}
        for target in TARGETS:
            ys = [r[target] for r in rows]
            table[name][target] = {"spearman": spearman(xs, ys), "p_value": spearman_permutation_p(xs, ys, permutations)}
    return table


def print_tables(results: dict) -> None:
    pval = lambda p: "nan" if p != p else (f"{p:.3f}" if p >= 0.001 else "<0.001")  # noqa: E731
    v = results["validation"]
    print(f"\nvalidation on {v['run']}: {v['n_informative']} informative held-out prompts of {v['n_prompts']}")
    print("\n| predictor | kind | " + " | ".join(f"ρ with {t} | p" for t in TARGETS.values()) + " |")
    print("| --- | --- |" + " ---: | ---: |" * len(TARGETS))
    for name, c in v["correlations"].items():
        cells = " | ".join(f"{c[t]['spearman']:+.3f} | {pval(c[t]['p_value'])}" for t in TARGETS)
        print(f"| {name} | {c['kind']} | {cells} |")
    print("\n| run | mean Δ log π(correct) | per token | prompts where it fell | reward first → last steps | "
          "greedy accuracy start → end |\n| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results["runs"].items():
        print(f"| {name} | {r['mean_d_logp_correct']:+.3f} | {r['mean_d_logp_correct_per_token']:+.4f} | "
              f"{r['frac_fell']:.0%} ({r['n_fell']}/{r['n_measured']}) | {r['reward_first']:.3f} → "
              f"{r['reward_last']:.3f} | {r['accuracy_start']:.3f} → {r['accuracy_end']:.3f} |")


def main(argv: list[str] | None = None) -> int:
    from lldyn.data import load_prompts
    from lldyn.io import atomic_write_json, atomic_write_jsonl
    from lldyn.squeeze.nthr import LLDRiskConfig, lld_risk
    from lldyn.models import load_model
    from lldyn.rewards import load_reward
    from lldyn.rundir import RunDir
    from lldyn.runs import load_run_model
    from lldyn.train import run_train_config

    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs = [Path(r) for r in args.runs]
    if args.train_steps:
        runs.insert(0, train_plain(args, out))
    if not runs:
        print("no run: give --runs or --train-steps", file=sys.stderr)
        return 2
    cfg = run_train_config(runs[0])
    reward = load_reward(args.reward or cfg.reward)
    prompts = reward.check_prompts(load_prompts(args.held_out, limit=args.limit, skip_invalid=True), True)
    start = load_model(cfg.model_config())
    risk_cfg = LLDRiskConfig(num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
                             temperature=cfg.temperature, top_p=cfg.top_p, seed=args.risk_seed, template=cfg.template,
                             max_prompt_tokens=cfg.max_prompt_tokens or None, scale_rewards=cfg.scale_rewards)
    if args.risk_table:
        risks = read_risk_table(args.risk_table)
        missing = {r.id for r in risks} - {p.id for p in prompts}
        if missing:
            print(f"{args.risk_table}: prompts not in {args.held_out}: {sorted(missing)[:3]}", file=sys.stderr)
            return 2
    else:
        risks = lld_risk(start.model, start.tokenizer, prompts, reward, risk_cfg)
    t_risk = time.perf_counter() - t0
    accuracy_start = greedy_accuracy(start.model, start.tokenizer, prompts, cfg, args.greedy_tokens)
    rows = [r.to_json() for r in risks]
    results: dict = {"runs": {}, "held_out": args.held_out, "risk_config": risk_cfg.__dict__,
                     "seconds_risk_table": t_risk}
    for k, run in enumerate(runs):
        model = load_run_model(run).model
        changes = correct_changes(model, risks, start.tokenizer.pad_token_id)
        for row, change in zip(rows, changes):
            row[f"d_logp_correct/{run.name}"] = change[0] if change else None
            row[f"d_logp_correct_per_token/{run.name}"] = change[1] if change else None
        measured = [c for c in changes if c is not None]
        train_rows = RunDir(run).train_rows()
        rewards = [r.stats.get("reward", math.nan) for r in train_rows]
        rewards = [x for x in rewards if isinstance(x, float) and not math.isnan(x)]
        head = max(1, len(rewards) // 4)
        results["runs"][run.name] = {
            "path": str(run), "steps": len(train_rows), "nthr": bool(run_train_config(run).nthr),
            "n_measured": len(measured), "n_fell": sum(c[0] < 0 for c in measured),
            "frac_fell": sum(c[0] < 0 for c in measured) / max(1, len(measured)),
            "mean_d_logp_correct": sum(c[0] for c in measured) / max(1, len(measured)),
            "mean_d_logp_correct_per_token": sum(c[1] for c in measured) / max(1, len(measured)),
            "reward_first": sum(rewards[:head]) / head, "reward_last": sum(rewards[-head:]) / head,
            "accuracy_start": accuracy_start,
            "accuracy_end": greedy_accuracy(model, start.tokenizer, prompts, cfg, args.greedy_tokens),
        }
        if k == 0:
            informative = [dict(r, drop=-r[f"d_logp_correct/{run.name}"],
                                drop_per_token=-r[f"d_logp_correct_per_token/{run.name}"])
                           for r in rows if r["informative"]]
            results["validation"] = {"run": run.name, "n_prompts": len(rows), "n_informative": len(informative),
                                     "correlations": correlations(informative, args.permutations)}
    results["seconds_total"] = time.perf_counter() - t0
    atomic_write_jsonl(out / "risk.jsonl", rows)
    atomic_write_json(out / "results.json", results)
    print_tables(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
