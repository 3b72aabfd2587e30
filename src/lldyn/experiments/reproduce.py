"""The paper's SFT / DPO / extend experiments (Ren & Sutherland, Sec. 4) as pipelines run from shipped configs.

Each config (``lldyn/configs/reproduce/*.toml``) has an ``[experiment]`` section (data, how many pairs,
how many probe prompts, held-out fraction, seed) and one ``[train]`` section — or, for ``extend``, a
``[baseline]`` (SFT on y+ then DPO) and an ``[extend]`` (SFT on y+ and y− then DPO) section. The pipeline
splits the data into training and held-out pairs — or, with ``test_data`` (``--test-data``), trains on
all the pairs read and holds out that data instead (``builtin:test``) — written to ``OUT/data/`` so the
run directories describe themselves (with the rows' gold ``answer``/``answer_aliases``, for
``lldyn judge --judge reference``), builds the probes on training prompts (the paper tracks training examples),
trains, scores the held-out pairs at the start and end of each DPO phase, and writes one report.

The shipped configs name data a user can get: HH-RLHF's harmless-base subset from the Hugging Face
cache (``hf:Anthropic/hh-rlhf/harmless-base``); any preference file works with ``--data``.
"""
from __future__ import annotations

import gc
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from lldyn.checkpoint import list_checkpoints
from lldyn.config import build_config, check, read_toml
from lldyn.data import PreferenceExample, load_preferences
from lldyn.errors import LldynError
from lldyn.io import atomic_write_jsonl
from lldyn.probes import build_probes, load_sentences, probe_set_summary, split_held_out
from lldyn.rephrase import make_rephraser
from lldyn.report import held_out_section, write_report
from lldyn.rundir import FIGURES, RunDir
from lldyn.runs import is_run_dir, load_run_model, load_start_model
from lldyn.scoring import ScoreRequest, score
from lldyn.train import TrainConfig, run_train_config, train

EXPERIMENTS = ("sft", "dpo", "extend")
HH_RLHF = "hf:Anthropic/hh-rlhf/harmless-base"
QUICK = {"steps": 3, "sft_steps": 2, "eval_every": 2, "batch_size": 2, "generate_tokens": 8}
HELD_OUT_FILE = "held_out_dpo.jsonl"
KINDS = ("chosen", "rejected", "argmax")
GOLD_FIELDS = ("answer", "answer_aliases")  # kept in OUT/data so the held-out prompts can be judged by reference


@dataclass(frozen=True)
class ExperimentConfig:
    """data: preference source (and split); pairs: how many to read; probe_prompts: training prompts tracked;
    held_out: the fraction of the pairs held out (a seeded split), unless test_data names the held-out pairs
    (read with split "test", all of them), in which case every pair read is trained on."""

    data: str = HH_RLHF
    split: str = "test"
    pairs: int = 200
    probe_prompts: int = 16
    held_out: float = 0.15
    test_data: str | None = None
    seed: int = 0
    skip_invalid: bool = True
    rephraser: str = "rule"

    def __post_init__(self) -> None:
        check(self.pairs >= 4, "pairs", f"must be >= 4, got {self.pairs}", "an integer >= 4")
        check(self.probe_prompts >= 1, "probe_prompts", f"must be >= 1, got {self.probe_prompts}", "an integer >= 1")
        check(0 < self.held_out < 0.5, "held_out", f"must be in (0, 0.5), got {self.held_out}", "a fraction")


@dataclass(frozen=True)
class Experiment:
    """A resolved experiment: its config file, the experiment section and one TrainConfig per run."""

    name: str
    path: Path
    config: ExperimentConfig
    runs: tuple[TrainConfig, ...]
    out: Path

    @property
    def train_file(self) -> Path:
        return self.out / "data" / "train.jsonl"

    @property
    def held_out_file(self) -> Path:
        return self.out / "data" / "held_out.jsonl"

    @property
    def probes_file(self) -> Path:
        return self.out / "probes.jsonl"


