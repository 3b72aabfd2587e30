"""``lldyn reproduce sft|dpo|extend``: the paper's experiments as shipped config files, one command each.

Each config (``lldyn/configs/reproduce/*.toml``) has an ``[experiment]`` section (data, how many
pairs, how many probe prompts, held-out fraction, seed) and one ``[train]`` section — or, for
``extend``, a ``[baseline]`` (SFT on y+ then DPO) and an ``[extend]`` (SFT on y+ and y− then DPO)
section. The command splits the data into training and held-out pairs (written to ``OUT/data/``
so the run directories describe themselves), builds the probes on training prompts (the paper
tracks training examples), trains, and writes one report. GPU configs for larger models ship
next to the CPU ones (``--config qwen2.5-0.5b-dpo`` …).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

EXPERIMENTS = ("sft", "dpo", "extend")


@dataclass(frozen=True)
class ExperimentConfig:
    """data: preference source; pairs: how many to read; probe_prompts: training prompts tracked."""

    data: str = "../shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
    pairs: int = 200
    probe_prompts: int = 16
    held_out: float = 0.15
    seed: int = 0
    skip_invalid: bool = True
    rephraser: str = "rule"

    def __post_init__(self) -> None:
        from lldyn.config import check

        check(self.pairs >= 4, "pairs", f"must be >= 4, got {self.pairs}", "an integer >= 4")
        check(self.probe_prompts >= 1, "probe_prompts", f"must be >= 1, got {self.probe_prompts}", "an integer >= 1")
        check(0 < self.held_out < 0.5, "held_out", f"must be in (0, 0.5), got {self.held_out}", "a fraction")


def configs_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "configs" / "reproduce"


def register(sub: argparse._SubParsersAction) -> None:
    shipped = sorted(p.stem for p in configs_dir().glob("*.toml"))
    p = sub.add_parser("reproduce", help="rerun the paper's SFT / DPO / extend experiments from shipped configs",
                       description="Shipped configs: " + ", ".join(shipped))
    p.add_argument("experiment", choices=EXPERIMENTS)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", default=None,
                   help="a shipped config name (e.g. qwen2.5-0.5b-dpo) or a TOML file (default: the CPU config)")
    p.add_argument("--model", default=None, help="model instead of the config's")
    p.add_argument("--data", default=None, help="preference data instead of the config's (file or hf:NAME)")
    p.add_argument("--quick", action="store_true", help="a few steps on few pairs (smoke test)")
    p.set_defaults(run=run)


def resolve_config(name: str | None, experiment: str) -> Path:
    from lldyn.errors import LldynError

    if name is None:
        return configs_dir() / f"{experiment}.toml"
    path = Path(name)
    if path.suffix == ".toml":
        if not path.is_file():
            raise LldynError("config file not found", file=str(path),
                             expected="a shipped config name or a TOML file with [experiment] and run sections")
        return path
    shipped = configs_dir() / f"{name}.toml"
    if not shipped.is_file():
        raise LldynError(f"no shipped config {name!r}", field="config",
                         expected="one of " + ", ".join(sorted(p.stem for p in configs_dir().glob("*.toml"))) +
                         " or a .toml file")
    return shipped


QUICK = {"steps": 3, "sft_steps": 2, "eval_every": 2, "batch_size": 2}
HELD_OUT_FILE = "held_out_dpo.jsonl"
KINDS = ("chosen", "rejected", "argmax")


def preference_phase_models(run_dir: str | Path):
    """(start, end) loaders of a run's preference phase: the SFT phase's last checkpoint (or, for a run
    that starts with DPO, its starting model) and the run's final checkpoint. Loaded one at a time."""
    import json

    from lldyn.checkpoint import list_checkpoints
    from lldyn.rundir import RunDir
    from lldyn.train import load_run_model, load_start_model, run_train_config

    run = RunDir(run_dir)
    cfg = run_train_config(run.path)
    ckpts = list_checkpoints(run.checkpoints)
    sft_ends = [c for c in ckpts if json.loads((c / "state.json").read_text()).get("phase_name") == "sft"]
    if cfg.method in ("sft_dpo", "extend") and not sft_ends:
        from lldyn.errors import LldynError

        raise LldynError("the SFT phase's last checkpoint is gone (pruned by keep_checkpoints), so the start of the "
                         "DPO phase cannot be scored", file=str(run.checkpoints),
                         expected="a run with its phase-end checkpoints (the reproduce configs keep them)")
    start = (lambda: load_run_model(run.path, sft_ends[-1])) if sft_ends else (lambda: load_start_model(cfg))
    return cfg, start, (lambda: load_run_model(run.path, ckpts[-1]))


def held_out_dpo_changes(run_dir: str | Path, held_out: str | Path) -> list[dict]:
    """log π of the held-out pairs' y+, y− and y* (the argmax along y+) at the start and the end of a run's
    preference phase: what DPO did to prompts it never trained on (paper Sec. 4.2, where each probe is one
    of thousands of training prompts, so the other examples' updates are what move it)."""
    import gc

    from lldyn.data import load_preferences
    from lldyn.scoring import ScoreRequest, score

    pairs = load_preferences(str(held_out))
    cfg, *loaders = preference_phase_models(run_dir)
    values = []
    for load in loaders:
        lm = load()
        res = score(lm.model, lm.tokenizer, [ScoreRequest(p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)],
                    cfg.scoring())
        values.append([(res[2 * i].logp, res[2 * i + 1].logp, res[2 * i].argmax_logp) for i in range(len(pairs))])
        del lm
        gc.collect()
    return [{"run": Path(run_dir).name, "prompt_id": p.id, "kind": kind, "before": b[k], "after": a[k],
             "change": a[k] - b[k]} for p, b, a in zip(pairs, *values) for k, kind in enumerate(KINDS)]


