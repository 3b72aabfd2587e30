"""The one-step decomposition (Ren & Sutherland, Sec. 3) of every N-th step of a finished run, by replay.

Training is deterministic on the CPU (same seed, same data order, same numbers; tested), so the
decomposition of an existing run is obtained by replaying its config with the decomposition hook on:
every N-th step gives, per probe, the actual Δ log π, the prediction ⟨∇θ log π, Δθ⟩ and the
contributions of the y+ / y− terms and of each training example. They are written into the run
directory itself (``decompose.jsonl``, figures in ``figures/``), after checking that the replay
followed the run (its losses equal the run's). The replay runs in the run's scratch directory, removed
afterwards, unless ``out`` keeps it. A run that cannot be replayed exactly (e.g. on a GPU) is decomposed
while training instead (``lldyn train --decompose-every N``).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from lldyn.decompose.plots import plot_decomposition
from lldyn.errors import LldynError
from lldyn.rundir import RunDir, TrainRow
from lldyn.train import run_train_config, train

TRAJECTORY_TOLERANCE = 1e-4  # relative difference of a step's loss between the run and its replay


@dataclass(frozen=True)
class DecomposedRun:
    """What :func:`decompose_run` did: how many steps, how closely the replay followed, what it wrote."""

    run: RunDir
    steps: int
    gap: float
    figures: list[Path]


def trajectory_gap(original: list[TrainRow], replay: list[TrainRow]) -> tuple[float, int | None]:
    """Largest relative loss difference over the steps both runs logged, and its step (None: no common step)."""
    before = {r.step: r.loss for r in original}
    worst, where = 0.0, None
    for row in replay:
        if row.step not in before:
            continue
        gap = abs(row.loss - before[row.step]) / max(1.0, abs(before[row.step]))
        if where is None or gap > worst:
            worst, where = gap, row.step
    return worst, where


def decompose_run(run_dir: str | Path, every: int = 10, steps: int | None = None, out: str | Path | None = None,
                  force: bool = False, trust_remote_code: bool = False) -> DecomposedRun:
    """Replay ``run_dir`` with the decomposition hook on every ``every``-th step and write the result into it.

    ``steps`` replays only the first steps of the last phase; ``out`` keeps the replay (a run directory of its
    own); ``force`` replaces a decomposition the run already holds. ``trust_remote_code`` is the caller's flag
    (the run's own never runs a model's code). Nothing is written into the run unless the replay followed it.
    """
    src = RunDir(run_dir)
    cfg = run_train_config(src.path, trust_remote_code)
    if every < 1:
        raise LldynError(f"--every must be >= 1, got {every}", field="every", expected="a positive integer")
    if not cfg.probes:
        raise LldynError("the run tracks no probes", file=str(src.config_path), field="probes",
                         expected="a run trained with --probes")
    if out is not None and Path(out).resolve() == src.path.resolve():
        raise LldynError("--out must be a new directory (the replay writes a run of its own)", file=str(out),
                         expected="another directory, or no --out (the decomposition goes into the run itself)")
    if src.decompose_path.exists() and not force:
        raise LldynError("the run already holds a decomposition", file=str(src.decompose_path),
                         expected="--force to replace it")
    original = src.train_rows()
    length = max((r.step for r in original), default=0)
    if length < every:
        raise LldynError(f"the run has {length} steps, fewer than --every {every}, so no step would be decomposed",
                         file=str(src.path), field="every", expected=f"--every between 1 and {max(length, 1)}")
    shutil.rmtree(src.replay_dir, ignore_errors=True)  # left by an earlier decompose that was killed
    replay_dir = Path(out) if out is not None else src.replay_dir / "run"
    try:
        # in this one process: a run trained sharded (--fsdp) is replayed unsharded, its losses checked as any
        result = train(replace(cfg, out=str(replay_dir), decompose_every=every, steps=steps or cfg.steps, fsdp=False))
        gap, step = trajectory_gap(original, result.run.train_rows())
        if step is None or gap > TRAJECTORY_TOLERANCE:
            where = "no common step" if step is None else f"loss differs by {gap:.2g} (relative) at step {step}"
            raise LldynError(f"the replay did not follow the run ({where}), so its decomposition would describe "
                             "another trajectory; nothing was written into the run", file=str(src.path),
                             expected="a run that replays exactly (CPU, same lldyn and torch); otherwise "
                                      "decompose while training: lldyn train --decompose-every N")
        rows = result.run.decompose_rows()
        src.write_decompose_rows(rows)
    finally:
        shutil.rmtree(src.replay_dir, ignore_errors=True)
    decomposed = len({r["step"] for r in rows})
    return DecomposedRun(src, decomposed, gap, plot_decomposition(rows, src.figures))
