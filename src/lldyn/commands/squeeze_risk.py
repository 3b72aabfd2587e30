"""``lldyn squeeze-risk``: rank preference pairs by their squeeze risk before training.

Superseded for predicting what a run does by ``lldyn predict`` (docs/predict.md): the score's validation is weak
(docs/squeezing.md). Kept as the cheap option: no training plan, one scoring pass.

Scores every pair at the starting weights (:mod:`lldyn.squeeze.risk`: the risk score from the
engine's per-token statistics along y−, and the CHES baseline of Razin et al. 2024) and writes one
JSONL row per pair, riskiest first, so that risky pairs can be filtered out or down-weighted.
"""
from __future__ import annotations

import argparse

from lldyn.commands import add_scoring_args, scoring_inputs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("squeeze-risk", help="rank preference pairs by squeeze risk before DPO (weak; see lldyn predict)",
                       description="Per-pair squeeze risk at step 0 (how unlikely y− is per token, how peaked the "
                                   "model is along y−, the size of DPO's negative residual) and the CHES baseline; "
                                   "writes JSONL rows sorted riskiest first with every component and both ranks. "
                                   "Validated, the score does not predict the squeeze: on the held-out prompts of "
                                   "three DPO phases its Spearman ρ with the drop of log π(y+) was −0.31, −0.01 and "
                                   "−0.25 (positive = the right direction; docs/squeezing.md, docs/predict.md). To "
                                   "predict what a planned run does to responses use `lldyn predict` (+0.30 and "
                                   "+0.77 on the last two; +0.72 and +0.87 after 10 real steps); −log π(y+) at the "
                                   "start ranked as well (+0.72, +0.76). Kept because it needs no training plan and "
                                   "costs one scoring pass.")
    add_scoring_args(p, "preference data (the model: the one the DPO run will start from)")
    p.add_argument("--beta", type=float, default=0.1, help="DPO β of the planned run (default 0.1)")
    p.add_argument("--no-ches", action="store_true", help="skip the CHES baseline (saves one forward pass per pair)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lldyn.data import load_preferences
    from lldyn.io import atomic_write_jsonl
    from lldyn.runs import load_model_or_run
    from lldyn.squeeze.risk import SqueezeRiskConfig, rank_pairs, squeeze_risk

    out, score_config = scoring_inputs(args)
    config = SqueezeRiskConfig(beta=args.beta, score=score_config, ches=not args.no_ches)
    pairs = load_preferences(args.data, args.split, args.limit, skip_invalid=args.skip_invalid)
    lm = load_model_or_run(args.model, args.trust_remote_code, dtype=args.dtype)
    ranked = rank_pairs(squeeze_risk(lm.model, lm.tokenizer, pairs, config, progress=True))
    atomic_write_jsonl(out, [r.to_json() for r in ranked])
    n_cut = sum(r.truncated for r in ranked)
    top = ranked[0]
    print(f"wrote {len(ranked)} pairs to {out}, riskiest first ({n_cut} truncated by the max-length policy); "
          f"riskiest: {top.id} (risk {top.risk:.4g}, −log π(y−)/token {top.neg_surprise:.3g}, "
          f"top-1 {top.neg_top1:.3g})")
    return 0
