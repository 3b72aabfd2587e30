"""``lldyn reproduce sft|dpo|extend|grpo``: the paper's experiments and GRPO's (:mod:`lldyn.experiments.reproduce`),
one command each."""
from __future__ import annotations

import argparse
from pathlib import Path

EXPERIMENTS = ("sft", "dpo", "extend", "grpo")


def register(sub: argparse._SubParsersAction) -> None:
    shipped = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "configs" / "reproduce").glob("*.toml"))
    p = sub.add_parser("reproduce", help="rerun the paper's SFT / DPO / extend experiments, or GRPO on verifiable prompts, "
                            "from shipped configs",
                       description="Shipped configs: " + ", ".join(shipped) + ". The SFT / DPO / extend data is "
                                   "HH-RLHF from the Hugging Face cache (hf:Anthropic/hh-rlhf/harmless-base); --data "
                                   "FILE takes any preference file. grpo trains on the built-in prompts with a gold "
                                   "answer (--reward builtin) and reports reward, greedy accuracy, the correct and "
                                   "incorrect samples' log-probabilities and whether lazy likelihood displacement "
                                   "shows.")
    p.add_argument("experiment", choices=EXPERIMENTS)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", default=None,
                   help="a shipped config name (e.g. qwen2.5-0.5b-dpo) or a TOML file (default: the CPU config)")
    p.add_argument("--model", default=None, help="model instead of the config's")
    p.add_argument("--data", default=None, help="preference data instead of the config's (file, builtin:train or hf:NAME)")
    p.add_argument("--test-data", default=None,
                   help="held-out pairs (e.g. builtin:test) instead of a seeded split of --data; every pair of "
                        "--data is then trained on")
    p.add_argument("--quick", action="store_true", help="a few steps on few pairs (smoke test)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lldyn.experiments.reproduce import describe_held_out, load_experiment, run_reproduce
    from lldyn.summary import WHAT_MOVED, what_moved

    experiment = load_experiment(args.experiment, args.out, args.config, args.model, args.data, args.quick,
                                 args.test_data)
    result = run_reproduce(experiment)
    if result.grpo is not None:
        print(f"\nGRPO ({experiment.runs[0].out}):")
        for line in result.grpo.lines():
            print("  " + line)
    print("\n" + WHAT_MOVED)
    for line in what_moved([cfg.out for cfg in experiment.runs], tagged=True):
        print("  " + line)
    if result.held_out:
        print("\nThe held-out prompts (never trained on), over the DPO phase (mean change of log π, nats):")
        for cfg in experiment.runs:
            rows = [r for r in result.held_out if r["run"] == Path(cfg.out).name]
            if rows:
                print(f"  [{Path(cfg.out).name}] " + describe_held_out(rows))
    if args.experiment == "extend":
        a, b = experiment.runs[1].out, experiment.runs[0].out
        print(f"\njudge them: lldyn judge --a {a} --b {b} --prompts {experiment.held_out_file}"
              f" --judge hf:MODEL|openai:MODEL --out {experiment.out / 'judge'}")
        if _has_gold_answers(experiment.held_out_file):
            print(f"against the gold answers: lldyn judge --a {a} --b {b} --prompts {experiment.held_out_file}"
                  f" --judge reference --answered-only --out {experiment.out / 'judge-reference'}")
    print(f"\nreport: {result.report}")
    return 0


def _has_gold_answers(held_out: Path) -> bool:
    from lldyn.errors import LldynError
    from lldyn.judge import load_prompts

    try:
        return bool(load_prompts(str(held_out), gold="only"))
    except LldynError:
        return False
