"""``lldyn demo`` (what ``make demo`` runs): the pipeline of :mod:`lldyn.experiments.demo`, then what moved."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="SFT then off-policy DPO on the embedded SmolLM2 with probe tracking and a report",
                       description="The main job on the embedded default: build probes, run SFT and DPO with tracking, "
                                   "write report.html and print what moved (≈10 minutes on a 2-core CPU).")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--config", default=None, help="TOML with [demo], [sft] and [dpo] sections (default: shipped demo.toml)")
    p.add_argument("--model", default=None, help="model instead of the embedded SmolLM2 (alias, .gguf, directory)")
    p.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lldyn.experiments.demo import load_demo, run_demo
    from lldyn.summary import WHAT_MOVED, what_moved

    demo = load_demo(args.out, args.config, args.model, args.quick)  # both runs' configs checked before writing
    report = run_demo(demo)
    print("\n" + WHAT_MOVED)
    for line in what_moved([demo.sft.out, demo.dpo.out]):
        print("  " + line)
    print(f"\nreport: {report}")
    return 0
