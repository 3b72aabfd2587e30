"""Figures of the LLM step decomposition: predicted vs actual, the +/− split per family, token kernels.

Draws the rows of a run's ``decompose.jsonl`` (:meth:`lldyn.rundir.RunDir.decompose_rows`, written by
:class:`lldyn.decompose.llm.StepDecomposer`) into PNGs wherever the caller says, atomically
(:func:`lldyn.io.save_figure`). matplotlib's object API (no pyplot state).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lldyn.decompose.classifier import pearson
from lldyn.decompose.llm import PARTS, TokenKernel
from lldyn.io import save_figure

# matplotlib is imported inside the drawing functions: it is slow to import and only figures need it.

__all__ = ["plot_decomposition", "plot_token_kernel"]

PART_COLOURS = {"chosen": "tab:green", "rejected": "tab:red", "response": "tab:blue", "positive": "tab:olive",
                "negative": "tab:purple", "zero_advantage": "tab:cyan", "other": "tab:gray"}
PART_LABELS = {"chosen": "y+ terms (chosen)", "rejected": "y− terms (rejected)", "response": "SFT terms (response)",
               "positive": "completions with advantage > 0", "negative": "completions with advantage < 0",
               "zero_advantage": "advantage 0 (KL term only)", "other": "other (momentum, decay, …)"}


def _save(fig: Any, path: Path) -> Path:
    return save_figure(fig, path, dpi=90, bbox_inches="tight")


def _families(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["family"] for r in rows))


def _scatter(rows: list[dict[str, Any]], path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    for family in _families(rows):
        members = [r for r in rows if r["family"] == family]
        ax.scatter([r["actual"] for r in members], [r["predicted"] for r in members], s=10, alpha=0.7,
                   label=f"{family} ({len(members)})")
    values = [r["actual"] for r in rows] + [r["predicted"] for r in rows]
    lo, hi = min(values), max(values)
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--")
    r = pearson(torch.tensor([row["predicted"] for row in rows]), torch.tensor([row["actual"] for row in rows]))
    steps = sorted({row["step"] for row in rows})
    ax.set_title(f"one-step Δ log π: predicted ⟨∇θ log π, Δθ⟩ vs actual\n"
                 f"{len(rows)} probe-steps over {len(steps)} steps, Pearson r = {r:.4f}", fontsize=9)
    ax.set_xlabel("actual Δ log π (engine, after − before)")
    ax.set_ylabel("predicted (first order, jvp)")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def _parts_bars(rows: list[dict[str, Any]], path: Path) -> Path:
    from matplotlib.figure import Figure

    families = _families(rows)
    parts = [p for p in (*PARTS, "other") if any(p in r["parts"] for r in rows)]
    fig = Figure(figsize=(max(6.0, 1.1 * len(families) + 2), 4.2))
    ax = fig.subplots()
    width = 0.8 / max(len(parts), 1)
    for j, part in enumerate(parts):
        means = []
        for family in families:
            members = [r for r in rows if r["family"] == family]
            means.append(sum(r["parts"].get(part, 0.0) for r in members) / len(members))
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(families))]
        ax.bar(xs, means, width=width, color=PART_COLOURS[part], label=PART_LABELS[part])
    actual = [sum(r["actual"] for r in rows if r["family"] == f) / sum(1 for r in rows if r["family"] == f)
              for f in families]
    ax.scatter(range(len(families)), actual, color="black", marker="_", s=300, zorder=3, label="actual Δ log π")
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_xticks(range(len(families)))
    ax.set_xticklabels(families, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mean Δ log π per decomposed step")
    ax.set_title("what moved each probe family: contributions of the step's terms", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_decomposition(rows: list[dict[str, Any]], figures: str | Path, prefix: str = "decompose") -> list[Path]:
    """Predicted vs actual scatter (colour = probe family) and the per-family +/− split bar chart.

    rows: a run's decomposition rows. Writes ``<prefix>-scatter.png`` and ``<prefix>-parts.png`` into
    ``figures`` and returns their paths; no rows give ``[]``.
    """
    if not rows:
        return []
    figures = Path(figures)
    return [_scatter(rows, figures / f"{prefix}-scatter.png"), _parts_bars(rows, figures / f"{prefix}-parts.png")]


def plot_token_kernel(kernel: TokenKernel, path: str | Path, title: str | None = None) -> Path:
    """Heatmap of a last-layer token kernel ⟨h_t, h_s⟩ (rows: probe tokens, columns: training tokens)."""
    from matplotlib.figure import Figure

    K = kernel.kernel.float().numpy()
    T_o, T_u = K.shape
    fig = Figure(figsize=(min(2 + 0.28 * T_u, 24), min(1.5 + 0.28 * T_o, 24)))
    ax = fig.subplots()
    lim = float(abs(K).max()) or 1.0
    im = ax.imshow(K, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")

    def label(piece: str) -> str:  # spaces and newlines made visible
        return repr(piece)[1:-1].replace(" ", "␣") or "·"

    ax.set_yticks(range(T_o))
    ax.set_yticklabels([label(p) for p in kernel.probe_tokens], fontsize=6)
    ax.set_xticks(range(T_u))
    ax.set_xticklabels([label(p) for p in kernel.train_tokens], fontsize=6, rotation=90)
    ax.set_ylabel("probe response token t")
    ax.set_xlabel("training response token s")
    ax.set_title(title or "last-layer eNTK ⟨h_t, h_s⟩ (K(t, s) = ⟨h_t, h_s⟩·I)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, Path(path))
