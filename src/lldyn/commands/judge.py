"""``lldyn judge``: the judged win rate of model/run A against B on held-out prompts (as the paper judges *extend*); with
``--judge reference``, judged against the prompts' gold answers, with each model's accuracy."""
from __future__ import annotations

import argparse

from lldyn.commands import add_endpoint_args, add_trust_remote_code

JUDGEMENTS = "judgements.jsonl"
SUMMARY = "summary.json"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("judge", help="judged win rate of A against B (both orders, bootstrap interval)",
                       description="Generate greedy responses from A and B on held-out prompts, ask the judge which "
                                   "is more helpful in both orders (the paper's instruction; or, with --judge reference, which "
                                   "states the prompt's gold answer), and write every "
                                   "judgement and the win rate of A with a bootstrap confidence interval.")
    p.add_argument("--a", required=True, help="model A: alias, .gguf, model directory, Hub id or lldyn run directory")
    p.add_argument("--b", required=True, help="model B (same forms as --a)")
    p.add_argument("--prompts", required=True,
                   help="held-out prompts: preference data or a JSONL of {\"prompt\": ...} rows; builtin:test works; "
                        "with --judge reference each row needs \"answer\" (and optional \"answer_aliases\")")
    p.add_argument("--split", default="test", help="split for Hugging Face data sets (default test)")
    p.add_argument("--judge", required=True,
                   help="hf:MODEL (local chat model), openai:MODEL (endpoint), reward:module:function (a reward "
                        "function f(prompt, response) -> float; module:function also works) or reference (the "
                        "prompts' gold answers)")
    p.add_argument("--answered-only", action="store_true",
                   help="with --judge reference: judge only the prompts that carry a gold answer (default: a prompt "
                        "without one is an error)")
    add_endpoint_args(p)
    p.add_argument("--limit", type=int, default=None,
                   help="judge only the first N prompts (with --answered-only: the first N that have a gold answer)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="response length budget for A and B")
    p.add_argument("--judge-max-tokens", type=int, default=128, help="answer length budget for a model judge")
    p.add_argument("--judge-mode", choices=("generate", "logprob"), default="generate",
                   help="generate: the judge answers and its verdict is parsed (the paper's way); logprob: a local "
                        "judge's forced choice between the two verdict lines, by log-probability (for judges too "
                        "small to follow the answer format)")
    p.add_argument("--batch-size", type=int, default=8, help="generation batch size")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the interval")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (generation is greedy)")
    p.add_argument("--out", required=True, help="output directory for judgements.jsonl and summary.json")
    p.add_argument("--force", action="store_true", help="overwrite results already in --out")
    add_trust_remote_code(p)
    p.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> None:
    from pathlib import Path

    from lldyn.errors import LldynError

    for flag in ("max_new_tokens", "judge_max_tokens", "batch_size", "bootstrap"):
        value = getattr(args, flag)
        if value < 1:
            raise LldynError(f"--{flag.replace('_', '-')} must be >= 1, got {value}", field=flag.replace("_", "-"),
                             expected="a positive integer")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LldynError("output exists and is not a directory", file=str(out), field="out", expected="a directory path")
    if args.answered_only and args.judge.strip() != "reference":
        raise LldynError("--answered-only goes with --judge reference", field="answered-only",
                         expected="--judge reference, or no --answered-only")
    done = [name for name in (JUDGEMENTS, SUMMARY) if (out / name).exists()]
    if done and not args.force:
        raise LldynError(f"already holds judge results ({', '.join(done)})", file=str(out), field="out",
                         expected="a new directory, or --force to overwrite")


def judgement_rows(ids: list[str], items: list[tuple[str, str, str]], pairs: list) -> list[dict]:
    """One row per prompt and order (``ab``: A shown first): what the judge saw and chose, and the winner."""
    rows = []
    for prompt_id, (prompt, ra, rb), pair in zip(ids, items, pairs):
        for order, judgement, first, second in (("ab", pair.ab, ra, rb), ("ba", pair.ba, rb, ra)):
            winner = None if judgement.choice is None else order[judgement.choice]
            rows.append({"prompt_id": prompt_id, "order": order, "prompt": prompt, "response_first": first,
                         "response_second": second, "choice": judgement.choice, "winner": winner,
                         "score_a": pair.scores_a[0 if order == "ab" else 1], "raw_text": judgement.raw_text})
    return rows


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import gc
    from pathlib import Path

    from lldyn import __version__
    from lldyn.generation import GenerationConfig, generate
    from lldyn.io import atomic_write_json, atomic_write_jsonl
    from lldyn.judge import answer_accuracy, judge_both_orders, load_prompts, reference_table, win_rate
    from lldyn.preferences import JUDGE_TEMPLATE, ReferenceSource, load_preference_source
    from lldyn.runs import load_model_or_run

    _check_args(args)
    by_reference = args.judge.strip() == "reference"
    gold = ("only" if args.answered_only else "require") if by_reference else "ignore"
    prompts = load_prompts(args.prompts, args.split, args.limit, gold=gold)
    source = load_preference_source(args.judge, args.base_url, args.api_key_env, max_tokens=args.judge_max_tokens,
                                    trust_remote_code=args.trust_remote_code, judge_mode=args.judge_mode,
                                    references=reference_table(prompts) if by_reference else None)
    if hasattr(source, "ping"):
        source.ping()  # an unreachable endpoint fails before any generation
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed)
    responses = {}
    for side, spec in (("a", args.a), ("b", args.b)):
        lm = load_model_or_run(spec, args.trust_remote_code)
        print(f"generating {len(prompts)} responses with {side.upper()} = {spec}", flush=True)
        responses[side] = generate(lm.model, lm.tokenizer, [p.prompt for p in prompts], gen, progress=True)
        del lm
        gc.collect()
    items = [(p.prompt, ra, rb) for p, ra, rb in zip(prompts, responses["a"], responses["b"])]
    pairs = judge_both_orders(source, items, progress=True)
    result = win_rate(pairs, n_resamples=args.bootstrap, seed=args.seed)
    accuracy = {}
    if isinstance(source, ReferenceSource):  # each model against the gold answers, not only against each other
        accuracy = {side: answer_accuracy(source, [p.prompt for p in prompts], responses[side],
                                          n_resamples=args.bootstrap, seed=args.seed) for side in ("a", "b")}

    rows = judgement_rows([p.id for p in prompts], items, pairs)
    summary = {
        "a": args.a, "b": args.b, "prompts": args.prompts, "prompts_split": args.split, "limit": args.limit,
        **source.describe(), "max_new_tokens": args.max_new_tokens, "decoding": "greedy",
        "bootstrap": args.bootstrap, "seed": args.seed, "lldyn_version": __version__,
        **({"answered_only": args.answered_only} if by_reference else {"instruction": JUDGE_TEMPLATE}),
        **dataclasses.asdict(result),
        **({"accuracy": {side: dataclasses.asdict(acc) for side, acc in accuracy.items()}} if accuracy else {}),
    }
    out = Path(args.out)
    atomic_write_jsonl(out / JUDGEMENTS, rows)
    atomic_write_json(out / SUMMARY, summary)  # written last: its presence means the results are complete
    print(result.reference_line() if accuracy else result.line())
    for side, acc in accuracy.items():
        print(f"accuracy of {side.upper()}: {acc.line()}")
    print(f"wrote {len(rows)} judgements to {out / JUDGEMENTS} and the summary to {out / SUMMARY}")
    return 0
