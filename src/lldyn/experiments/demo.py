"""The main job on the embedded default: probes → SFT → off-policy DPO → report (what ``make demo`` runs).

Offline on a 2-core CPU: SmolLM2-135M-Instruct (embedded), the built-in preference data, probes on
training prompts spread over its categories, an SFT run on (x, y+), then a DPO run that starts from the
SFT model (and uses it as the reference), both tracked, then one report with the two runs side by side.
The settings live in the shipped ``configs/demo.toml`` (docs/results.md says how they were calibrated);
``quick`` shrinks everything for a smoke test.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from lldyn.config import build_config, read_toml
from lldyn.data import load_preferences
from lldyn.errors import LldynError
from lldyn.probes import build_probes, load_sentences, probe_set_summary
from lldyn.rephrase import make_rephraser
from lldyn.report import write_report
from lldyn.runs import is_run_dir
from lldyn.train import TrainConfig, train

QUICK = {"steps": 4, "eval_every": 2, "batch_size": 2, "limit": 16, "generate_tokens": 8}


@dataclass(frozen=True)
class DemoConfig:
    """The demo's knobs; ``sft`` and ``dpo`` sections of the TOML are TrainConfig fields."""

    model: str = "smollm2-135m-instruct"
    data: str = "builtin:train"
    probe_prompts: int = 32
    seed: int = 0


@dataclass(frozen=True)
class Demo:
    config: DemoConfig
    sft: TrainConfig
    dpo: TrainConfig
    out: Path

    @property
    def probes_file(self) -> Path:
        return self.out / "probes.jsonl"


def default_config_path() -> Path:
    return Path(__file__).resolve().parent.parent / "configs" / "demo.toml"


def load_demo(out: str | Path, config: str | Path | None = None, model: str | None = None,
              quick: bool = False) -> Demo:
    """Read and check the demo's config and both runs' configs (nothing is written yet)."""
    path = Path(config) if config else default_config_path()
    raw = read_toml(path)
    unknown = sorted(set(raw) - {"demo", "sft", "dpo"})
    if unknown:
        raise LldynError(f"unknown section [{unknown[0]}]", file=str(path), expected="[demo], [sft] and [dpo]")
    demo = build_config(DemoConfig, raw.get("demo", {}), file=str(path), prefix="demo.")
    if model:
        demo = replace(demo, model=model)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LldynError("output path is a file", file=str(out), expected="a directory")
    sft_values, dpo_values = dict(raw.get("sft", {})), dict(raw.get("dpo", {}))
    if quick:
        sft_values.update(QUICK)
        dpo_values.update(QUICK)
        demo = replace(demo, probe_prompts=4)
    common = {"data": demo.data, "probes": str(out / "probes.jsonl"), "seed": demo.seed}
    sft = build_config(TrainConfig, {"method": "sft", "model": demo.model, **common, **sft_values,
                                     "out": str(out / "sft")}, file=str(path), prefix="sft.")
    dpo = build_config(TrainConfig, {"method": "dpo", "model": str(out / "sft"), **common, **dpo_values,
                                     "out": str(out / "dpo")}, file=str(path), prefix="dpo.")
    return Demo(demo, sft, dpo, out)


def build_demo_probes(demo: Demo) -> str | None:
    """Probes on training prompts spread over the data's categories, all families (curated rephrases, offline);
    written once. Returns a line describing them, or None when they were there already."""
    if demo.probes_file.is_file():
        return None
    pairs = load_preferences(demo.config.data.split(":")[0], "train")
    trained = [p for p in pairs if p.extra.get("split", "train") == "train"]
    held_out = [p for p in pairs if p.extra.get("split") == "test"] or load_preferences("builtin:test")
    probes = build_probes(trained, held_out, make_rephraser("rule", trained, demo.config.seed),
                          limit=demo.config.probe_prompts, seed=demo.config.seed, sentences=load_sentences(),
                          select="spread")
    demo.out.mkdir(parents=True, exist_ok=True)
    probes.save(demo.probes_file)
    return f"probes: {probe_set_summary(probes)} → {demo.probes_file}"


def run_demo(demo: Demo, say: Callable[[str], None] = print) -> Path:
    """Probes, SFT on (x, y+), DPO from the SFT model (a run that was interrupted resumes), then the report."""
    made = build_demo_probes(demo)
    if made:
        say(made)
    for cfg in (demo.sft, demo.dpo):
        say(f"\n== {cfg.method.upper()}: {cfg.steps or cfg.epochs} {'steps' if cfg.steps else 'epochs'}, "
            f"lr {cfg.lr}, batch {cfg.batch_size}, {cfg.optimizer} → {cfg.out}")
        train(cfg, resume=is_run_dir(cfg.out))
    return write_report([demo.sft.out, demo.dpo.out], demo.out,
                        title="lldyn demo: SFT then off-policy DPO (SmolLM2-135M)")
