"""``lldyn demo`` (what ``make demo`` runs): probes → SFT → off-policy DPO → report, on the embedded model.

Offline on a 2-core CPU: SmolLM2-135M-Instruct (embedded), the built-in preference data, probes on
its first prompts, an SFT run on (x, y+), then a DPO run that starts from the SFT model (and uses it
as the reference), both tracked, then one report with the two runs side by side and a few lines on
what moved. The settings live in the shipped ``configs/demo.toml`` (see docs/results.md for how
they were calibrated); ``--quick`` shrinks everything for a smoke test.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class DemoConfig:
    """The demo's knobs; ``sft`` and ``dpo`` sections of the TOML are TrainConfig fields."""

    model: str = "smollm2-135m-instruct"
    data: str = "builtin:train"
    probe_prompts: int = 32
    seed: int = 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="SFT then off-policy DPO on the embedded SmolLM2 with probe tracking and a report",
                       description="The main job on the embedded default: build probes, run SFT and DPO with tracking, "
                                   "write report.html and print what moved (≈10 minutes on a 2-core CPU).")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--config", default=None, help="TOML with [demo], [sft] and [dpo] sections (default: shipped demo.toml)")
    p.add_argument("--model", default=None, help="model instead of the embedded SmolLM2 (alias, .gguf, directory)")
    p.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    p.set_defaults(run=run)


def default_config_path() -> Path:
    return Path(__file__).resolve().parent.parent / "configs" / "demo.toml"


def run(args: argparse.Namespace) -> int:
    from lldyn.config import build_config, read_toml
    from lldyn.data import load_preferences
    from lldyn.errors import LldynError
    from lldyn.probes import build_probes, load_sentences, probe_set_summary
    from lldyn.rephrase import make_rephraser
    from lldyn.report import write_report
    from lldyn.summary import describe, phase_changes
    from lldyn.train import TrainConfig, is_run_dir, train

    path = Path(args.config) if args.config else default_config_path()
    raw = read_toml(path)
    unknown = sorted(set(raw) - {"demo", "sft", "dpo"})
    if unknown:
        raise LldynError(f"unknown section [{unknown[0]}]", file=str(path), expected="[demo], [sft] and [dpo]")
    demo = build_config(DemoConfig, raw.get("demo", {}), file=str(path), prefix="demo.")
    if args.model:
        demo = replace(demo, model=args.model)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LldynError("output path is a file", file=str(out), expected="a directory")
    sft_values, dpo_values = dict(raw.get("sft", {})), dict(raw.get("dpo", {}))
    if args.quick:
        quick = {"steps": 4, "eval_every": 2, "batch_size": 2, "limit": 16}
        sft_values.update(quick)
        dpo_values.update(quick)
        demo = replace(demo, probe_prompts=4)
    # Both run configs are checked before anything is written: a bad [sft]/[dpo] key leaves no files.
    probes_path = out / "probes.jsonl"
    common = {"data": demo.data, "probes": str(probes_path), "seed": demo.seed}
    sft_cfg = build_config(TrainConfig, {"method": "sft", "model": demo.model, **common, **sft_values,
                                         "out": str(out / "sft")}, file=str(path), prefix="sft.")
    dpo_cfg = build_config(TrainConfig, {"method": "dpo", "model": str(out / "sft"), **common, **dpo_values,
                                         "out": str(out / "dpo")}, file=str(path), prefix="dpo.")
    out.mkdir(parents=True, exist_ok=True)

    # 1. Probes: training prompts spread over the data's categories, all families (curated rephrases, offline).
    if not probes_path.is_file():
        train_pairs = load_preferences(demo.data.split(":")[0], "train")
        trained = [p for p in train_pairs if p.extra.get("split", "train") == "train"]
        held_out = [p for p in train_pairs if p.extra.get("split") == "test"] or load_preferences("builtin:test")
        probes = build_probes(trained, held_out, make_rephraser("rule", trained, demo.seed), limit=demo.probe_prompts,
                              seed=demo.seed, sentences=load_sentences(), select="spread")
        probes.save(probes_path)
        print(f"probes: {probe_set_summary(probes)} → {probes_path}")

    # 2. SFT on (x, y+), then 3. DPO from the SFT model (which is also its reference).
    for cfg in (sft_cfg, dpo_cfg):
        print(f"\n== {cfg.method.upper()}: {cfg.steps or cfg.epochs} {'steps' if cfg.steps else 'epochs'}, "
              f"lr {cfg.lr}, batch {cfg.batch_size}, {cfg.optimizer} → {cfg.out}")
        train(cfg, resume=is_run_dir(cfg.out))

    # 4. Report with both runs side by side, and what moved.
    report = write_report([sft_cfg.out, dpo_cfg.out], out, title="lldyn demo: SFT then off-policy DPO (SmolLM2-135M)")
    print("\nWhat moved (mean over probe prompts, log π in nats):")
    for run_dir in (sft_cfg.out, dpo_cfg.out):
        for change in phase_changes(run_dir):
            print("  " + describe(change))
    print(f"\nreport: {report}")
    return 0
