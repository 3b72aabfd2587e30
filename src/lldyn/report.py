"""Figures and one self-contained ``report.html`` for one or more tracked runs.

Figures (matplotlib, Agg), in the style of the paper's Figures 3 and 4: one panel per probe family,
the mean of log π over the probe prompts against the step with the inter-quartile band, several runs
overlaid with labels from their ``config.json``; the same for the change since step 0; and the
squeeze signals (top-1 probability, entropy along y+ and y−). The HTML embeds every PNG as base64,
a table of each run's last-step mean change per family, example probes, for a decomposed run the
predicted-vs-actual and +/− split figures of :mod:`lldyn.decompose.plots`, for a run with free-running
greedy generations (the repeater) their degeneration curves and, for a few prompts, the generation at the
first and at the last evaluation side by side, any PNG another module put
in ``RUN/figures/`` (captioned with its file name) and any ``extra_sections`` a caller passes. A GRPO run
(policy samples, a reward) gets one more figure: the change of log π of the starting policy's correct and
incorrect samples, the mean training reward and the greedy answers' (and y*'s) accuracy per evaluation,
hatched where the LLD alarm fired (docs/grpo.md).

The report reads its input runs and writes only under its output directory (``OUT/figures``,
``OUT/report.html``).

Every piece of data set or model text that reaches the HTML goes through :func:`html.escape`.
"""
from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from lldyn.decompose.plots import plot_decomposition
from lldyn.errors import LldynError
from lldyn.io import atomic_write_text, read_jsonl, save_figure
from lldyn.probes import FAMILIES
from lldyn.rundir import FIGURES, PROBE_TABLE, REPORT, GenerationRow, RunDir, TrackSummary
from lldyn.squeeze import lld_intervals, squeeze_intervals

# matplotlib is imported inside the drawing functions: it is slow to import and only figures need it.

LOGP_FIGURE = "probe_logp.png"
DELTA_FIGURE = "probe_delta.png"
SIGNALS_FIGURE = "squeeze_signals.png"
SQUEEZE_FIGURE = "squeeze.png"
REPEATER_FIGURE = "repeater.png"
GRPO_FIGURE = "grpo.png"
OWN_FIGURES = (LOGP_FIGURE, DELTA_FIGURE, SIGNALS_FIGURE, SQUEEZE_FIGURE, REPEATER_FIGURE, GRPO_FIGURE)


@dataclass
class RunData:
    """What the report reads from one run directory."""

    run: RunDir
    label: str
    config: dict[str, Any]
    table: list[dict[str, Any]]
    summaries: list[TrackSummary]
    preference_start: int
    generations: list[GenerationRow]

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def steps(self) -> list[int]:
        return sorted({int(r["step"]) for r in self.table})

    @property
    def squeeze_intervals(self) -> list[tuple[int, int]]:
        """Step intervals in which the squeeze alarm fired (recorded, or recomputed from the signals)."""
        return squeeze_intervals(self.summaries, self.preference_start)

    @property
    def lld_intervals(self) -> list[tuple[int, int]]:
        """Step intervals in which the LLD alarm fired (GRPO runs; recorded, or recomputed from the signals)."""
        return lld_intervals(self.summaries) if self.is_grpo else []

    @property
    def is_grpo(self) -> bool:
        """Whether the run watched policy samples or recorded a training reward (a GRPO run)."""
        return any("logp_sample_correct" in s.signals or "reward" in s.signals for s in self.summaries)


def run_label(config: dict[str, Any], path: Path) -> str:
    """``label`` from the config, else its method/loss and learning rate, else the directory name."""
    if config.get("label"):
        return str(config["label"])
    kind = config.get("method") or config.get("loss") or config.get("kind")
    if isinstance(kind, dict):
        kind = kind.get("kind") or kind.get("name")
    lr = config.get("learning_rate", config.get("lr"))
    if isinstance(config.get("train"), dict):
        kind = kind or config["train"].get("method") or config["train"].get("loss")
        lr = lr if lr is not None else config["train"].get("learning_rate", config["train"].get("lr"))
    parts = [str(kind)] if kind else []
    if lr is not None:
        parts.append(f"lr={lr:g}" if isinstance(lr, (int, float)) else f"lr={lr}")
    return " ".join(parts + [f"({path.name})"]) if parts else path.name


