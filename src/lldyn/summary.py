"""What moved: per-family change of mean log π between two probe evaluations of a run, in words.

Used by ``lldyn train``, ``lldyn demo`` and ``lldyn reproduce`` to print one line per phase, e.g.
``DPO (steps 40→80): chosen −3.10, rejected −20.40, argmax +2.20 nats; top-1 prob +0.060 — squeezing …``.
The words say what moved; a paper effect is named only when the phase's method and the pattern both fit
it (SFT's lift of y+ and other prompts' answers, Sec. 4.1; the squeezing effect of DPO-family losses,
Sec. 4.2; GRPO's lazy likelihood displacement, Deng, Ren et al. 2025: the reward rises while the starting
policy's correct samples become less likely). A GRPO phase also reports the change of its mean training
reward (first evaluation window to last) and of the greedy answers' and y*'s accuracy. When a phase's
free-running greedy generations (``--generate-prompts``) became more repetitive, a second line says so (the
repeater, Sec. 4.2), e.g. ``DPO (steps 30→60): greedy generations more repetitive — repeated 4-grams
0.05→0.41, in a loop 0/8→3/8, distinct-2 0.81→0.37, …``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, NamedTuple

from lldyn.rundir import RunDir, TrackSummary

HEADLINE = ("chosen", "rejected", "argmax", "other_chosen", "chosen_rephrase_semantic", "random_sentence",
            "sample_correct", "sample_incorrect")
PREFERENCE_PHASES = ("dpo", "ipo", "slic", "simpo")


class PhaseChange(NamedTuple):
    """Mean change over probe prompts of log π per family between ``start`` and ``end`` (nats)."""

    phase: str
    start: int
    end: int
    delta: dict[str, float]
    top1_delta: float
    signal_delta: dict[str, float] = {}  # GRPO: ``reward`` (first window → last), ``accuracy_argmax``


def _phase_spans(run: RunDir) -> list[tuple[str, int, int]]:
    """``(phase, step before its first step, its last step)`` of each training phase, in order."""
    spans: list[tuple[str, int, int]] = []
    for r in run.train_rows():
        if spans and spans[-1][0] == r.phase:
            spans[-1] = (r.phase, spans[-1][1], r.step)
        else:
            spans.append((r.phase, r.step - 1, r.step))
    return spans


def _around(evaluations: dict[int, TrackSummary], first: int, last: int
            ) -> tuple[TrackSummary, TrackSummary] | None:
    """The last evaluation at or before ``first`` and the last one in ``(first, last]`` (None: either missing)."""
    starts = [s for s in evaluations if s <= first]
    ends = [s for s in evaluations if first < s <= last]
    if not starts or not ends:
        return None
    return evaluations[max(starts)], evaluations[max(ends)]


def phase_changes(run_dir: str | Path) -> list[PhaseChange]:
    """One :class:`PhaseChange` per training phase of a run (from its probe evaluations).

    A phase spans from the last probe evaluation before its first step to the last one at or
    before its last step.
    """
    run = RunDir(run_dir)
    probes = {s.step: s for s in run.probe_summaries()}
    out = []
    for name, first, last in _phase_spans(run):
        pair = _around(probes, first, last)
        if pair is None:
            continue
        a, b = pair
        delta = {f: b.family_mean[f] - a.family_mean[f] for f in b.family_mean if f in a.family_mean}
        out.append(PhaseChange(name, a.step, b.step, delta, _top1(b) - _top1(a),
                               _signal_delta([probes[s] for s in sorted(probes) if a.step <= s <= b.step])))
    return out


def _signal_delta(evals: list[TrackSummary]) -> dict[str, float]:
    """Change of the GRPO signals over a phase's evaluations: ``reward`` from the first evaluation that has one
    (the first window) to the last, ``accuracy_argmax`` from the first to the last."""
    out = {}
    rewards = [e.signals["reward"] for e in evals if e.signals.get("reward") is not None]
    if len(rewards) >= 2:
        out["reward"] = rewards[-1] - rewards[0]
    for key in ("accuracy_greedy", "accuracy_argmax"):
        if evals and all(e.signals.get(key) is not None for e in (evals[0], evals[-1])):
            out[key] = evals[-1].signals[key] - evals[0].signals[key]
    return out


def _top1(summary: TrackSummary) -> float:
    vals = [v for v in (summary.signals.get("top1_chosen"), summary.signals.get("top1_rejected")) if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def verdict(change: PhaseChange, tol: float = 0.05) -> str:
    """A few words on what the change shows (moves under ``tol`` nats count as none); the paper's effects are
    named only for the phases whose method produces them."""
    d = change.delta
    up, down = (lambda f: d.get(f, 0.0) > tol), (lambda f: d.get(f, 0.0) < -tol)
    if not any(up(f) or down(f) for f in d):
        return f"nothing moved by more than {tol} nats"
    if change.phase == "sft":
        if up("chosen") and up("other_chosen"):
            return "SFT pulls up y+ and other prompts' answers (y_j+)"
        return "y+ up" if up("chosen") else "y+ did not rise"
    if change.phase in PREFERENCE_PHASES:
        if down("chosen") and down("rejected") and up("argmax"):
            return "squeezing: y+ and y− fall while the argmax y* rises"
        if down("rejected") and up("argmax"):
            return "y− pushed down, mass moves to the argmax y* (y+ still rising: its own positive gradient wins)"
        if down("chosen") and down("rejected"):
            return "y+ and y− both fall; y* did not rise"
        if up("chosen") and up("rejected"):
            return "y+ and y− both rose (no squeezing yet)"
        return "no squeezing signature"
    if change.phase == "grpo" and "sample_correct" in d:
        reward = change.signal_delta.get("reward")
        if reward is not None and reward > 0 and down("sample_correct"):
            return "lazy likelihood displacement: the reward rose while the correct samples' log π fell"
        if reward is not None and reward > 0 and up("sample_correct"):
            return "the reward rose and the correct samples' log π rose with it"
        if reward is not None and reward > 0:
            return "the reward rose while the correct samples' log π barely moved"
        return "the reward did not rise" if reward is not None else _moves(d, up, down)
    return _moves(d, up, down)


def _moves(d: dict[str, float], up, down) -> str:
    rose = [f for f in ("chosen", "rejected", "argmax") if up(f)]
    fell = [f for f in ("chosen", "rejected", "argmax") if down(f)]
    parts = ([" and ".join(rose) + " rose"] if rose else []) + ([" and ".join(fell) + " fell"] if fell else [])
    return "; ".join(parts) or "the headline families did not move"


def describe(change: PhaseChange, families: tuple[str, ...] = HEADLINE) -> str:
    """``DPO (steps 30→60): chosen −3.10, rejected −20.40, argmax +2.20 nats — squeezing …``."""
    parts = [f"{f} {change.delta[f]:+.2f}" for f in families if f in change.delta]
    names = {"reward": "reward", "accuracy_greedy": "greedy accuracy", "accuracy_argmax": "y* accuracy"}
    signals = "".join(f"; {names[k]} {v:+.3f}" for k, v in change.signal_delta.items() if k in names)
    return (f"{change.phase.upper()} (steps {change.start}→{change.end}): " + ", ".join(parts)
            + f" nats; top-1 prob {change.top1_delta:+.3f}{signals} — {verdict(change)}")


class RepetitionChange(NamedTuple):
    """The summary of a phase's free-running greedy generations (``TrackSummary.generation``) at its first and
    last evaluation that generated: ``before`` and ``after`` hold ``distinct_2``, ``repeated_4gram``,
    ``loop_share``, ``mean_length``, ``eos_share``, ``n`` (:data:`lldyn.tracking.GENERATION_KEYS`)."""

    phase: str
    start: int
    end: int
    before: dict[str, float]
    after: dict[str, float]

    def rose(self, tol: float = 0.05) -> bool:
        """Repetition rose: more generations caught in a loop, or the repeated-4-gram rate up by more than
        ``tol`` (a rate in [0, 1])."""
        return (self.after["loop_share"] > self.before["loop_share"]
                or self.after["repeated_4gram"] - self.before["repeated_4gram"] > tol)


def repetition_changes(run_dir: str | Path) -> list[RepetitionChange]:
    """One :class:`RepetitionChange` per training phase whose evaluations generated before and in it."""
    run = RunDir(run_dir)
    generated = {s.step: s for s in run.probe_summaries() if s.generation}
    out = []
    for name, first, last in _phase_spans(run):
        pair = _around(generated, first, last)
        if pair is not None:
            a, b = pair
            out.append(RepetitionChange(name, a.step, b.step, dict(a.generation), dict(b.generation)))
    return out


def describe_repetition(change: RepetitionChange) -> str:
    """``DPO (steps 30→60): greedy generations more repetitive — repeated 4-grams 0.05→0.41, …``."""
    a, b = change.before, change.after
    n_a, n_b = int(a.get("n", 0)), int(b.get("n", 0))
    return (f"{change.phase.upper()} (steps {change.start}→{change.end}): greedy generations more repetitive — "
            f"repeated 4-grams {a['repeated_4gram']:.2f}→{b['repeated_4gram']:.2f}, in a loop "
            f"{round(a['loop_share'] * n_a)}/{n_a}→{round(b['loop_share'] * n_b)}/{n_b}, distinct-2 "
            f"{a['distinct_2']:.2f}→{b['distinct_2']:.2f}, mean length {a['mean_length']:.0f}→{b['mean_length']:.0f}"
            f" tokens, EOS reached {round(a['eos_share'] * n_a)}/{n_a}→{round(b['eos_share'] * n_b)}/{n_b}"
            " (the repeater, paper Sec. 4.2)")


WHAT_MOVED = "What moved (mean over probe prompts, log π in nats):"


def what_moved(run_dirs: Iterable[str | Path], tagged: bool = False) -> list[str]:
    """:func:`describe` of every phase of each run in turn, after the run's folder name in brackets when
    ``tagged`` (for several runs whose phases share names); after a phase whose free-running generations
    became more repetitive (:meth:`RepetitionChange.rose`), :func:`describe_repetition` of it."""
    lines = []
    for run_dir in run_dirs:
        tag = f"[{Path(run_dir).name}] " if tagged else ""
        repeated = {(c.phase, c.end): c for c in repetition_changes(run_dir) if c.rose()}
        for change in phase_changes(run_dir):
            lines.append(tag + describe(change))
            rep = repeated.pop((change.phase, change.end), None)
            if rep is not None:
                lines.append(tag + describe_repetition(rep))
        lines += [tag + describe_repetition(rep) for rep in repeated.values()]  # generated at other steps
    return lines