def describe_held_out(rows: list[dict]) -> str:
    """``chosen -10.9 (2/30 up), rejected -12.1 (1/30 up), argmax +7.1 (30/30 up)``: mean change and how many rose."""
    parts = []
    for kind in KINDS:
        changes = [r["change"] for r in rows if r["kind"] == kind]
        parts.append(f"{kind} {sum(changes) / len(changes):+.2f} ({sum(c > 0 for c in changes)}/{len(changes)} up)")
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    from lldyn.config import build_config, read_toml
    from lldyn.data import load_preferences
    from lldyn.errors import LldynError
    from lldyn.io import atomic_write_jsonl
    from lldyn.probes import build_probes, load_sentences, probe_set_summary, split_held_out
    from lldyn.rephrase import make_rephraser
    from lldyn.report import held_out_section, write_report
    from lldyn.rundir import FIGURES
    from lldyn.summary import describe, phase_changes
    from lldyn.train import TrainConfig, is_run_dir, train

    path = resolve_config(args.config, args.experiment)
    raw = read_toml(path)
    runs = ["baseline", "extend"] if args.experiment == "extend" else ["train"]
    unknown = sorted(set(raw) - {"experiment", *runs})
    if unknown or any(r not in raw for r in runs):
        raise LldynError(f"config sections {sorted(raw)} do not fit experiment {args.experiment!r}", file=str(path),
                         expected="[experiment] and " + " and ".join(f"[{r}]" for r in runs))
    exp = build_config(ExperimentConfig, raw["experiment"], file=str(path), prefix="experiment.")
    if args.data:
        exp = replace(exp, data=args.data)
    if args.quick:
        exp = replace(exp, pairs=min(exp.pairs, 24), probe_prompts=min(exp.probe_prompts, 3))
    if "://" not in exp.data and not exp.data.startswith(("hf:", "builtin")) and not Path(exp.data).exists():
        raise LldynError("data not found", file=exp.data, field="data",
                         expected="the HH-RLHF pairs in ../shared/data (run from the repository root) or --data FILE")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LldynError("output path is a file", file=str(out), expected="a directory")

    # Resolve every run's config before anything is written.
    train_file, probes_file = out / "data" / "train.jsonl", out / "probes.jsonl"
    configs = []
    for name in runs:
        values = dict(raw[name])
        if args.model:
            values["model"] = args.model
        if args.quick:
            values.update({k: v for k, v in QUICK.items() if k in ("steps", "eval_every", "batch_size") or
                           values.get("method") in ("sft_dpo", "extend")})
        values.update({"data": str(train_file), "probes": str(probes_file), "seed": exp.seed,
                       "out": str(out / (args.experiment if name == "train" else name))})
        configs.append(build_config(TrainConfig, values, file=str(path), prefix=f"{name}."))

    if not train_file.is_file():
        pairs = load_preferences(exp.data, "train", exp.pairs, skip_invalid=exp.skip_invalid)
        train_pairs, test_pairs = split_held_out(pairs, exp.seed, exp.held_out)
        probes = build_probes(train_pairs, test_pairs, make_rephraser(exp.rephraser, train_pairs, exp.seed),
                              limit=exp.probe_prompts, seed=exp.seed, sentences=load_sentences())
        rows = lambda ps: [{"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in ps]  # noqa: E731
        atomic_write_jsonl(out / "data" / "held_out.jsonl", rows(test_pairs))
        probes.save(probes_file)
        atomic_write_jsonl(train_file, rows(train_pairs))  # last: its presence means the set-up is complete
        print(f"{len(train_pairs)} training pairs, {len(test_pairs)} held out; probes: {probe_set_summary(probes)}")

    for cfg in configs:
        print(f"\n== {Path(cfg.out).name}: {cfg.method} on {cfg.model} → {cfg.out}")
        train(cfg, resume=is_run_dir(cfg.out))
    preference_runs = [c for c in configs if c.method != "sft"]
    held = [row for c in preference_runs for row in held_out_dpo_changes(c.out, out / "data" / "held_out.jsonl")]
    if held:
        atomic_write_jsonl(out / HELD_OUT_FILE, held)
    report = write_report([c.out for c in configs], out, title=f"lldyn reproduce {args.experiment} ({path.name})",
                          extra_sections=[held_out_section(held, out / FIGURES)] if held else ())
    print("\nWhat moved (mean over probe prompts, log π in nats):")
    for cfg in configs:
        for change in phase_changes(cfg.out):
            print(f"  [{Path(cfg.out).name}] " + describe(change))
    if held:
        print("\nThe held-out prompts (never trained on), over the DPO phase (mean change of log π, nats):")
        for c in preference_runs:
            print(f"  [{Path(c.out).name}] " + describe_held_out([r for r in held if r["run"] == Path(c.out).name]))
    if args.experiment == "extend":
        print(f"\njudge them: lldyn judge --a {configs[1].out} --b {configs[0].out} --prompts {out / 'data' / 'held_out.jsonl'}"
              f" --judge hf:MODEL|openai:MODEL --out {out / 'judge'}")
    print(f"\nreport: {report}")
    return 0