def load_run(path: str | Path) -> RunData:
    run = RunDir(path)
    if not run.path.is_dir():
        raise LldynError("run directory not found", file=str(run.path), expected="a directory written by lldyn")
    config = run.config() if run.config_path.is_file() else {}
    table = run.probe_table()
    if not table:
        raise LldynError(f"no probe table ({PROBE_TABLE}) in the run directory", file=str(run.path),
                         expected="a run tracked with probes (lldyn train --probes, or LearningDynamicsCallback(out=...))")
    return RunData(run, run_label(config, run.path), config, table, run.probe_summaries(), run.preference_start(),
                   run.generations())


def _quantile(sorted_vals: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of an already sorted list."""
    if not sorted_vals:
        return float("nan")
    pos = q * (len(sorted_vals) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def family_curves(table: Iterable[dict[str, Any]], delta: bool = False
                  ) -> dict[str, tuple[list[int], list[float], list[float], list[float]]]:
    """Per family: (steps, mean, 25th percentile, 75th percentile) of log π over prompts.

    With ``delta`` the values are log π(step) − log π(first step) per (prompt, family, sample) first (a policy
    sample family has several rows per prompt, told apart by ``sample``).
    """
    rows = sorted(table, key=lambda r: int(r["step"]))
    base: dict[tuple[str, str, Any], float] = {}
    values: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        key = (str(r["prompt_id"]), r["family"], r.get("sample"))
        base.setdefault(key, r["logp"])
        v = r["logp"] - base[key] if delta else r["logp"]
        values.setdefault(r["family"], {}).setdefault(int(r["step"]), []).append(v)
    out = {}
    for fam, by_step in values.items():
        steps = sorted(by_step)
        vals = [sorted(by_step[s]) for s in steps]
        out[fam] = (steps, [sum(v) / len(v) for v in vals], [_quantile(v, .25) for v in vals],
                    [_quantile(v, .75) for v in vals])
    return out


def _families(runs: Sequence[RunData]) -> list[str]:
    present = {r["family"] for run in runs for r in run.table}
    return [f for f in FAMILIES if f in present] + sorted(present - set(FAMILIES))


def _plot_summaries(ax: Any, runs: Sequence[Any], value: Callable[[Any], float | None]) -> None:
    """One line per run: ``value(summary)`` over the run's evaluation steps (None: no point there)."""
    for i, run in enumerate(runs):
        pts = sorted((s.step, v) for s in run.summaries if (v := value(s)) is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=f"C{i % 10}", label=run.label, marker=".")


def _step_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers


def _shade_squeeze(ax: Any, runs: Sequence[RunData]) -> None:
    """Hatch the steps where a run's squeeze alarm fired, in that run's colour."""
    for i, run in enumerate(runs):
        for start, end in run.squeeze_intervals:
            ax.axvspan(start, end, facecolor=f"C{i % 10}", alpha=0.08, hatch="//", edgecolor=f"C{i % 10}", lw=0,
                       label=f"squeeze alarm ({run.label})")


def _shade_lld(ax: Any, runs: Sequence[RunData]) -> None:
    """Hatch the steps where a run's LLD alarm fired, in that run's colour."""
    for i, run in enumerate(runs):
        for start, end in run.lld_intervals:
            ax.axvspan(start, end, facecolor=f"C{i % 10}", alpha=0.08, hatch="\\\\", edgecolor=f"C{i % 10}", lw=0,
                       label=f"LLD alarm ({run.label})")


def _save(fig: Any, path: str | Path) -> Path:
    return save_figure(fig, path, dpi=110)


def plot_families(runs: Sequence[RunData], path: str | Path, delta: bool = False) -> Path:
    """One panel per family: mean (line) and inter-quartile band over steps, one colour per run."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    families = _families(runs)
    ncols = min(4, len(families))
    nrows = math.ceil(len(families) / ncols)
    fig = Figure(figsize=(3.4 * ncols, 2.6 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    curves = [family_curves(run.table, delta) for run in runs]
    for ax, fam in zip(axes.flat, families):
        _shade_squeeze(ax, runs)
        for i, (run, c) in enumerate(zip(runs, curves)):
            if fam not in c:
                continue
            steps, mean, lo, hi = c[fam]
            color = f"C{i % 10}"
            ax.plot(steps, mean, color=color, label=run.label, lw=1.6)
            ax.fill_between(steps, lo, hi, color=color, alpha=0.2, lw=0)
        if delta:
            ax.axhline(0, color="0.6", lw=0.8, ls="--")
        ax.set_title(fam, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    for ax in list(axes.flat)[len(families):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("Δ log π since step 0" if delta else "log π(y | x)", fontsize=8)
    by_label = dict(zip(*reversed(axes.flat[0].get_legend_handles_labels())))  # one entry per label
    labels, handles = list(by_label), list(by_label.values())
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.suptitle("change of log π since step 0 (mean, IQR band)" if delta else "log π of each probe family "
                 "(mean over prompts, IQR band)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 0.96))
    return _save(fig, path)


def plot_signals(runs: Sequence[RunData], path: str | Path) -> Path | None:
    """Squeeze signals over steps from ``metrics.jsonl`` (None when no run has them)."""
    from matplotlib.figure import Figure

    names = [("top1_chosen", "mean top-1 prob along y+"), ("top1_rejected", "mean top-1 prob along y−"),
             ("entropy_chosen", "entropy along y+ (nats)"), ("entropy_rejected", "entropy along y− (nats)")]
    if not any(run.summaries for run in runs):
        return None
    fig = Figure(figsize=(13, 2.8))
    axes = fig.subplots(1, 4)
    for ax, (key, title) in zip(axes, names):
        _shade_squeeze(ax, runs)
        _plot_summaries(ax, runs, lambda s: s.signals.get(key))
        ax.set_title(title, fontsize=9)
        _step_axis(ax)
    by_label = dict(zip(*reversed(axes[0].get_legend_handles_labels())))  # one entry per label
    axes[0].legend(list(by_label.values()), list(by_label), fontsize=7, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def plot_squeeze(runs: Sequence[RunData], path: str | Path) -> Path | None:
    """The squeezing effect at a glance (paper Fig. 4): change since step 0 of log π(y+), log π(y−)
    and log π(y*), and the top-1 probability along y+, with the alarm's intervals hatched.
    None when no run tracked all three families."""
    from matplotlib.figure import Figure

    wanted = ("chosen", "rejected", "argmax")
    curves = [family_curves(run.table, delta=True) for run in runs]
    if not any(all(f in c for f in wanted) for c in curves):
        return None
    titles = {"chosen": "Δ log π(y+)", "rejected": "Δ log π(y−)", "argmax": "Δ log π(y*)"}
    fig = Figure(figsize=(13, 2.9))
    axes = fig.subplots(1, 4)
    for ax, fam in zip(axes, wanted):
        _shade_squeeze(ax, runs)
        for i, (run, c) in enumerate(zip(runs, curves)):
            if fam in c:
                steps, mean, lo, hi = c[fam]
                ax.plot(steps, mean, color=f"C{i % 10}", label=run.label, lw=1.6, marker=".")
                ax.fill_between(steps, lo, hi, color=f"C{i % 10}", alpha=0.2, lw=0)
        ax.axhline(0, color="0.6", lw=0.8, ls="--")
        ax.set_title(titles[fam] + " since step 0 (nats)", fontsize=9)
    ax = axes[3]
    _shade_squeeze(ax, runs)
    _plot_summaries(ax, runs, lambda s: s.signals.get("top1_chosen"))
    ax.set_title("mean top-1 probability along y+", fontsize=9)
    for ax in axes:
        _step_axis(ax)
    by_label = dict(zip(*reversed(axes[0].get_legend_handles_labels())))
    fig.legend(list(by_label.values()), list(by_label), loc="lower center", ncol=min(4, len(by_label)), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return _save(fig, path)


REPEATER_PANELS = (("distinct_2", "distinct-2 (corpus)"), ("repeated_4gram", "repeated 4-gram rate"),
                   ("loop_share", "share caught in a loop"), ("mean_length", "mean length (tokens)"),
                   ("eos_share", "share that reached EOS"), ("mean_logp", "mean log π of the generation"))


def plot_repeater(runs: Sequence[RunData], path: str | Path) -> Path | None:
    """The repeater: the summary of the free-running greedy generations over steps (``TrackSummary.generation``),
    one panel per measure, hatched where the squeeze alarm fired. None when no run generated."""
    from matplotlib.figure import Figure

    if not any(s.generation for run in runs for s in run.summaries):
        return None
    fig = Figure(figsize=(13, 5.2))
    axes = fig.subplots(2, 3)
    for ax, (key, title) in zip(axes.flat, REPEATER_PANELS):
        _shade_squeeze(ax, runs)
        _plot_summaries(ax, runs, lambda s: s.generation.get(key))
        ax.set_title(title, fontsize=9)
        _step_axis(ax)
    by_label = dict(zip(*reversed(axes.flat[0].get_legend_handles_labels())))
    fig.legend(list(by_label.values()), list(by_label), loc="lower center", ncol=min(4, len(by_label)), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path)


def _generation_cell(row: GenerationRow) -> str:
    flags = [f"{row.n_tokens}/{row.budget} tokens", "EOS" if row.eos else "no EOS",
             f"in a loop (period {row.loop_period})" if row.in_loop else "",
             f"repeated 4-grams {row.repeated_4gram:.2f}", f"log π {row.logp:.1f}"]
    return (f"<td><pre class='gen'>{html.escape(row.text)}</pre>"
            f"<small>{html.escape(', '.join(f for f in flags if f))}</small></td>")


def generation_pairs(run: RunData, n_prompts: int = 3) -> str:
    """For the first ``n_prompts`` generated prompts: the free-running greedy generation at the run's first and
    at its last generating evaluation, side by side (every text escaped). Empty when the run has none."""
    rows = run.generations
    if not rows:
        return ""
    first, last = min(r.step for r in rows), max(r.step for r in rows)
    at = {(r.step, r.prompt_id): r for r in rows}
    prompt_ids = list(dict.fromkeys(r.prompt_id for r in rows if r.step == first))[:n_prompts]
    body = ""
    for pid in prompt_ids:
        cells = "".join(_generation_cell(at[(step, pid)]) if (step, pid) in at else "<td>–</td>"
                        for step in (first, last))
        body += f"<tr><th>{html.escape(pid)}</th>{cells}</tr>"
    return (f"<table class='probes'><tr><th>prompt</th><th>step {first}</th><th>step {last}</th></tr>{body}</table>")


def repeater_section(runs: Sequence[RunData], figures: Path) -> tuple[str, str] | None:
    """The repeater (paper Sec. 4.2): what the model says when it runs free, over training (None: no run
    generated)."""
    figure = plot_repeater(runs, figures / REPEATER_FIGURE)
    if figure is None:
        return None
    parts = [_img(figure, "free-running greedy generations of the first probe prompts: distinct-2, repeated "
                          "4-grams, share in a loop, length, EOS, log π (docs/tracking.md)")]
    for run in runs:
        pairs = generation_pairs(run)
        if pairs:
            parts.append(f"<h3>{html.escape(run.label)}: first vs last generation</h3>{pairs}")
    return ("Greedy generations over training (the repeater)", "".join(parts))


def plot_grpo(runs: Sequence[RunData], path: str | Path) -> Path | None:
    """GRPO at a glance (Deng, Ren et al. 2025): change since step 0 of log π of the starting policy's correct
    samples (solid) and incorrect samples (dashed), mean and IQR band; the mean training reward per evaluation;
    the accuracy against the gold answers of the greedy answers (solid) and of the teacher-forced y* (dotted);
    hatched where the LLD alarm fired. None when no run is a GRPO run."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    grpo = [run for run in runs if run.is_grpo]
    if not grpo:
        return None
    fig = Figure(figsize=(13, 3.0))
    axes = fig.subplots(1, 3)
    for ax in axes:
        _shade_lld(ax, grpo)
    for i, run in enumerate(grpo):
        color = f"C{runs.index(run) % 10}"
        curves = family_curves(run.table, delta=True)
        for fam, style in (("sample_correct", "-"), ("sample_incorrect", "--")):
            if fam in curves:
                steps, mean, lo, hi = curves[fam]
                ax = axes[0]
                ax.plot(steps, mean, color=color, ls=style, marker=".", lw=1.6,
                        label=f"{run.label}: {fam.replace('sample_', '')}")
                ax.fill_between(steps, lo, hi, color=color, alpha=0.15, lw=0)
        for ax, key, style in ((axes[1], "reward", "-"), (axes[2], "accuracy_greedy", "-"),
                               (axes[2], "accuracy_argmax", ":")):
            pts = sorted((s.step, s.signals[key]) for s in run.summaries
                         if s.signals.get(key) is not None and not math.isnan(s.signals[key]))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, ls=style, marker=".", label=run.label)
    axes[0].axhline(0, color="0.6", lw=0.8, ls="--")
    axes[0].set_title("Δ log π of the starting policy's samples\nsince step 0 (nats): correct —, incorrect - -",
                      fontsize=9)
    axes[1].set_title("mean training reward since the previous evaluation", fontsize=9)
    axes[2].set_title("share stating the gold answer:\ngreedy answer —, teacher-forced y* ···", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_label = dict(zip(*reversed(axes[0].get_legend_handles_labels())))
    if by_label:
        fig.legend(list(by_label.values()), list(by_label), loc="lower center", ncol=min(4, len(by_label)),
                   fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12 if by_label else 0, 1, 1))
    return _save(fig, path)


