"""``lldyn lld-risk``: rank GRPO prompts by their exposure to Lazy Likelihood Displacement before training.

For every prompt, samples a group of completions from the starting policy, scores them with the GRPO reward, and
computes GWHES and the alternatives of :mod:`lldyn.squeeze.nthr` (hidden-state similarity of correct and incorrect
completions, the output layer's first-order pull, NTHR's flagged share) next to the trivial baselines (initial
log π of the correct completions, their length). Writes one JSONL row per prompt, riskiest first.
"""
from __future__ import annotations

import argparse

from lldyn.commands import MODEL_HELP, add_trust_remote_code

VALIDATION = ("Validated, no score beats the trivial baselines: on 20 held-out built-in prompts after 20 GRPO steps "
              "of SmolLM2 the Spearman ρ with the drop of the correct samples' log π was −0.41 for GWHES (the wrong "
              "direction), +0.40 length-normalised, +0.32 for the output layer's pull, against +0.54 for the share of "
              "correct samples and +0.38 for their length (docs/results.md §8, docs/grpo-nthr.md). Use the table to "
              "look at groups, not to filter prompts.")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lld-risk", help="rank GRPO prompts by Lazy Likelihood Displacement risk before training",
                       description="Per-prompt LLD risk at the starting weights (Deng et al. 2025, arXiv 2505.18830): "
                                   "a group of completions per prompt sampled from the policy and split by the "
                                   "reward; GWHES (group-weighted hidden embedding score), the mean cosine of "
                                   "correct and incorrect hidden states, the output layer's first-order pull on the "
                                   "correct completions, NTHR's flagged share, and the baselines. Writes JSONL rows "
                                   "sorted riskiest (highest GWHES) first; prompts whose group is all correct or all "
                                   "incorrect (no GRPO gradient) come last with NaN scores. " + VALIDATION)
    p.add_argument("--model", default="smollm2-135m-instruct", help=MODEL_HELP)
    p.add_argument("--data", required=True, help="prompts (.jsonl/.json/.parquet, builtin, builtin:test, hf:NAME)")
    p.add_argument("--split", default="train", help="split for Hugging Face data sets")
    p.add_argument("--out", required=True, help="output JSONL file (written atomically)")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.add_argument("--reward", default="builtin", help="builtin (the row's gold answer) or module:function")
    p.add_argument("--skip-invalid", action="store_true", help="skip prompts the reward cannot score (counted)")
    p.add_argument("--num-generations", type=int, default=8, help="completions per prompt (default 8)")
    p.add_argument("--max-completion-length", type=int, default=64, help="tokens per completion (default 64)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (the table is a function of it)")
    p.add_argument("--raw", action="store_true", help="prompts verbatim (no chat template)")
    add_trust_remote_code(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import warnings
    from pathlib import Path

    from lldyn.config import build_config
    from lldyn.data import load_prompts
    from lldyn.errors import LldynError
    from lldyn.io import atomic_write_jsonl
    from lldyn.squeeze.nthr import LLDRiskConfig, lld_risk
    from lldyn.rewards import load_reward
    from lldyn.runs import load_model_or_run

    out = Path(args.out)
    if out.is_dir():
        raise LldynError("output is a directory", file=str(out), field="out", expected="a file path for JSONL rows")
    if args.limit is not None and args.limit < 1:
        raise LldynError(f"--limit must be >= 1, got {args.limit}", field="limit", expected="a positive number")
    config = build_config(LLDRiskConfig, {"num_generations": args.num_generations, "seed": args.seed,
                                          "max_completion_length": args.max_completion_length,
                                          "temperature": args.temperature, "template": not args.raw})
    reward = load_reward(args.reward)
    prompts = load_prompts(args.data, args.split, args.limit, skip_invalid=args.skip_invalid)
    prompts = reward.check_prompts(prompts, args.skip_invalid, warn=lambda msg: warnings.warn(msg, stacklevel=2))
    lm = load_model_or_run(args.model, args.trust_remote_code)
    ranked = lld_risk(lm.model, lm.tokenizer, prompts, reward, config)
    atomic_write_jsonl(out, [r.to_json() for r in ranked])
    informative = [r for r in ranked if r.informative]
    print(f"wrote {len(ranked)} prompts to {out}, riskiest first; {len(informative)} have both correct and "
          f"incorrect completions" + (f"; riskiest: {informative[0].id} (GWHES {informative[0].gwhes:.4g}, "
                                      f"{informative[0].n_correct}/{config.num_generations} correct)"
                                      if informative else ""))
    return 0