@dataclass(frozen=True)
class ReproduceResult:
    experiment: Experiment
    report: Path
    held_out: list[dict[str, Any]]


def configs_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "configs" / "reproduce"


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in configs_dir().glob("*.toml"))


def resolve_config(name: str | None, experiment: str) -> Path:
    """A shipped config name (``qwen2.5-0.5b-dpo``), a TOML file, or the CPU config of ``experiment``."""
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
                         expected="one of " + ", ".join(shipped_configs()) + " or a .toml file")
    return shipped


def load_experiment(experiment: str, out: str | Path, config: str | None = None, model: str | None = None,
                    data: str | None = None, quick: bool = False, test_data: str | None = None) -> Experiment:
    """Read and check every section of the experiment's config (nothing is written): a bad key or value in
    any run section is refused before any run starts."""
    path = resolve_config(config, experiment)
    raw = read_toml(path)
    names = ["baseline", "extend"] if experiment == "extend" else ["train"]
    if sorted(set(raw) - {"experiment", *names}) or any(r not in raw for r in names):
        raise LldynError(f"config sections {sorted(raw)} do not fit experiment {experiment!r}", file=str(path),
                         expected="[experiment] and " + " and ".join(f"[{r}]" for r in names))
    exp = build_config(ExperimentConfig, raw["experiment"], file=str(path), prefix="experiment.")
    if data:
        exp = replace(exp, data=data)
    if test_data:
        exp = replace(exp, test_data=test_data)
    if quick:
        exp = replace(exp, pairs=min(exp.pairs, 24), probe_prompts=min(exp.probe_prompts, 3))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LldynError("output path is a file", file=str(out), expected="a directory")
    runs = tuple(_run_config(raw[name], name, experiment, exp, out, path, model, quick) for name in names)
    return Experiment(experiment, path, exp, runs, out)


def _run_config(values: dict, name: str, experiment: str, exp: ExperimentConfig, out: Path, path: Path,
                model: str | None, quick: bool) -> TrainConfig:
    values = dict(values)
    if model:
        values["model"] = model
    if quick:
        values.update({k: v for k, v in QUICK.items() if k in ("steps", "eval_every", "batch_size") or
                       values.get("method") in ("sft_dpo", "extend")})
    values.update({"data": str(out / "data" / "train.jsonl"), "probes": str(out / "probes.jsonl"), "seed": exp.seed,
                   "out": str(out / (experiment if name == "train" else name))})
    return build_config(TrainConfig, values, file=str(path), prefix=f"{name}.")


def read_pairs(exp: ExperimentConfig) -> list[PreferenceExample]:
    """The experiment's preference pairs; data that cannot be found names both ways to get it."""
    try:
        return load_preferences(exp.data, exp.split, exp.pairs, skip_invalid=exp.skip_invalid)
    except LldynError as err:
        if "not found" not in err.message and "cannot load Hugging Face" not in err.message:
            raise
        raise LldynError(f"data not found: {err.message}", file=exp.data, field="data",
                         expected=f"{HH_RLHF} in the local Hugging Face cache (load it once online with "
                                  "`datasets`), or --data FILE with preference pairs (.jsonl/.json/.parquet)") from None


