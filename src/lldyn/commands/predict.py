"""``lldyn predict``: before training, each probe's predicted Δ log π over a planned phase (:mod:`lldyn.predict`).

The plan is what ``lldyn train`` takes (``--config FILE.toml`` and/or flags), or a run directory's config;
the probes are a probe file (``--probes``) and/or preference pairs (``--pairs``: their y+ and y−). One row
per probe is written to ``--out`` (JSONL, atomically, only once everything has run).
"""
from __future__ import annotations

import argparse

# TrainConfig fields that mean nothing to a prediction (tracking, checkpoints, the run directory, on-policy)
SKIP = ("out", "eval_every", "checkpoint_every", "keep_checkpoints", "decompose_every", "initial_sample",
        "squeeze_alarm", "on_policy", "preference_source", "base_url", "on_policy_refresh",
        "on_policy_max_new_tokens", "on_policy_temperature")


def register(sub: argparse._SubParsersAction) -> None:
    from lldyn.commands.train import add_config_flags
    from lldyn.predict import TrainConfig

    p = sub.add_parser("predict", help="predict each probe's Δ log π over a planned phase, before training",
                       description="First-order prediction of a whole planned phase (docs/predict.md): every planned "
                                   "batch's gradient at the phase's start, taken through the plan's optimizer and "
                                   "schedule, then one jvp over the probes. Flags as for lldyn train; --config is a "
                                   "TOML file or a run directory.")
    p.add_argument("--config", default=None, help="TOML file with TrainConfig fields, or a run directory (its config)")
    p.add_argument("--pairs", default=None, help="preference pairs whose y+ and y− to predict (e.g. held-out pairs)")
    p.add_argument("--out", required=True, help="output JSONL table, one row per probe (written atomically)")
    p.add_argument("--phase", default=None, help="phase of the method to predict: sft or dpo of sft_dpo / extend "
                                                 "(default: the first)")
    p.add_argument("--start", default=None, help="the model the phase starts from (model spec, run directory or "
                                                 "RUN/checkpoints/step-N); needed for a later phase")
    p.add_argument("--prefix-steps", type=int, default=0,
                   help="train this many real steps first, then linearise at the new weights (default 0)")
    p.add_argument("--probes", default=None, help="probes.jsonl to predict (lldyn probes build)")
    add_config_flags(p, TrainConfig, skip=SKIP + ("probes",))
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lldyn.commands.train import overrides
    from lldyn.data import load_preferences
    from lldyn.errors import LldynError
    from lldyn.io import atomic_write_jsonl
    from lldyn.predict import PredictConfig, TrainConfig, load_plan, pair_probes, predict_phase, summarise
    from lldyn.probes import ProbeSet

    out = Path(args.out)
    if out.is_dir():
        raise LldynError("output is a directory", file=str(out), field="out", expected="a file path for JSONL rows")
    plan, stated = load_plan(args.config, overrides(args, TrainConfig))
    options = PredictConfig(phase=args.phase, start=args.start, prefix_steps=args.prefix_steps, stated=stated)
    probes = list(ProbeSet.load(plan.probes)) if plan.probes else []
    if args.pairs:
        probes += pair_probes(load_preferences(args.pairs, skip_invalid=plan.skip_invalid))
    if not probes:
        raise LldynError("nothing to predict", field="probes", expected="--probes FILE and/or --pairs FILE")
    ids = [p.id for p in probes]
    if len(set(ids)) < len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise LldynError(f"probe id {dup!r} twice (a probe file and pairs with the same ids?)", field="pairs",
                         expected="pairs whose ids differ from the probe file's prompt ids")
    result = predict_phase(plan, probes, options, say=print)
    atomic_write_jsonl(out, result.rows())
    means = ", ".join(f"{family} {v:+.3f}" for family, v in summarise(result).items())
    prefix = f" ({result.prefix_steps} trained, the rest linearised)" if result.prefix_steps else ""
    print(f"predicted Δ log π over {result.steps} steps{prefix} for {len(probes)} probes → {out} "
          f"({result.seconds['total']:.0f} s)")
    print(f"mean by family (nats): {means}")
    return 0
