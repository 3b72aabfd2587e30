"""The run directory: a folder that describes itself (after TRAK's saver). This module is its only owner:
every file name and every row type of a run is spelled here, and readers get typed rows back.

Layout::

    RUN/
      config.json            resolved config of the run (no secrets); a re-run with another config is refused
      metrics.jsonl          append-only; one row per logged event: TrainRow, TrackSummary (probe evaluation),
                             StoppedRow (non-finite loss), AlarmRow (an alarm fired), each with its ``step``
                             and ``event``
      probes.jsonl           the probe set the run tracks (static families)
      initial_samples.jsonl  the starting model's greedy responses (the ``initial_sample`` probe family)
      policy_samples.jsonl   GRPO: the starting policy's own samples of the probe prompts, split by the reward
                             (the ``sample_correct`` / ``sample_incorrect`` families), drawn once at step 0
      probe_table.jsonl      one row per (step, prompt_id, family): PROBE_COLUMNS
      generations.jsonl      free-running greedy generations at evaluations (the repeater), one GenerationRow each
      ref_logps-<phase>.jsonl  reference log-probs of a pairwise phase's pairs, computed once
      on_policy/round-<n>.jsonl  the pairs of on-policy round n (sampled, labelled)
      grpo/step-<n>.jsonl    GRPO: the generation batch step n trained on, one GroupCompletion per completion
      decompose.jsonl        one row per (decomposed step, probe): actual and predicted Δ log π, parts
      checkpoints/           step-N/ (safetensors weights + optimizer/scheduler/RNG state)
      figures/, report.html
      .decompose-replay/     scratch space of ``lldyn decompose`` (removed when it ends)

All whole-file writes are atomic; appends are whole lines with fsync, and rows beyond the last
checkpoint are dropped on resume so a killed run never has torn or duplicated rows.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, Union

from lldyn.data import PreferenceExample, parse_preference_row, read_rows
from lldyn.errors import LldynError
from lldyn.io import append_jsonl, atomic_write_json, atomic_write_jsonl, read_jsonl, read_jsonl_lines, save_figure

CONFIG = "config.json"
METRICS = "metrics.jsonl"
PROBES = "probes.jsonl"
INITIAL_SAMPLES = "initial_samples.jsonl"
POLICY_SAMPLES = "policy_samples.jsonl"
PROBE_TABLE = "probe_table.jsonl"
DECOMPOSE = "decompose.jsonl"
GENERATIONS = "generations.jsonl"
CHECKPOINTS = "checkpoints"
FIGURES = "figures"
REPORT = "report.html"
ON_POLICY = "on_policy"
GRPO = "grpo"
REPLAY = ".decompose-replay"
TENSORBOARD = "tensorboard"
# ``sample``: the index of a policy sample among its prompt's draws (families sample_correct / sample_incorrect)
PROBE_COLUMNS = ("step", "prompt_id", "family", "sample", "logp", "n_tokens", "mean_logp", "top1", "entropy", "text")


def reference_file(phase_index: int) -> str:
    return f"ref_logps-{phase_index}.jsonl"


def on_policy_file(round_index: int) -> str:
    return f"round-{round_index:06d}.jsonl"


def grpo_file(step: int) -> str:
    return f"step-{step:08d}.jsonl"


@dataclass(frozen=True)
class GroupCompletion:
    """One completion of the generation batch a GRPO step trained on (``grpo/step-<n>.jsonl``).

    step: the optimizer step that trained on it (as in ``metrics.jsonl``); group: index of its prompt in the
    generation batch (the completions of a group are consecutive); prompt: as the data holds it;
    completion: the decoded text; completion_ids: the sampled tokens, EOS included when it was generated;
    eos: whether it ended with EOS (False: cut at ``max_completion_length``); reward: the reward function's
    value (None: unscorable); advantage: its group-relative advantage (0 for an unscorable one).
    """

    step: int
    prompt_id: str
    group: int
    prompt: Any
    completion: str
    completion_ids: tuple[int, ...]
    eos: bool
    reward: float | None
    advantage: float

    @property
    def n_tokens(self) -> int:
        """Completion length in tokens (EOS included when generated)."""
        return len(self.completion_ids)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "prompt_id": self.prompt_id, "group": self.group, "prompt": self.prompt,
                "completion": self.completion, "n_tokens": self.n_tokens, "eos": self.eos, "reward": self.reward,
                "advantage": self.advantage, "completion_ids": list(self.completion_ids)}

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> "GroupCompletion":
        reward = row.get("reward")
        return cls(int(row["step"]), str(row["prompt_id"]), int(row["group"]), row["prompt"], str(row["completion"]),
                   tuple(int(t) for t in row["completion_ids"]), bool(row["eos"]),
                   None if reward is None else float(reward), float(row["advantage"]))


@dataclass(frozen=True)
class GenerationRow:
    """One free-running greedy generation of a probe prompt at an evaluation (``generations.jsonl``).

    step: the evaluation's step; prompt_id: the probe prompt; text: the completion decoded without special
    tokens; n_tokens: its length in tokens without EOS (at most ``budget``); budget: the evaluation's
    ``max_new_tokens``; eos: whether generation stopped at EOS; logp: log π of the generated tokens (EOS
    included when generated) under the model of that step, from the one engine; distinct_1, distinct_2,
    repeated_4gram (Welleck's seq-rep-4), in_loop, loop_period: :func:`lldyn.degeneration.degeneration` of
    the token ids.
    """

    step: int
    prompt_id: str
    text: str
    n_tokens: int
    budget: int
    eos: bool
    logp: float
    distinct_1: float
    distinct_2: float
    repeated_4gram: float
    in_loop: bool
    loop_period: int | None

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "prompt_id": self.prompt_id, "text": self.text, "n_tokens": self.n_tokens,
                "budget": self.budget, "eos": self.eos, "logp": self.logp, "distinct_1": self.distinct_1,
                "distinct_2": self.distinct_2, "repeated_4gram": self.repeated_4gram, "in_loop": self.in_loop,
                "loop_period": self.loop_period}

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> "GenerationRow":
        period = row.get("loop_period")
        return cls(int(row["step"]), str(row["prompt_id"]), str(row["text"]), int(row["n_tokens"]),
                   int(row["budget"]), bool(row["eos"]), float(row["logp"]), float(row["distinct_1"]),
                   float(row["distinct_2"]), float(row["repeated_4gram"]), bool(row["in_loop"]),
                   None if period is None else int(period))


@dataclass(frozen=True)
class PolicySample:
    """One of the starting policy's own samples of a probe prompt (``policy_samples.jsonl``,
    :func:`lldyn.policy_samples.draw_policy_samples`).

    prompt_id: the probe prompt; sample: its index among the prompt's draws (0..n-1); family:
    ``sample_correct`` or ``sample_incorrect`` (by the reward); prompt: as the data holds it; response: the
    decoded text the reward scored; reward: its value; prompt_ids, completion_ids: the exact tokens sampled
    (EOS included when generated), which the tracker scores; eos: whether it ended with EOS; seed: the
    sampling seed.
    """

    prompt_id: str
    sample: int
    family: str
    prompt: Any
    response: str
    reward: float
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    eos: bool
    seed: int

    @property
    def id(self) -> str:
        return f"{self.prompt_id}/{self.family}/{self.sample}"

    def to_json(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "sample": self.sample, "family": self.family, "prompt": self.prompt,
                "response": self.response, "reward": self.reward, "eos": self.eos, "seed": self.seed,
                "prompt_ids": list(self.prompt_ids), "completion_ids": list(self.completion_ids)}

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> "PolicySample":
        return cls(str(row["prompt_id"]), int(row["sample"]), str(row["family"]), row["prompt"], str(row["response"]),
                   float(row["reward"]), tuple(int(t) for t in row["prompt_ids"]),
                   tuple(int(t) for t in row["completion_ids"]), bool(row["eos"]), int(row["seed"]))


# --------------------------------------------------------------------------- metrics rows


@dataclass(frozen=True)
class TrainRow:
    """One optimizer step of ``lldyn train``.

    phase, phase_step: which phase and its step count; loss, lr (this step's), grad_norm (before clipping);
    seconds: wall time of the step. stats: the loss's named parts (``chosen_logp``, ``margin``, …), the
    on-policy round (``on_policy/…``) and the decomposition summary (``decompose/…``).
    """

    EVENT = "train"
    step: int
    phase: str
    phase_step: int
    loss: float
    lr: float
    grad_norm: float
    seconds: float
    stats: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "event": self.EVENT, "phase": self.phase, "phase_step": self.phase_step,
                "loss": self.loss, **self.stats, "lr": self.lr, "grad_norm": self.grad_norm, "seconds": self.seconds}

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> "TrainRow":
        own = ("step", "event", "phase", "phase_step", "loss", "lr", "grad_norm", "seconds")
        return cls(int(row["step"]), str(row.get("phase", "train")), int(row.get("phase_step", row["step"])),
                   float(row["loss"]), float(row.get("lr", "nan")), float(row.get("grad_norm", "nan")),
                   float(row.get("seconds", "nan")), {k: v for k, v in row.items() if k not in own})


@dataclass(frozen=True)
class TrackSummary:
    """One evaluation of the probes (:class:`lldyn.tracking.Tracker`).

    family_mean: mean log π over prompts, per family.
    family_delta: mean over prompts of log π(step) − log π(first evaluation), per family.
    signals: the squeeze signals (``lldyn.tracking.SIGNALS``).
    extra: keys the tracker callbacks returned for this step (the squeeze alarm's), and ``probe_seconds``.
    generation: the free-running greedy generations of this evaluation, summarised (empty when none were
        made): ``distinct_1``, ``distinct_2`` (corpus), ``repeated_4gram``, ``loop_share``, ``mean_length``,
        ``eos_share``, ``mean_logp``, ``n`` (:data:`lldyn.tracking.GENERATION_KEYS`); ``generation/<key>`` in
        ``metrics.jsonl``.
    """

    EVENT = "probes"
    step: int
    family_mean: Mapping[str, float]
    family_delta: Mapping[str, float]
    signals: Mapping[str, float]
    extra: Mapping[str, Any] = field(default_factory=dict)
    generation: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"step": self.step, "event": self.EVENT}
        row.update({f"family_mean/{k}": v for k, v in self.family_mean.items()})
        row.update({f"family_delta/{k}": v for k, v in self.family_delta.items()})
        row.update({f"signal/{k}": v for k, v in self.signals.items()})
        row.update({f"generation/{k}": v for k, v in self.generation.items()})
        row.update(self.extra)
        return row

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> "TrackSummary":
        def part(prefix: str) -> dict[str, float]:
            return {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}

        known = ("step", "event", "family_mean/", "family_delta/", "signal/", "generation/")
        extra = {k: v for k, v in row.items() if not any(k == p or k.startswith(p) for p in known)}
        return cls(int(row["step"]), part("family_mean/"), part("family_delta/"), part("signal/"), extra,
                   part("generation/"))


@dataclass(frozen=True)
class StoppedRow:
    """Training stopped at ``step``: ``reason``, whether the weights were finite, the offending statistics."""

    EVENT = "stopped"
    step: int
    reason: str
    weights_finite: bool
    stats: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "event": self.EVENT, "reason": self.reason, "weights_finite": self.weights_finite,
                **self.stats}

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> "StoppedRow":
        own = ("step", "event", "reason", "weights_finite")
        return cls(int(row["step"]), str(row.get("reason", "")), bool(row.get("weights_finite", False)),
                   {k: v for k, v in row.items() if k not in own})


@dataclass(frozen=True)
class AlarmRow:
    """An alarm fired at the probe evaluation of ``step``: ``alarm`` (its name, e.g. ``lld``), ``since_step`` (the
    evaluation its current run of alarms is measured from) and what it measured (``stats``)."""

    EVENT = "alarm"
    step: int
    alarm: str
    since_step: int | None
    stats: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "event": self.EVENT, "alarm": self.alarm, "since_step": self.since_step,
                **self.stats}

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> "AlarmRow":
        own = ("step", "event", "alarm", "since_step")
        since = row.get("since_step")
        return cls(int(row["step"]), str(row.get("alarm", "")), None if since is None else int(since),
                   {k: v for k, v in row.items() if k not in own})


MetricsRow = Union[TrainRow, TrackSummary, StoppedRow, AlarmRow]
ROW_TYPES: dict[str, type] = {t.EVENT: t for t in (TrainRow, TrackSummary, StoppedRow, AlarmRow)}


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {b!r} (this run) vs {a!r} (directory)"]


class RunDir:
    """A run directory. ``RunDir.create(path, config)`` starts or re-opens a run.

    ``config`` must be JSON-ready (see :func:`lldyn.config.config_to_dict`). Opening an existing
    directory whose ``config.json`` differs is refused with the differing fields named; opening one
    that already holds metrics without ``resume=True`` is refused too (nothing is overwritten).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # callables that receive every row logged after metrics.jsonl has it (``--report-to``: lldyn.report_to)
        self.listeners: list[Callable[[MetricsRow], None]] = []

    @classmethod
    def create(cls, path: str | Path, config: Mapping[str, Any], resume: bool = False,
               ignore_keys: Iterable[str] = ("resume",)) -> "RunDir":
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise LldynError("run directory path is a file", file=str(run.path), expected="a directory")
        comparable = {k: v for k, v in config.items() if k not in set(ignore_keys)}
        if run.config_path.is_file():
            old = {k: v for k, v in run.config().items() if k not in set(ignore_keys)}
            diffs = _diff(old, comparable)
            if diffs:
                raise LldynError("run directory holds a run with a different config: " + "; ".join(diffs[:3]),
                                 file=str(run.config_path), expected="a new --out directory, or the same config")
            if not resume and run.has_metrics():
                raise LldynError("run directory already holds a run", file=str(run.path),
                                 expected="--resume to continue it, or a new --out directory")
        elif resume:
            raise LldynError("nothing to resume: no config.json", file=str(run.path), expected="a run directory")
        else:
            try:
                run.path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise LldynError(f"cannot create run directory: {err.strerror}", file=str(run.path)) from None
            atomic_write_json(run.config_path, dict(config))
        return run

    # ------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def tensorboard_dir(self) -> Path:
        """``RUN/tensorboard``: the event files of ``--report-to tensorboard``."""
        return self.path / TENSORBOARD

    @property
    def probes_path(self) -> Path:
        return self.path / PROBES

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def figures(self) -> Path:
        """``RUN/figures`` (not created by reading this)."""
        return self.path / FIGURES

    @property
    def report_path(self) -> Path:
        return self.path / REPORT

    @property
    def decompose_path(self) -> Path:
        return self.path / DECOMPOSE

    @property
    def replay_dir(self) -> Path:
        """Scratch space of ``lldyn decompose`` inside the run (removed when it ends)."""
        return self.path / REPLAY

    # ------------------------------------------------------------------ config
    def config(self) -> dict[str, Any]:
        try:
            return json.loads(self.config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LldynError("not a run directory (no config.json)", file=str(self.path),
                             expected="a directory written by lldyn train (or the TRL callback)") from None
        except json.JSONDecodeError as err:
            raise LldynError(f"corrupt config.json: {err.msg}", file=str(self.config_path), line=err.lineno,
                             expected="the JSON lldyn wrote (restore it, or start a new run)") from None

    def describe(self, config: Mapping[str, Any]) -> None:
        """Write ``config.json`` unless the run already has one (a directory handed over as a bare path)."""
        if not self.config_path.is_file():
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.config_path, dict(config))

    # ------------------------------------------------------------------ metrics
    def has_metrics(self) -> bool:
        return self.metrics_path.is_file() and self.metrics_path.stat().st_size > 0

    def log(self, row: MetricsRow) -> None:
        """Append one typed row to ``metrics.jsonl``."""
        append_jsonl(self.metrics_path, [row.to_json()])
        for listener in self.listeners:
            listener(row)

    def _rows(self, kind: type) -> list[Any]:
        if not self.metrics_path.is_file():
            return []
        return [kind.from_json(r) for r in read_jsonl(self.metrics_path) if r.get("event") == kind.EVENT]

    def train_rows(self) -> list[TrainRow]:
        return self._rows(TrainRow)

    def probe_summaries(self) -> list[TrackSummary]:
        return self._rows(TrackSummary)

    def stopped_rows(self) -> list[StoppedRow]:
        return self._rows(StoppedRow)

    def alarm_rows(self) -> list[AlarmRow]:
        return self._rows(AlarmRow)

    def metrics_rows(self) -> list[MetricsRow]:
        """Every metrics row, typed, in the order it was logged."""
        if not self.metrics_path.is_file():
            return []
        return [ROW_TYPES[r["event"]].from_json(r) for r in read_jsonl(self.metrics_path) if r.get("event") in ROW_TYPES]

    def events(self) -> list[tuple[int, str]]:
        """``(step, event)`` of every metrics row, in the order it was logged."""
        return [(r.step, r.EVENT) for r in self.metrics_rows()]

    def preference_start(self) -> int:
        """The step at which the run's preference phase starts: the step before its first training row of a
        non-SFT phase; 0 when no phase is named (a TRL callback's run) or the run has no preference phase."""
        starts = [r.step - 1 for r in self.train_rows() if r.phase != "sft"]
        return max(0, min(starts)) if starts else 0

    # ------------------------------------------------------------------ probes
    def probe_table(self) -> list[dict[str, Any]]:
        """Rows of ``probe_table.jsonl`` (keys: :data:`PROBE_COLUMNS`)."""
        return list(self.iter_probe_table())

    def iter_probe_table(self) -> Iterator[dict[str, Any]]:
        p = self.path / PROBE_TABLE
        return read_jsonl(p) if p.is_file() else iter(())

    def append_probe_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        append_jsonl(self.path / PROBE_TABLE, [{k: r[k] for k in PROBE_COLUMNS if k in r} for r in rows])

    def initial_samples(self) -> list[dict[str, Any]] | None:
        """The saved ``initial_sample`` probe rows, or None before they were generated."""
        p = self.path / INITIAL_SAMPLES
        return list(read_jsonl(p)) if p.is_file() else None

    def write_initial_samples(self, rows: Sequence[Mapping[str, Any]]) -> None:
        atomic_write_jsonl(self.path / INITIAL_SAMPLES, rows)

    # ------------------------------------------------------------------ free-running generations
    @property
    def generations_path(self) -> Path:
        return self.path / GENERATIONS

    def generations(self) -> list[GenerationRow]:
        """Every saved free-running generation, in the order written (steps ascending)."""
        p = self.generations_path
        return [GenerationRow.from_json(r) for r in read_jsonl(p)] if p.is_file() else []

    def append_generations(self, rows: Sequence[GenerationRow]) -> None:
        """Add one evaluation's generations. Rows of a step already saved (an evaluation redone after a kill
        between this write and its metrics row) are replaced, never duplicated."""
        rows = list(rows)
        steps = {r.step for r in rows}
        p = self.generations_path
        if p.is_file() and any(int(r.get("step", -1)) in steps for r in read_jsonl(p, strict=False)):
            keep = [r for r in read_jsonl(p, strict=False) if int(r.get("step", -1)) not in steps]
            atomic_write_jsonl(p, keep + [r.to_json() for r in rows])
        else:
            append_jsonl(p, [r.to_json() for r in rows])

    def policy_samples(self) -> list[PolicySample] | None:
        """The starting policy's samples of the probe prompts, or None before they were drawn."""
        p = self.path / POLICY_SAMPLES
        if not p.is_file():
            return None
        out = []
        for lineno, row in read_jsonl_lines(p, torn_tail=False):  # written whole: a bad line is an error
            try:
                out.append(PolicySample.from_json(row))
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                raise LldynError(f"corrupt policy sample row ({type(err).__name__}: {err})", file=str(p), line=lineno,
                                 expected="the rows lldyn wrote (remove the file to draw the samples again)") from None
        return out

    def write_policy_samples(self, rows: Sequence[PolicySample]) -> Path:
        p = self.path / POLICY_SAMPLES
        atomic_write_jsonl(p, [r.to_json() for r in rows])
        return p

    # ------------------------------------------------------------------ training state besides checkpoints
    def reference_logps(self, phase_index: int) -> dict[str, tuple[float, float]] | None:
        """``id → (log π_ref(y+), log π_ref(y−))`` of a pairwise phase, or None when not computed yet."""
        p = self.path / reference_file(phase_index)
        if not p.is_file():
            return None
        return {r["id"]: (r["chosen"], r["rejected"]) for r in read_jsonl(p)}

    def write_reference_logps(self, phase_index: int, values: Mapping[str, tuple[float, float]]) -> None:
        atomic_write_jsonl(self.path / reference_file(phase_index),
                           [{"id": k, "chosen": c, "rejected": r} for k, (c, r) in values.items()])

    def on_policy_round_path(self, round_index: int) -> Path:
        return self.path / ON_POLICY / on_policy_file(round_index)

    def on_policy_round(self, round_index: int) -> tuple[list[PreferenceExample], int] | None:
        """The labelled pairs of on-policy round ``round_index`` and how many prompts it sampled (None: not saved)."""
        p = self.on_policy_round_path(round_index)
        if not p.is_file():
            return None
        rows = list(read_rows(p))
        pairs = [parse_preference_row(row, where, i, "on_policy") for i, (row, where) in enumerate(rows)]
        return pairs, int(rows[0][0].get("prompts_sampled", len(pairs))) if rows else 0

    def write_on_policy_round(self, round_index: int, pairs: Sequence[PreferenceExample], sampled_at_step: int,
                              prompts_sampled: int) -> Path:
        p = self.on_policy_round_path(round_index)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_jsonl(p, [{"id": x.id, "prompt": x.prompt, "chosen": x.chosen, "rejected": x.rejected,
                                "round": round_index, "sampled_at_step": sampled_at_step,
                                "prompts_sampled": prompts_sampled} for x in pairs])
        return p

    def grpo_step_path(self, step: int) -> Path:
        return self.path / GRPO / grpo_file(step)

    def grpo_step(self, step: int) -> list[GroupCompletion] | None:
        """The generation batch GRPO step ``step`` trained on (None: not saved)."""
        p = self.grpo_step_path(step)
        return [GroupCompletion.from_json(r) for r in read_jsonl(p)] if p.is_file() else None

    def grpo_steps(self) -> list[int]:
        """The steps whose GRPO generation batch is saved, in order."""
        folder = self.path / GRPO
        if not folder.is_dir():
            return []
        return sorted(int(p.name[len("step-"):-len(".jsonl")]) for p in folder.glob("step-*.jsonl"))

    def write_grpo_step(self, step: int, rows: Sequence[GroupCompletion]) -> Path:
        p = self.grpo_step_path(step)
        atomic_write_jsonl(p, [r.to_json() for r in rows])
        return p

    # ------------------------------------------------------------------ decomposition
    def decompose_rows(self) -> list[dict[str, Any]]:
        """Rows of ``decompose.jsonl`` (written by :class:`lldyn.decompose.llm.StepDecomposer`)."""
        return list(read_jsonl(self.decompose_path)) if self.decompose_path.is_file() else []

    def append_decompose_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        append_jsonl(self.decompose_path, [dict(r) for r in rows])

    def write_decompose_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        atomic_write_jsonl(self.decompose_path, rows)

    # ------------------------------------------------------------------ figures and other whole files
    def save_figure(self, fig: Any, name: str, **savefig: Any) -> Path:
        """Write a matplotlib figure as ``RUN/figures/<name>`` (atomically)."""
        return save_figure(fig, self.figures / name, **savefig)

    def write_json(self, name: str, value: Any) -> Path:
        path = self.path / name
        atomic_write_json(path, value)
        return path

    # ------------------------------------------------------------------ resume
    def truncate_after(self, step: int) -> None:
        """On resume from a checkpoint at ``step``: drop metric, probe, generation and decomposition rows logged after it
        (and a torn last line), rewriting each file atomically, and the GRPO generation batches of later steps,
        so a resumed run never duplicates rows."""
        for p in (self.metrics_path, self.path / PROBE_TABLE, self.decompose_path, self.generations_path):
            if p.is_file():
                keep = [r for r in read_jsonl(p, strict=False) if int(r.get("step", 0)) <= step]
                atomic_write_jsonl(p, keep)
        for later in [n for n in self.grpo_steps() if n > step]:
            self.grpo_step_path(later).unlink(missing_ok=True)