def set_up(e: Experiment) -> str | None:
    """Split the pairs, build the probes and write ``OUT/data`` (once: a resumed experiment reuses them).
    Returns a line describing what was made, or None when it was there already."""
    if e.train_file.is_file():
        return None
    pairs = read_pairs(e.config)
    if e.config.test_data:  # a clash with the training pairs is refused by build_probes, before anything is written
        train_pairs, test_pairs = pairs, load_preferences(e.config.test_data, "test", skip_invalid=e.config.skip_invalid)
    else:
        train_pairs, test_pairs = split_held_out(pairs, e.config.seed, e.config.held_out)
    probes = build_probes(train_pairs, test_pairs, make_rephraser(e.config.rephraser, train_pairs, e.config.seed),
                          limit=e.config.probe_prompts, seed=e.config.seed, sentences=load_sentences())

    def rows(ps: list[PreferenceExample]) -> list[dict[str, Any]]:
        return [{"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                 **{k: p.extra[k] for k in GOLD_FIELDS if k in p.extra}} for p in ps]

    atomic_write_jsonl(e.held_out_file, rows(test_pairs))
    probes.save(e.probes_file)
    atomic_write_jsonl(e.train_file, rows(train_pairs))  # last: its presence means the set-up is complete
    return f"{len(train_pairs)} training pairs, {len(test_pairs)} held out; probes: {probe_set_summary(probes)}"


def run_reproduce(e: Experiment, say: Callable[[str], None] = print) -> ReproduceResult:
    """Set up, train every run (resuming one that was interrupted), score the held-out pairs over each DPO
    phase and write the report; ``say`` gets a line as each part starts."""
    made = set_up(e)
    if made:
        say(made)
    for cfg in e.runs:
        say(f"\n== {Path(cfg.out).name}: {cfg.method} on {cfg.model} → {cfg.out}")
        train(cfg, resume=is_run_dir(cfg.out))
    held = [row for c in e.runs if c.method != "sft" for row in held_out_dpo_changes(c.out, e.held_out_file)]
    if held:
        atomic_write_jsonl(e.out / HELD_OUT_FILE, held)
    report = write_report([c.out for c in e.runs], e.out, title=f"lldyn reproduce {e.name} ({e.path.name})",
                          extra_sections=[held_out_section(held, e.out / FIGURES)] if held else ())
    return ReproduceResult(e, report, held)


# --------------------------------------------------------------------------- held-out prompts over a DPO phase


def preference_phase_models(run_dir: str | Path) -> tuple[TrainConfig, Callable[[], Any], Callable[[], Any]]:
    """(config, start, end) of a run's preference phase: loaders of the SFT phase's last checkpoint (or, for a
    run that starts with DPO, its starting model) and of the run's final checkpoint. Loaded one at a time."""
    run = RunDir(run_dir)
    cfg = run_train_config(run.path)
    ckpts = list_checkpoints(run.checkpoints)
    sft_ends = [c for c in ckpts if json.loads((c / "state.json").read_text()).get("phase_name") == "sft"]
    if cfg.method in ("sft_dpo", "extend") and not sft_ends:
        raise LldynError("the SFT phase's last checkpoint is gone (pruned by keep_checkpoints), so the start of the "
                         "DPO phase cannot be scored", file=str(run.checkpoints),
                         expected="a run with its phase-end checkpoints (the reproduce configs keep them)")
    start = (lambda: load_run_model(run.path, sft_ends[-1])) if sft_ends else (lambda: load_start_model(cfg.model_config()))
    return cfg, start, (lambda: load_run_model(run.path, ckpts[-1]))


def held_out_dpo_changes(run_dir: str | Path, held_out: str | Path) -> list[dict[str, Any]]:
    """log π of the held-out pairs' y+, y− and y* (the argmax along y+) at the start and the end of a run's
    preference phase: what DPO did to prompts it never trained on (paper Sec. 4.2, where each probe is one
    of thousands of training prompts, so the other examples' updates are what move it)."""
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


def describe_held_out(rows: list[dict[str, Any]]) -> str:
    """``chosen -10.9 (2/30 up), rejected -12.1 (1/30 up), argmax +7.1 (30/30 up)``: mean change and how many rose."""
    parts = []
    for kind in KINDS:
        changes = [r["change"] for r in rows if r["kind"] == kind]
        parts.append(f"{kind} {sum(changes) / len(changes):+.2f} ({sum(c > 0 for c in changes)}/{len(changes)} up)")
    return ", ".join(parts)
