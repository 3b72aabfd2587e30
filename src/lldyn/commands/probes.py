"""``lldyn probes build``: a probe set (all families, paper Sec. 4.1) from preference data."""
from __future__ import annotations

import argparse

from lldyn.commands import add_endpoint_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probes", help="build probe sets (the responses whose log π is tracked)",
                       description="Probe sets: lldyn probes build --data FILE --out probes.jsonl")
    actions = p.add_subparsers(dest="probes_command", metavar="ACTION")
    p.set_defaults(run=lambda args: p.print_help() or 2)  # `lldyn probes` alone: this command's help
    b = actions.add_parser("build", help="build all probe families from preference data",
                           description="For each probe prompt, write chosen, rejected, their semantic and format "
                                       "rephrases, another prompt's chosen, a held-out chosen, a random sentence and "
                                       "word shuffles. argmax and initial_sample are made when tracking runs.")
    b.add_argument("--data", required=True, help="preference data (.jsonl/.json/.parquet, builtin, hf:NAME)")
    b.add_argument("--split", default="train", help="split for Hugging Face data sets")
    b.add_argument("--out", required=True, help="output probes.jsonl")
    b.add_argument("--rephraser", default="rule",
                   help="rule (curated rephrases or rule-based, offline), hf[:MODEL] (local chat model, default the "
                        "embedded SmolLM2) or openai:MODEL (OpenAI-compatible endpoint)")
    add_endpoint_args(b)
    b.add_argument("--limit", type=int, default=64, help="number of probe prompts (default 64)")
    b.add_argument("--select", choices=("first", "spread"), default="first",
                   help="which training prompts become probes: the first --limit (default) or a seeded spread "
                        "over the data's categories")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--test-data", default=None,
                   help="held-out pairs for test_chosen (default: rows with split 'test', else held out by --seed)")
    b.add_argument("--sentences", default=None, help="file of human sentences for random_sentence (one a line)")
    b.set_defaults(run=run_build)
    c = actions.add_parser("check", help="validate a probe file and count its families",
                           description="Read a probes.jsonl as training and tracking will; any problem is reported "
                                       "with its file, line and field.")
    c.add_argument("file", metavar="FILE", help="probes.jsonl")
    c.set_defaults(run=run_check)


def run_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lldyn.data import load_preferences
    from lldyn.errors import LldynError
    from lldyn.probes import build_probes, load_sentences, probe_set_summary, split_held_out
    from lldyn.rephrase import make_rephraser

    out = Path(args.out)
    if out.is_dir():
        raise LldynError("output is a directory", file=str(out), expected="a file path such as probes.jsonl")
    if args.limit is not None and args.limit < 1:
        raise LldynError(f"--limit must be >= 1, got {args.limit}", field="limit", expected="a positive integer")
    pairs = load_preferences(args.data, args.split)
    if args.test_data:
        train, test = pairs, load_preferences(args.test_data, args.split)
    elif any(p.extra.get("split") == "test" for p in pairs):
        train = [p for p in pairs if p.extra.get("split") != "test"]
        test = [p for p in pairs if p.extra.get("split") == "test"]
    else:
        train, test = split_held_out(pairs, args.seed)
    rephraser = make_rephraser(args.rephraser, train, args.seed, args.base_url, args.api_key_env)
    sentences = load_sentences(args.sentences)
    probes = build_probes(train, test, rephraser, limit=args.limit, seed=args.seed, sentences=sentences,
                          progress=True, select=args.select)
    probes.save(out)  # atomic, and only once every probe exists: a failure leaves no partial file
    print(f"wrote {probe_set_summary(probes)} to {out}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from lldyn.probes import ProbeSet, probe_set_summary

    print(f"{args.file}: {probe_set_summary(ProbeSet.load(args.file))}")
    return 0
