"""``lldyn train --report-to``: every ``metrics.jsonl`` row also goes where users look.

``tensorboard`` writes event files under ``RUN/tensorboard`` (``RunDir.tensorboard_dir``) through
``torch.utils.tensorboard``; ``wandb`` logs an offline W&B run under ``RUN/wandb`` (``wandb sync`` uploads it
later; lldyn never reaches the network). The scalars are the row's own numbers under the keys they have in
``metrics.jsonl`` (``loss``, ``lr``, ``chosen_logp``, ``family_mean/<family>``, ``family_delta/<family>``,
``signal/<name>``, ``squeeze/alarm`` …), at the row's step, so a plot in TensorBoard and a line of
``metrics.jsonl`` read the same. The TRL callback sends the same rows through a trainer's own ``report_to``
(:mod:`lldyn.integrations.trl`, keys prefixed ``lldyn/``).
"""
from __future__ import annotations

import importlib.util
import math
from typing import Any

from lldyn.config import check
from lldyn.errors import LldynError
from lldyn.rundir import MetricsRow, RunDir

REPORT_TO = ("none", "tensorboard", "wandb")
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_report_to(kind: str) -> None:
    """Refuse an unknown backend, or one whose package is not installed, before anything is written."""
    check(kind in REPORT_TO, "report_to", f"unknown --report-to {kind!r}", "one of " + ", ".join(REPORT_TO))
    if kind != "none" and importlib.util.find_spec(_PACKAGE[kind]) is None:
        raise LldynError(f"--report-to {kind} needs the package {_PACKAGE[kind]}, which is not installed",
                         field="report_to", expected=f"`pip install {_PACKAGE[kind]}`, or --report-to none")


def row_scalars(row: MetricsRow) -> dict[str, float]:
    """The numbers of one metrics row under their ``metrics.jsonl`` keys (booleans as 0/1; the step, the event,
    text and non-finite values left out)."""
    out = {}
    for key, value in row.to_json().items():
        if key in ("step", "event") or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            continue
        out[key] = float(value)
    return out


class TensorBoardSink:
    """Scalars into TensorBoard event files under ``RUN/tensorboard`` (flushed after every row, so a killed run
    keeps what it logged)."""

    def __init__(self, run: RunDir) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run.tensorboard_dir))

    def __call__(self, row: MetricsRow) -> None:
        for key, value in row_scalars(row).items():
            self.writer.add_scalar(key, value, global_step=row.step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """Scalars into an offline W&B run under ``RUN/wandb`` (its config: the run's ``config.json``)."""

    def __init__(self, run: RunDir) -> None:
        import wandb

        self.wandb_run = wandb.init(mode="offline", dir=str(run.path), project="lldyn", name=run.path.name,
                                    config=run.config())

    def __call__(self, row: MetricsRow) -> None:
        self.wandb_run.log(row_scalars(row), step=row.step)

    def close(self) -> None:
        self.wandb_run.finish()


def open_sink(kind: str, run: RunDir) -> Any:
    """The sink of ``--report-to kind`` attached to ``run`` (every ``run.log(row)`` then reaches it), or None."""
    check_report_to(kind)
    if kind == "none":
        return None
    sink = TensorBoardSink(run) if kind == "tensorboard" else WandbSink(run)
    run.listeners.append(sink)
    return sink
