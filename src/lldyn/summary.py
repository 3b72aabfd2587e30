"""What moved: per-family change of mean log π between two probe evaluations of a run, in words.

Used by ``lldyn train`` and ``lldyn demo`` to print one line per phase, e.g.
``DPO (steps 40→80): chosen −3.1, rejected −20.4, argmax +2.2 nats — squeezing``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from lldyn.rundir import RunDir

HEADLINE = ("chosen", "rejected", "argmax", "other_chosen", "chosen_rephrase_semantic", "random_sentence")


class PhaseChange(NamedTuple):
    """Mean change over probe prompts of log π per family between ``start`` and ``end`` (nats)."""

    phase: str
    start: int
    end: int
    delta: dict[str, float]
    top1_delta: float


def _probe_rows(run: RunDir) -> dict[int, dict[str, Any]]:
    return {int(r["step"]): r for r in run.metrics() if r.get("event") == "probes"}


def phase_changes(run_dir: str | Path) -> list[PhaseChange]:
    """One :class:`PhaseChange` per training phase of a run (from the tracker's rows in metrics.jsonl).

    A phase spans from the last probe evaluation before its first step to the last one at or
    before its last step.
    """
    run = RunDir(run_dir)
    rows = run.metrics()
    probes = _probe_rows(run)
    spans: list[tuple[str, int, int]] = []
    for r in rows:
        if r.get("event") != "train":
            continue
        name, step = str(r.get("phase", "train")), int(r["step"])
        if spans and spans[-1][0] == name:
            spans[-1] = (name, spans[-1][1], step)
        else:
            spans.append((name, step - 1, step))
    out = []
    for name, first, last in spans:
        starts = [s for s in probes if s <= first]
        ends = [s for s in probes if first < s <= last]
        if not starts or not ends:
            continue
        a, b = probes[max(starts)], probes[max(ends)]
        fams = [k[len("family_mean/"):] for k in b if k.startswith("family_mean/") and k in a]
        delta = {f: b[f"family_mean/{f}"] - a[f"family_mean/{f}"] for f in fams}
        top1 = _top1(b) - _top1(a)
        out.append(PhaseChange(name, max(starts), max(ends), delta, top1))
    return out


def _top1(row: dict[str, Any]) -> float:
    vals = [row.get("signal/top1_chosen"), row.get("signal/top1_rejected")]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def verdict(change: PhaseChange, tol: float = 0.05) -> str:
    """A few words on what the change shows, in the paper's terms (moves under ``tol`` nats count as none)."""
    d = change.delta
    up, down = (lambda f: d.get(f, 0.0) > tol), (lambda f: d.get(f, 0.0) < -tol)
    if change.phase == "sft" or ("rejected" in d and up("rejected") and up("chosen")):
        if up("chosen") and up("other_chosen"):
            return "SFT pulls up y+ and other prompts' answers (y_j+)"
        return "y+ up" if up("chosen") else "y+ did not rise"
    if down("chosen") and down("rejected") and up("argmax"):
        return "squeezing: y+ and y− fall while the argmax y* rises"
    if down("rejected") and up("argmax"):
        return "y− pushed down, mass moves to the argmax y* (y+ still rising: its own positive gradient wins)"
    if down("chosen") and down("rejected"):
        return "y+ and y− both fall; y* did not rise"
    if not any(up(f) or down(f) for f in d):
        return f"nothing moved by more than {tol} nats"
    return "no squeezing signature"


def describe(change: PhaseChange, families: tuple[str, ...] = HEADLINE) -> str:
    """``DPO (steps 30→60): chosen −3.10, rejected −20.40, argmax +2.20 nats — squeezing …``."""
    parts = [f"{f} {change.delta[f]:+.2f}" for f in families if f in change.delta]
    return (f"{change.phase.upper()} (steps {change.start}→{change.end}): " + ", ".join(parts)
            + f" nats; top-1 prob {change.top1_delta:+.3f} — {verdict(change)}")
