"""``lldyn decompose --run RUN [--every N]``: first-order prediction and attribution of a run's steps.

Training is deterministic on the CPU (same seed, same data order, same numbers; tested), so the
decomposition of an existing run is obtained by replaying its config with the decomposition hook on:
every N-th step gives, per probe, the actual Δ log π, the prediction ⟨∇θ log π, Δθ⟩ and the
contributions of the y+ / y− terms and of each training example. They are written into the run
directory itself (``RUN/decompose.jsonl``, figures in ``RUN/figures/``), after checking that the
replay followed the run (its losses equal the run's); ``lldyn report RUN`` then draws predicted vs
actual and the +/− split per family. The replay runs in a scratch directory inside RUN that is
removed afterwards, unless ``--out DIR`` keeps it. To decompose while training, pass
``--decompose-every N`` to ``lldyn train`` instead (the only way for a run that cannot be replayed
exactly, e.g. on a GPU).
"""
from __future__ import annotations

import argparse

from lldyn.commands import add_trust_remote_code

REPLAY_DIR = ".decompose-replay"
TRAJECTORY_TOLERANCE = 1e-4  # relative difference of a step's loss between the run and its replay


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decompose", help="predict and attribute each step's effect on the probes (first order)",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--run", dest="run_dir", required=True,  # not "run": that attribute is the command itself
                   help="a run directory made by lldyn train (with probes)")
    p.add_argument("--every", type=int, default=10, help="decompose every N-th step (default 10)")
    p.add_argument("--steps", type=int, default=None, help="replay only the first S steps of the last phase")
    p.add_argument("--out", default=None,
                   help="keep the replay (a run directory of its own) here; default: a scratch directory, removed")
    p.add_argument("--force", action="store_true", help="replace a decomposition RUN already holds")
    add_trust_remote_code(p)
    p.set_defaults(run=run)


def trajectory_gap(original: list[dict], replay: list[dict]) -> tuple[float, int | None]:
    """Largest relative loss difference over the steps both runs logged, and its step (None: no common step)."""
    before = {r["step"]: r["loss"] for r in original if r.get("event") == "train" and "loss" in r}
    worst, where = 0.0, None
    for row in replay:
        step = row.get("step")
        if row.get("event") != "train" or step not in before:
            continue
        gap = abs(row["loss"] - before[step]) / max(1.0, abs(before[step]))
        if where is None or gap > worst:
            worst, where = gap, step
    return worst, where


def run(args: argparse.Namespace) -> int:
    import shutil
    from dataclasses import replace
    from pathlib import Path

    from lldyn.decompose.llm import DECOMPOSE_FILE
    from lldyn.decompose.plots import plot_decomposition
    from lldyn.errors import LldynError
    from lldyn.io import atomic_write_bytes
    from lldyn.rundir import RunDir
    from lldyn.summary import describe, phase_changes
    from lldyn.train import run_train_config, train

    if args.every < 1:
        raise LldynError(f"--every must be >= 1, got {args.every}", field="every", expected="a positive integer")
    src = RunDir(args.run_dir)
    cfg = run_train_config(src.path, args.trust_remote_code)  # the run's own flag never runs a model's code
    if not cfg.probes:
        raise LldynError("the run tracks no probes", file=str(src.path / "config.json"), field="probes",
                         expected="a run trained with --probes")
    if args.out is not None and Path(args.out).resolve() == src.path.resolve():
        raise LldynError("--out must be a new directory (the replay writes a run of its own)", file=args.out,
                         expected="another directory, or no --out (the decomposition goes into the run itself)")
    target = src.path / DECOMPOSE_FILE
    if target.exists() and not args.force:
        raise LldynError("the run already holds a decomposition", file=str(target),
                         expected="--force to replace it")
    scratch = src.path / REPLAY_DIR
    shutil.rmtree(scratch, ignore_errors=True)  # left by an earlier decompose that was killed
    replay_dir = Path(args.out) if args.out is not None else scratch / "run"
    try:
        result = train(replace(cfg, out=str(replay_dir), decompose_every=args.every, steps=args.steps or cfg.steps))
        replay = result.run.metrics()
        gap, step = trajectory_gap(src.metrics(), replay)
        if step is None or gap > TRAJECTORY_TOLERANCE:
            where = "no common step" if step is None else f"loss differs by {gap:.2g} (relative) at step {step}"
            raise LldynError(f"the replay did not follow the run ({where}), so its decomposition would describe "
                             "another trajectory; nothing was written into the run", file=str(src.path),
                             expected="a run that replays exactly (CPU, same lldyn and torch); otherwise "
                                      "decompose while training: lldyn train --decompose-every N")
        atomic_write_bytes(target, (result.run.path / DECOMPOSE_FILE).read_bytes())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows = [r for r in replay if "decompose/seconds" in r]
    print(f"decomposed {len(rows)} steps (the replay followed the run: largest loss difference {gap:.1e}) → {target}")
    for figure in plot_decomposition(src.path):
        print(f"  figure {figure}")
    for change in phase_changes(src.path):
        print("  " + describe(change))
    return 0
