"""``lldyn score``: log π of every response in a data file, one JSONL row per (example, response kind)."""
from __future__ import annotations

import argparse

from lldyn.commands import add_scoring_args, scoring_inputs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score responses of a data file with the log-prob engine",
                       description="Write one row per (example id, response kind) with logp and n_tokens.")
    add_scoring_args(p, "preference or SFT data")
    p.add_argument("--per-token", action="store_true", help="also write per-token log-probs")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lldyn.data import load_preferences, load_sft
    from lldyn.io import atomic_write_jsonl
    from lldyn.scoring import ScoreRequest, score
    from lldyn.runs import load_model_or_run

    out, config = scoring_inputs(args)
    requests, keys = _requests(args, load_preferences, load_sft)
    lm = load_model_or_run(args.model, args.trust_remote_code, dtype=args.dtype)  # a model, a run's final model or one checkpoint
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
