"""The paper's SFT / DPO / extend experiments (Ren & Sutherland, Sec. 4), and GRPO on verifiable prompts (Deng,
Ren et al. 2025, arXiv 2505.18830), as pipelines run from shipped configs.

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

``grpo`` (``configs/reproduce/grpo.toml``) trains with ``--reward builtin`` on the built-in training prompts that
have a gold answer (``answered_only``), holds the built-in test prompts out, tracks the probe prompts' gold y+ / y−
and the starting policy's own samples split by reward (``sample_correct`` / ``sample_incorrect``,
:mod:`lldyn.policy_samples`), decomposes every N-th step into its positive- and negative-advantage parts, measures
greedy accuracy on the held-out prompts before and after, and summarises whether lazy likelihood displacement
(LLD: the correct samples' log π rises marginally or falls while the reward rises) shows (:class:`GRPOSummary`).
"""
from __future__ import annotations

import gc
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from lldyn.checkpoint import list_checkpoints
from lldyn.config import build_config, check, read_toml
from lldyn.data import PreferenceExample, PromptExample, load_preferences, load_prompts
from lldyn.errors import LldynError
from lldyn.generation import GenerationConfig, sample
from lldyn.io import atomic_write_json, atomic_write_jsonl
from lldyn.policy_samples import POLICY_SAMPLE_FAMILIES
from lldyn.probes import STATIC_FAMILIES, build_probes, load_sentences, probe_set_summary, split_held_out
from lldyn.rewards import TrainerState, load_reward, reward_inputs
from lldyn.rephrase import make_rephraser
from lldyn.report import held_out_section, write_report
from lldyn.rundir import FIGURES, RunDir
from lldyn.runs import is_run_dir, load_run_model, load_start_model
from lldyn.scoring import ScoreRequest, score
from lldyn.train import TrainConfig, run_train_config, train

EXPERIMENTS = ("sft", "dpo", "extend", "grpo")
HH_RLHF = "hf:Anthropic/hh-rlhf/harmless-base"
QUICK = {"steps": 3, "sft_steps": 2, "eval_every": 2, "batch_size": 2, "generate_tokens": 8}
# GRPO's smoke test: two steps of one prompt's 4 completions each, both tracked and decomposed
QUICK_GRPO = {"steps": 2, "eval_every": 1, "decompose_every": 1, "batch_size": 4, "num_generations": 4,
              "max_completion_length": 8}
HELD_OUT_FILE = "held_out_dpo.jsonl"
GREEDY_FILE = "greedy_accuracy.jsonl"  # GRPO: the held-out prompts' greedy completions before and after
GRPO_SUMMARY_FILE = "grpo_summary.json"
KINDS = ("chosen", "rejected", "argmax")
GOLD_FIELDS = ("answer", "answer_aliases")  # kept in OUT/data so the held-out prompts can be judged by reference


