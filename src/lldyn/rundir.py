"""The run directory: a folder that describes itself (after TRAK's saver).

Layout::

    RUN/
      config.json        resolved config of the run (no secrets); a re-run with another config is refused
      metrics.jsonl      append-only, one JSON object per logged step (``{"step": ..., ...}``)
      probes.jsonl       the probe set the run tracks
      probe_table.jsonl  one row per (step, prompt_id, family): logp, n_tokens, ...
      checkpoints/       step-N/ (safetensors weights + optimizer/scheduler/RNG state)
      figures/, report.html

All whole-file writes are atomic; appends are whole lines with fsync, and rows beyond the last
checkpoint are dropped on resume so a killed run never has torn or duplicated rows.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from lldyn.errors import LldynError
from lldyn.io import append_jsonl, atomic_write_json, atomic_write_jsonl, read_jsonl

CONFIG = "config.json"
METRICS = "metrics.jsonl"
PROBES = "probes.jsonl"
PROBE_TABLE = "probe_table.jsonl"
CHECKPOINTS = "checkpoints"
FIGURES = "figures"


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

    @classmethod
    def create(cls, path: str | Path, config: Mapping[str, Any], resume: bool = False,
               ignore_keys: Iterable[str] = ("resume",)) -> "RunDir":
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise LldynError("run directory path is a file", file=str(run.path), expected="a directory")
        comparable = {k: v for k, v in config.items() if k not in set(ignore_keys)}
        if (run.path / CONFIG).is_file():
            old = run.config()
            old = {k: v for k, v in old.items() if k not in set(ignore_keys)}
            diffs = _diff(old, comparable)
            if diffs:
                raise LldynError("run directory holds a run with a different config: " + "; ".join(diffs[:3]),
                                 file=str(run.path / CONFIG), expected="a new --out directory, or the same config")
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
            atomic_write_json(run.path / CONFIG, dict(config))
        return run

    # ------------------------------------------------------------------ reading
    def config(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / CONFIG).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LldynError("not a run directory (no config.json)", file=str(self.path),
                             expected="a directory written by lldyn train (or the TRL callback)") from None
        except json.JSONDecodeError as err:
            raise LldynError(f"corrupt config.json: {err.msg}", file=str(self.path / CONFIG), line=err.lineno,
                             expected="the JSON lldyn wrote (restore it, or start a new run)") from None

    def has_metrics(self) -> bool:
        p = self.path / METRICS
        return p.is_file() and p.stat().st_size > 0

    def metrics(self) -> list[dict[str, Any]]:
        p = self.path / METRICS
        return list(read_jsonl(p)) if p.is_file() else []

    def probe_table(self) -> list[dict[str, Any]]:
        p = self.path / PROBE_TABLE
        return list(read_jsonl(p)) if p.is_file() else []

    def iter_probe_table(self) -> Iterator[dict[str, Any]]:
        p = self.path / PROBE_TABLE
        return read_jsonl(p) if p.is_file() else iter(())

    # ------------------------------------------------------------------ writing
    def log_metrics(self, row: Mapping[str, Any]) -> None:
        """Append one row (must carry ``step``) to ``metrics.jsonl``."""
        if "step" not in row:
            raise ValueError("metrics rows need a 'step'")
        append_jsonl(self.path / METRICS, [dict(row)])

    def append_probe_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        append_jsonl(self.path / PROBE_TABLE, [dict(r) for r in rows])

    def write_json(self, name: str, value: Any) -> Path:
        path = self.path / name
        atomic_write_json(path, value)
        return path

    def write_jsonl(self, name: str, rows: Iterable[Any]) -> Path:
        path = self.path / name
        atomic_write_jsonl(path, rows)
        return path

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def figures(self) -> Path:
        p = self.path / FIGURES
        p.mkdir(parents=True, exist_ok=True)
        return p

    def truncate_after(self, step: int) -> None:
        """On resume from a checkpoint at ``step``: drop metric and probe rows logged after it (and a
        torn last line), rewriting each file atomically, so a resumed run never duplicates rows."""
        for name in (METRICS, PROBE_TABLE, "decompose.jsonl"):
            p = self.path / name
            if p.is_file():
                keep = [r for r in read_jsonl(p, strict=False) if int(r.get("step", 0)) <= step]
                atomic_write_jsonl(p, keep)
