"""``lldyn decompose --run RUN --every N --out DIR``: first-order prediction and attribution of a run's steps.

Training is deterministic on the CPU (same seed, same data order, same numbers; tested), so the
decomposition of an existing run is obtained by replaying its config with the decomposition hook on:
every N-th step writes, per probe, the actual Δ log π, the prediction ⟨∇θ log π, Δθ⟩ and the
contributions of the y+ / y− terms and of each training example to ``DIR/decompose.jsonl``, and
``lldyn report DIR`` draws predicted vs actual and the +/− split per family. To decompose while
training, pass ``--decompose-every N`` to ``lldyn train`` instead.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decompose", help="predict and attribute each step's effect on the probes (first order)",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--run", dest="run_dir", required=True,  # not "run": that attribute is the command itself
                   help="a run directory made by lldyn train (with probes)")
    p.add_argument("--every", type=int, default=10, help="decompose every N-th step (default 10)")
    p.add_argument("--steps", type=int, default=None, help="replay only the first S steps of the last phase")
    p.add_argument("--out", required=True, help="output run directory for the replay with decomposition")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from lldyn.config import build_config
    from lldyn.errors import LldynError
    from lldyn.rundir import RunDir
    from lldyn.summary import describe, phase_changes
    from lldyn.train import TrainConfig, train

    if args.every < 1:
        raise LldynError(f"--every must be >= 1, got {args.every}", field="every", expected="a positive integer")
    src = RunDir(args.run_dir)
    config = {k: v for k, v in src.config().items() if k not in ("kind", "lldyn_version")}
    cfg = build_config(TrainConfig, config, file=str(src.path / "config.json"))
    if not cfg.probes:
        raise LldynError("the run tracks no probes", file=str(src.path / "config.json"), field="probes",
                         expected="a run trained with --probes")
    if Path(args.out).resolve() == src.path.resolve():
        raise LldynError("--out must be a new directory (the replay writes a run of its own)", file=args.out)
    cfg = replace(cfg, out=args.out, decompose_every=args.every, steps=args.steps or cfg.steps)
    result = train(cfg)
    from lldyn.decompose.plots import plot_decomposition

    rows = [r for r in result.run.metrics() if "decompose/seconds" in r]
    print(f"decomposed {len(rows)} steps → {Path(args.out) / 'decompose.jsonl'}")
    for figure in plot_decomposition(result.run.path):
        print(f"  figure {figure}")
    for change in phase_changes(result.run.path):
        print("  " + describe(change))
    return 0