@dataclass(frozen=True)
class ExperimentConfig:
    """data: preference source (and split); pairs: how many to read; probe_prompts: training prompts tracked
    (``probe_select``: the first ones or a seeded spread over categories, :func:`lldyn.probes.select_probe_pairs`;
    ``probe_families``: the static families kept, empty = all); held_out: the fraction of the pairs held out (a
    seeded split), unless test_data names the held-out pairs (read with split "test", all of them), in which case
    every pair read is trained on; answered_only: keep only the pairs with a gold ``answer`` (GRPO's
    ``--reward builtin``), training and held out."""

    data: str = HH_RLHF
    split: str = "test"
    pairs: int = 200
    probe_prompts: int = 16
    held_out: float = 0.15
    test_data: str | None = None
    seed: int = 0
    skip_invalid: bool = True
    rephraser: str = "rule"
    probe_select: str = "first"
    probe_families: tuple[str, ...] = ()
    answered_only: bool = False

    def __post_init__(self) -> None:
        check(self.pairs >= 4, "pairs", f"must be >= 4, got {self.pairs}", "an integer >= 4")
        check(self.probe_select in ("first", "spread"), "probe_select", f"unknown selection {self.probe_select!r}",
              "first or spread")
        unknown = sorted(set(self.probe_families) - set(STATIC_FAMILIES))
        check(not unknown, "probe_families", f"unknown probe families {unknown}",
              "families among " + ", ".join(STATIC_FAMILIES))
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
    grpo: "GRPOSummary | None" = None


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
    if quick and values.get("method") == "grpo":
        values.update(QUICK_GRPO)
    elif quick:
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
    if e.config.answered_only:
        train_pairs, test_pairs = answered(train_pairs, e.config.data), answered(test_pairs, e.config.test_data)
    probes = build_probes(train_pairs, test_pairs, make_rephraser(e.config.rephraser, train_pairs, e.config.seed),
                          limit=e.config.probe_prompts, seed=e.config.seed, sentences=load_sentences(),
                          select=e.config.probe_select)
    if e.config.probe_families:
        probes = probes.without_families(set(STATIC_FAMILIES) - set(e.config.probe_families))

    def rows(ps: list[PreferenceExample]) -> list[dict[str, Any]]:
        return [{"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                 **{k: p.extra[k] for k in GOLD_FIELDS if k in p.extra}} for p in ps]

    atomic_write_jsonl(e.held_out_file, rows(test_pairs))
    probes.save(e.probes_file)
    atomic_write_jsonl(e.train_file, rows(train_pairs))  # last: its presence means the set-up is complete
    return f"{len(train_pairs)} training pairs, {len(test_pairs)} held out; probes: {probe_set_summary(probes)}"


def answered(pairs: list[PreferenceExample], source: str | None) -> list[PreferenceExample]:
    """The pairs with a gold ``answer`` (refused when none has one: ``--reward builtin`` could train on nothing)."""
    kept = [p for p in pairs if p.extra.get("answer")]
    if not kept:
        raise LldynError("no pair has a gold answer", file=source, field="answer",
                         expected="preference rows with 'answer' (and 'answer_aliases'), as the built-in data has")
    return kept


def run_reproduce(e: Experiment, say: Callable[[str], None] = print) -> ReproduceResult:
    """Set up, train every run (resuming one that was interrupted), score the held-out pairs over each DPO
    phase and write the report; ``say`` gets a line as each part starts."""
    made = set_up(e)
    if made:
        say(made)
    for cfg in e.runs:
        say(f"\n== {Path(cfg.out).name}: {cfg.method} on {cfg.model} → {cfg.out}")
        train(cfg, resume=is_run_dir(cfg.out))
    if e.name == "grpo":
        return run_grpo_analysis(e)
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


# --------------------------------------------------------------------------- GRPO on verifiable prompts


@dataclass(frozen=True)
class GRPOSummary:
    """What ``lldyn reproduce grpo`` measured (``OUT/grpo_summary.json``).

    reward_first / reward_last: mean training reward over the first / last ``window`` steps;
    accuracy_before / accuracy_after: share of the ``held_out`` prompts whose greedy completion earns reward 1
    (the run's reward: the gold answer) from the starting and the final model; samples: the starting policy's
    samples of the probe prompts per family; delta_*: mean Δ log π since step 0 at the last evaluation
    (``tracked_at``) of the correct and incorrect samples and of the probe prompts' gold y+ (``chosen``);
    correct_*: the correct samples' first-order decomposition summed over the ``decomposed_steps`` (mean over
    the samples, nats): the positive- and negative-advantage completions' parts, the prediction and the actual
    change of those steps; negative_share = |negative| / (|positive| + |negative|); lld: the verdict.
    """

    steps: int
    window: int
    reward_first: float
    reward_last: float
    held_out: int
    accuracy_before: float
    accuracy_after: float
    samples: dict[str, int]
    tracked_at: int | None
    delta_correct: float | None
    delta_incorrect: float | None
    delta_chosen: float | None
    decomposed_steps: int
    correct_positive: float | None
    correct_negative: float | None
    correct_predicted: float | None
    correct_actual: float | None
    negative_share: float | None
    lld: str

    def lines(self) -> list[str]:
        def nats(v: float | None) -> str:
            return "not measured" if v is None else f"{v:+.3f}"

        out = [f"reward (mean, {self.window}-step windows): first {self.reward_first:.3f} -> last {self.reward_last:.3f}"
               f" over {self.steps} steps",
               f"greedy accuracy on {self.held_out} held-out prompts: before {self.accuracy_before:.3f} -> after "
               f"{self.accuracy_after:.3f}",
               f"starting policy's samples of the probe prompts: {self.samples.get('sample_correct', 0)} correct, "
               f"{self.samples.get('sample_incorrect', 0)} incorrect",
               f"mean change of log pi since step 0 (nats, at step {self.tracked_at}): correct samples "
               f"{nats(self.delta_correct)}, incorrect samples {nats(self.delta_incorrect)}, gold y+ "
               f"{nats(self.delta_chosen)}"]
        if self.decomposed_steps and self.correct_predicted is not None:
            share = "n/a" if self.negative_share is None else f"{self.negative_share:.3f}"
            out.append(f"decomposition of the correct samples' change over {self.decomposed_steps} decomposed steps "
                       f"(sum of per-step means, nats): positive-advantage part {self.correct_positive:+.4f}, "
                       f"negative-advantage part {self.correct_negative:+.4f} (share {share}), predicted "
                       f"{self.correct_predicted:+.4f}, actual {self.correct_actual:+.4f}")
        else:
            out.append("decomposition of the correct samples: not measured (no decomposed step with correct samples)")
        out.append(f"LLD: {self.lld}")
        return out


def lld_verdict(delta_correct: float | None, delta_incorrect: float | None, reward_first: float,
                reward_last: float, alarms: int) -> str:
    """Whether lazy likelihood displacement shows (Deng, Ren et al. 2025, Sec. 3: while the reward rises, the
    correct responses' log π rises only marginally or falls), in words, from the measured changes; ``alarms``:
    the evaluations at which the run's live LLD alarm (:mod:`lldyn.squeeze.lld`) fired."""
    if delta_correct is None:
        return "not measured (no correct sample among the starting policy's samples of the probe prompts)"
    moved = (f"the correct samples' log pi changed by {delta_correct:+.3f} nats, the incorrect samples' by "
             f"{'n/a' if delta_incorrect is None else f'{delta_incorrect:+.3f}'}, reward {reward_first:.3f} -> "
             f"{reward_last:.3f}; the live LLD alarm fired at {alarms} evaluation(s)")
    if reward_last <= reward_first:
        return f"not testable: the reward did not rise ({moved})"
    if delta_correct <= 0:
        return f"shows: {moved}"
    return f"does not show as a fall ({moved}); whether the rise is marginal is for the reader"


def greedy_completions(model: Any, tokenizer: Any, prompts: list[PromptExample], cfg: TrainConfig) -> list[dict[str, Any]]:
    """Each prompt's greedy completion (as the run samples: template, ``max_completion_length``) and its reward
    under the run's reward function."""
    samples = sample(model, tokenizer, [p.prompt for p in prompts], GenerationConfig(
        max_new_tokens=cfg.max_completion_length, do_sample=False, template=cfg.template, batch_size=cfg.batch_size,
        max_prompt_tokens=cfg.max_prompt_tokens or None))
    row_prompts, completions, kwargs = reward_inputs(prompts, samples, TrainerState(0, 0))
    values = load_reward(cfg.reward)(row_prompts, completions, **kwargs)
    return [{"prompt_id": p.id, "completion": s.text, "eos": s.eos, "reward": None if math.isnan(v) else v}
            for p, s, v in zip(prompts, samples, values)]


def greedy_accuracy_rows(cfg: TrainConfig, held_out: Path) -> list[dict[str, Any]]:
    """The held-out prompts' greedy completions from the starting model and the run's final checkpoint (one row
    per model and prompt; ``model`` is ``start`` or ``final``), loaded one at a time."""
    prompts = load_reward(cfg.reward).check_prompts(load_prompts(str(held_out)), skip_invalid=True)
    rows = []
    ckpts = list_checkpoints(RunDir(cfg.out).checkpoints)
    for name, load in (("start", lambda: load_start_model(cfg.model_config())),
                       ("final", lambda: load_run_model(cfg.out, ckpts[-1]))):
        lm = load()
        rows += [{"model": name, **r} for r in greedy_completions(lm.model, lm.tokenizer, prompts, cfg)]
        del lm
        gc.collect()
    return rows


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def grpo_summary(run_dir: str | Path, greedy: list[dict[str, Any]]) -> GRPOSummary:
    """The numbers of :class:`GRPOSummary` from a finished GRPO run (read through :class:`RunDir`) and its
    held-out greedy completions (:func:`greedy_accuracy_rows`)."""
    run = RunDir(run_dir)
    rewards = [r.stats["reward"] for r in run.train_rows()]
    window = max(1, len(rewards) // 5)
    accuracy = {m: _mean([float(r["reward"] == 1.0) for r in greedy if r["model"] == m]) for m in ("start", "final")}
    samples = {f: 0 for f in POLICY_SAMPLE_FAMILIES}
    for s in run.policy_samples() or []:
        samples[s.family] = samples.get(s.family, 0) + 1
    summaries = run.probe_summaries()
    last = summaries[-1] if summaries else None
    delta = last.family_delta if last is not None else {}
    by_step: dict[int, list[dict[str, Any]]] = {}
    for row in run.decompose_rows():
        if row["family"] == "sample_correct":
            by_step.setdefault(row["step"], []).append(row)

    def summed(value) -> float | None:
        return sum(_mean([value(r) for r in rows]) for rows in by_step.values()) if by_step else None

    pos, neg = summed(lambda r: r["parts"].get("positive", 0.0)), summed(lambda r: r["parts"].get("negative", 0.0))
    share = abs(neg) / (abs(pos) + abs(neg)) if pos is not None and neg is not None and (pos or neg) else None
    first, final = _mean(rewards[:window]), _mean(rewards[-window:])
    d_correct, d_incorrect = delta.get("sample_correct"), delta.get("sample_incorrect")
    return GRPOSummary(
        steps=len(rewards), window=window, reward_first=first, reward_last=final,
        held_out=sum(r["model"] == "start" for r in greedy), accuracy_before=accuracy["start"],
        accuracy_after=accuracy["final"], samples=samples, tracked_at=None if last is None else last.step,
        delta_correct=d_correct, delta_incorrect=d_incorrect, delta_chosen=delta.get("chosen"),
        decomposed_steps=len(by_step), correct_positive=pos, correct_negative=neg,
        correct_predicted=summed(lambda r: r["predicted"]), correct_actual=summed(lambda r: r["actual"]),
        negative_share=share, lld=lld_verdict(d_correct, d_incorrect, first, final,
                                              sum(a.alarm == "lld" for a in run.alarm_rows())))


def run_grpo_analysis(e: Experiment) -> ReproduceResult:
    """After the GRPO run: greedy accuracy on the held-out prompts before and after (``OUT/greedy_accuracy.jsonl``),
    the summary (``OUT/grpo_summary.json``) and the report."""
    cfg = e.runs[0]
    greedy = greedy_accuracy_rows(cfg, e.held_out_file)
    atomic_write_jsonl(e.out / GREEDY_FILE, greedy)
    summary = grpo_summary(cfg.out, greedy)
    atomic_write_json(e.out / GRPO_SUMMARY_FILE, asdict(summary))
    report = write_report([cfg.out], e.out, title=f"lldyn reproduce {e.name} ({e.path.name})")
    return ReproduceResult(e, report, [], summary)
