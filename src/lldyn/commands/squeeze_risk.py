"""``lldyn squeeze-risk``: rank preference pairs by their squeeze risk before training.

Scores every pair at the starting weights (:mod:`lldyn.squeeze_risk`: the risk score from the
engine's per-token statistics along y−, and the CHES baseline of Razin et al. 2024) and writes one
JSONL row per pair, riskiest first, so that risky pairs can be filtered out or down-weighted.
"""
from __future__ import annotations

import argparse

from lldyn.commands import add_trust_remote_code


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("squeeze-risk", help="rank preference pairs by squeeze risk before DPO training",
                       description="Per-pair squeeze risk at step 0 (how unlikely y− is per token, how peaked the "
                                   "model is along y−, the size of DPO's negative residual) and the CHES baseline; "
                                   "writes JSONL rows sorted riskiest first with every component and both ranks.")
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias, .gguf file, directory, Hub id, an lldyn run directory or one of its checkpoints "
                        "(e.g. the SFT model a DPO run will start from)")
    p.add_argument("--data", required=True, help="preference data (.jsonl/.json/.parquet, builtin, hf:NAME)")
    p.add_argument("--split", default="train", help="split for Hugging Face data sets")
    p.add_argument("--out", required=True, help="output JSONL file (written atomically)")
    p.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    p.add_argument("--beta", type=float, default=0.1, help="DPO β of the planned run (default 0.1)")
    p.add_argument("--raw", action="store_true", help="use prompt and response text verbatim (no chat template)")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--max-prompt-tokens", type=int, default=None)
    p.add_argument("--skip-invalid", action="store_true", help="skip rows with empty/missing fields (counted)")
    p.add_argument("--no-ches", action="store_true", help="skip the CHES baseline (saves one forward pass per pair)")
    add_trust_remote_code(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lldyn.config import build_config
    from lldyn.data import load_preferences
    from lldyn.errors import LldynError
    from lldyn.io import atomic_write_jsonl
    from lldyn.scoring import ScoreConfig
    from lldyn.squeeze_risk import SqueezeRiskConfig, rank_pairs, squeeze_risk
    from lldyn.train import load_model_or_run

    out = Path(args.out)
    if out.is_dir():
        raise LldynError("output is a directory", file=str(out), field="--out", expected="a file path for JSONL rows")
    if args.limit is not None and args.limit < 1:
        raise LldynError(f"--limit must be >= 1, got {args.limit}", field="--limit",
                         expected="a positive number of pairs")
    score_config = build_config(ScoreConfig, {"template": not args.raw, "max_length": args.max_length,
                                              "max_prompt_tokens": args.max_prompt_tokens})
    config = SqueezeRiskConfig(beta=args.beta, score=score_config, ches=not args.no_ches)
    pairs = load_preferences(args.data, args.split, args.limit, skip_invalid=args.skip_invalid)
    lm = load_model_or_run(args.model, args.trust_remote_code)
    ranked = rank_pairs(squeeze_risk(lm.model, lm.tokenizer, pairs, config, progress=True))
    atomic_write_jsonl(out, [r.to_json() for r in ranked])
    n_cut = sum(r.truncated for r in ranked)
    top = ranked[0]
    print(f"wrote {len(ranked)} pairs to {out}, riskiest first ({n_cut} truncated by the max-length policy); "
          f"riskiest: {top.id} (risk {top.risk:.4g}, −log π(y−)/token {top.neg_surprise:.3g}, "
          f"top-1 {top.neg_top1:.3g})")
    return 0
