"""``lldyn score``: log π of every response in a data file, one JSONL row per (example, response kind)."""
from __future__ import annotations

import argparse

from lldyn.commands import add_trust_remote_code


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score responses of a data file with the log-prob engine",
                       description="Write one row per (example id, response kind) with logp and n_tokens.")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="alias, .gguf file, directory, Hub id, an lldyn run directory or one of its checkpoints "
                        "(RUN/checkpoints/step-XXXXXXXX)")
    p.add_argument("--data", required=True, help="preference or SFT data (.jsonl/.json/.parquet, builtin, hf:NAME)")
    p.add_argument("--split", default="train", help="split for Hugging Face data sets")
    p.add_argument("--out", required=True, help="output JSONL file")
    p.add_argument("--raw", action="store_true", help="use prompt and response text verbatim (no chat template)")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--max-prompt-tokens", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="score only the first N examples")
    p.add_argument("--skip-invalid", action="store_true", help="skip rows with empty/missing fields (counted)")
    p.add_argument("--per-token", action="store_true", help="also write per-token log-probs")
    add_trust_remote_code(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lldyn.config import build_config
    from lldyn.data import load_preferences, load_sft
    from lldyn.errors import LldynError
    from lldyn.io import atomic_write_jsonl
    from lldyn.scoring import ScoreConfig, ScoreRequest, score
    from lldyn.train import load_model_or_run

    out = Path(args.out)
    if out.is_dir():
        raise LldynError("output is a directory", file=str(out), expected="a file path for JSONL rows")
    config = build_config(ScoreConfig, {"template": not args.raw, "max_length": args.max_length,
                                        "max_prompt_tokens": args.max_prompt_tokens})
    requests, keys = _requests(args, load_preferences, load_sft)
    lm = load_model_or_run(args.model, args.trust_remote_code)  # a model, a run's final model or one checkpoint
    results = score(lm.model, lm.tokenizer, [ScoreRequest(*r) for r in requests], config,
                    per_token=args.per_token, progress=True)
    rows = []
    for (ex_id, kind), res in zip(keys, results):
        row = {"id": ex_id, "kind": kind, "logp": res.logp, "n_tokens": res.n_tokens,
               "mean_logp": res.mean_logp, "argmax_logp": res.argmax_logp, "truncated": res.truncated}
        if args.per_token:
            row["token_logps"] = res.token_logps
        rows.append(row)
    atomic_write_jsonl(out, rows)
    n_cut = sum(r.truncated for r in results)
    print(f"wrote {len(rows)} rows to {out} ({n_cut} truncated by the max-length policy)")
    return 0


def _requests(args, load_preferences, load_sft):
    """Preference data gives chosen and rejected rows; SFT data gives one 'response' row per example."""
    from lldyn.errors import LldynError

    try:
        pairs = load_preferences(args.data, args.split, args.limit, skip_invalid=args.skip_invalid)
    except LldynError as pref_err:
        if not (pref_err.field == "chosen" and pref_err.message == "missing field"):
            raise  # preference data with a problem; only rows without 'chosen' are read as SFT data
        examples = load_sft(args.data, args.split, args.limit, skip_invalid=args.skip_invalid)
        return ([(e.prompt, e.response, e.where) for e in examples], [(e.id, "response") for e in examples])
    reqs, keys = [], []
    for p in pairs:
        reqs += [(p.prompt, p.chosen, p.where), (p.prompt, p.rejected, p.where)]
        keys += [(p.id, "chosen"), (p.id, "rejected")]
    return reqs, keys
