"""``lldyn decompose --run RUN [--every N]``: first-order prediction and attribution of a run's steps.

The run is replayed with the decomposition hook on every N-th step (:mod:`lldyn.experiments.decompose_run`);
the result goes into the run directory itself (``decompose.jsonl``, figures), after checking that the replay
followed the run. ``lldyn report RUN`` then draws predicted vs actual and the +/− split per family. To
decompose while training, pass ``--decompose-every N`` to ``lldyn train`` instead (the only way for a run
that cannot be replayed exactly, e.g. on a GPU).
"""
from __future__ import annotations

import argparse

from lldyn.commands import add_trust_remote_code


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


def run(args: argparse.Namespace) -> int:
    from lldyn.experiments.decompose_run import decompose_run
    from lldyn.summary import what_moved

    done = decompose_run(args.run_dir, args.every, args.steps, args.out, args.force, args.trust_remote_code)
    print(f"decomposed {done.steps} steps (the replay followed the run: largest loss difference {done.gap:.1e}) "
          f"→ {done.run.decompose_path}")
    for figure in done.figures:
        print(f"  figure {figure}")
    for line in what_moved([done.run.path]):
        print("  " + line)
    return 0