def lld_summary(runs: Sequence[RunData]) -> str:
    """One line per GRPO run: the step intervals of its LLD alarm (hatched in its figure), or none."""
    items = []
    for run in runs:
        if not run.is_grpo:
            continue
        spans = run.lld_intervals
        text = (", ".join(f"steps {a}–{b}" for a, b in spans) + " (hatched in the GRPO figure; see docs/grpo.md)"
                if spans else "did not fire")
        items.append(f"<li>{html.escape(run.label)}: LLD alarm {text}</li>")
    return f"<ul class='lld'>{''.join(items)}</ul>" if items else ""


HELD_OUT_FIGURE = "held_out_dpo.png"
HELD_OUT_KINDS = (("chosen", "y+"), ("rejected", "y−"), ("argmax", "y*"))


def plot_held_out(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Per run, the change of log π(y+), log π(y−) and log π(y*) of held-out prompts over a DPO phase:
    mean (bar) and inter-quartile range (whiskers). ``rows``: ``{"run", "kind", "change"}`` (as written by
    ``lldyn reproduce``: :func:`lldyn.commands.reproduce.held_out_dpo_changes`)."""
    from matplotlib.figure import Figure

    runs = list(dict.fromkeys(r["run"] for r in rows))
    fig = Figure(figsize=(1.6 + 1.7 * len(HELD_OUT_KINDS), 2.9))
    ax = fig.subplots()
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        for k, (kind, _) in enumerate(HELD_OUT_KINDS):
            vals = sorted(r["change"] for r in rows if r["run"] == run and r["kind"] == kind)
            if not vals:
                continue
            mean, lo, hi = sum(vals) / len(vals), _quantile(vals, 0.25), _quantile(vals, 0.75)
            x = k + (i - (len(runs) - 1) / 2) * width
            ax.bar(x, mean, width * 0.9, color=f"C{i % 10}", label=run if k == 0 else None)
            ax.errorbar(x, mean, yerr=[[max(0.0, mean - lo)], [max(0.0, hi - mean)]], color="0.2", capsize=3, lw=1)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xticks(range(len(HELD_OUT_KINDS)), [f"Δ log π({name})" for _, name in HELD_OUT_KINDS], fontsize=8)
    ax.set_ylabel("nats, over the DPO phase", fontsize=8)
    ax.set_title("held-out prompts (never trained on): mean and IQR", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def held_out_section(rows: Sequence[dict[str, Any]], figures: str | Path) -> tuple[str, str]:
    """A report section (title, html) for held-out prompts over a DPO phase: the figure and a table."""
    figure = plot_held_out(rows, Path(figures) / HELD_OUT_FIGURE)
    runs = list(dict.fromkeys(r["run"] for r in rows))
    head = "".join(f"<th>Δ log π({html.escape(name)})</th>" for _, name in HELD_OUT_KINDS)
    body = ""
    for run in runs:
        cells = ""
        for kind, _ in HELD_OUT_KINDS:
            vals = [r["change"] for r in rows if r["run"] == run and r["kind"] == kind]
            cells += (f"<td>{_fmt(sum(vals) / len(vals))} ({sum(v > 0 for v in vals)}/{len(vals)} up)</td>"
                      if vals else "<td>–</td>")
        body += f"<tr><td>{html.escape(run)}</td>{cells}</tr>"
    return ("Held-out prompts over the DPO phase",
            _img(figure, "change of log π over the DPO phase on prompts no run trained on")
            + f"<table><tr><th>run</th>{head}</tr>{body}</table>")


# --------------------------------------------------------------------------- HTML


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _fmt(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.2f}"


def last_step_table(runs: Sequence[RunData]) -> str:
    """HTML table: per family, each run's mean change of log π from its first to its last step."""
    families = _families(runs)
    head = "".join(f"<th>{html.escape(r.label)}<br><small>step {r.steps[-1]}</small></th>" for r in runs)
    curves = [family_curves(r.table, delta=True) for r in runs]
    body = []
    for fam in families:
        cells = "".join(f"<td>{_fmt(c[fam][1][-1] if fam in c else None)}</td>" for c in curves)
        body.append(f"<tr><th>{html.escape(fam)}</th>{cells}</tr>")
    return f"<table><tr><th>family</th>{head}</tr>{''.join(body)}</table>"


def squeeze_summary(runs: Sequence[RunData]) -> str:
    """One line per run: the step intervals of its squeeze alarm (hatched in the figures), or none."""
    items = []
    for run in runs:
        spans = run.squeeze_intervals
        text = (", ".join(f"steps {a}–{b}" for a, b in spans) + " (hatched in the figures; see docs/squeezing.md)"
                if spans else "did not fire")
        items.append(f"<li>{html.escape(run.label)}: squeeze alarm {text}</li>")
    return f"<ul class='squeeze'>{''.join(items)}</ul>"


def probe_examples(run: RunData, n_prompts: int = 2) -> str:
    """The probe responses of the first prompts, and their y* at the last step (all text escaped)."""
    if not run.run.probes_path.is_file():
        return ""
    probes = list(read_jsonl(run.run.probes_path))
    prompt_ids = list(dict.fromkeys(str(p["prompt_id"]) for p in probes))[:n_prompts]
    last = run.steps[-1]
    argmax = {str(r["prompt_id"]): r.get("text") for r in run.table if r["step"] == last and r["family"] == "argmax"}
    out = []
    for pid in prompt_ids:
        rows = [(p["family"], p["response"]) for p in probes if str(p["prompt_id"]) == pid]
        if argmax.get(pid) is not None:
            rows.append((f"argmax (step {last})", argmax[pid]))
        prompt = next(p["prompt"] for p in probes if str(p["prompt_id"]) == pid)
        prompt_text = prompt if isinstance(prompt, str) else " / ".join(f"{m['role']}: {m['content']}" for m in prompt)
        cells = "".join(f"<tr><th>{html.escape(f)}</th><td>{html.escape(str(t))}</td></tr>" for f, t in rows)
        out.append(f"<h3>{html.escape(pid)}: {html.escape(prompt_text)}</h3><table class='probes'>{cells}</table>")
    return "".join(out)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
img{max-width:100%}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;font-size:.9em;vertical-align:top}figure{margin:1em 0}figcaption{color:#555;font-size:.85em}
table.probes td{max-width:800px}pre.gen{white-space:pre-wrap;margin:0;font-family:inherit}"""


def write_report(runs: Sequence[str | Path], out: str | Path | None = None,
                 extra_sections: Sequence[tuple[str, str]] = (), title: str = "lldyn learning dynamics report"
                 ) -> Path:
    """Draw the figures into ``OUT/figures`` and write ``OUT/report.html`` (OUT defaults to the first run);
    nothing is written anywhere else.

    Args:
        runs: run directories (each with a probe table).
        extra_sections: ``(title, html)`` pairs appended as sections; ``title`` is escaped, ``html`` is
            inserted as given (the caller escapes any data text in it).
    Returns the path of ``report.html``.
    """
    if not runs:
        raise LldynError("no run directories given", field="RUN", expected="one or more run directories")
    data = [load_run(r) for r in runs]
    seen: dict[str, int] = {}
    for d in data:  # labels must tell runs apart in legends
        seen[d.label] = seen.get(d.label, 0) + 1
    for d in data:
        if seen[d.label] > 1:
            d.label = f"{d.label} [{d.path}]"
    out_dir = Path(out) if out is not None else data[0].path
    figures = out_dir / FIGURES
    drawn = [(plot_families(data, figures / LOGP_FIGURE), "log π per probe family: mean over prompts, "
                                                        "inter-quartile band (paper Fig. 3/4 style)"),
             (plot_families(data, figures / DELTA_FIGURE, delta=True), "change of log π since step 0")]
    squeeze = plot_squeeze(data, figures / SQUEEZE_FIGURE)
    if squeeze is not None:
        drawn.insert(0, (squeeze, "the squeezing effect at a glance: y+, y− and the greedy y* (mean, IQR band), and the "
                                  "top-1 probability; hatched where the squeeze alarm fired"))
    grpo = plot_grpo(data, figures / GRPO_FIGURE)
    if grpo is not None:
        drawn.insert(0, (grpo, "GRPO: the starting policy's correct and incorrect samples' log π (mean, IQR band), the "
                               "training reward and the greedy answers' accuracy; hatched where the LLD alarm fired"))
    sig = plot_signals(data, figures / SIGNALS_FIGURE)
    if sig is not None:
        drawn.append((sig, "squeeze signals: top-1 probability and entropy along y+ and y− positions"))
    sections = [("Probe families over training", squeeze_summary(data) + lld_summary(data)
                 + "".join(_img(p, c) for p, c in drawn)),
                ("Mean change of log π at the last step", last_step_table(data))]
    repeater = repeater_section(data, figures)
    if repeater is not None:
        sections.append(repeater)
    sections += decomposition_sections(data, figures)
    own = {p.resolve() for p, _ in drawn}
    for d in data:
        extra = [p for p in sorted(d.run.figures.glob("*.png")) if p.resolve() not in own
                 and p.name not in OWN_FIGURES and not p.name.startswith("decompose-")]
        if extra:
            sections.append((f"More figures of {d.label}", "".join(_img(p, p.name) for p in extra)))
    sections += list(extra_sections)
    for d in data:
        ex = probe_examples(d)
        if ex:
            sections.append((f"Example probes of {d.label}", ex))
    runs_html = "".join(f"<li>{html.escape(d.label)}: <code>{html.escape(str(d.path))}</code>, steps "
                        f"{d.steps[0]}–{d.steps[-1]}, {len({r['prompt_id'] for r in d.table})} prompts</li>" for d in data)
    body = "".join(f"<section><h2>{html.escape(t)}</h2>{h}</section>" for t, h in sections)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><ul>{runs_html}</ul>{body}</body></html>")
    path = out_dir / REPORT
    atomic_write_text(path, page)
    return path


def decomposition_sections(runs: Sequence[RunData], figures: Path) -> list[tuple[str, str]]:
    """For each decomposed run: predicted vs actual and the +/− split, drawn into the report's own figures."""
    sections = []
    for i, d in enumerate(runs):
        drawn = plot_decomposition(d.run.decompose_rows(), figures, prefix=f"decompose-{i}")
        if drawn:
            sections.append((f"Decomposition of {d.label}", "".join(_img(p, p.name) for p in drawn)))
    return sections
