"""lldyn inside other training frameworks: :class:`LearningDynamicsCallback` for Hugging Face ``Trainer``
and TRL's ``SFTTrainer`` / ``DPOTrainer`` (imported lazily so ``import lldyn`` stays light)."""
from __future__ import annotations

from typing import Any

__all__ = ["LearningDynamicsCallback"]


def __getattr__(name: str) -> Any:
    if name == "LearningDynamicsCallback":
        from lldyn.integrations.trl import LearningDynamicsCallback

        return LearningDynamicsCallback
    raise AttributeError(name)
