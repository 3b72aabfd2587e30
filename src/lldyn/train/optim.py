"""Optimizers and learning-rate schedules from torch and transformers."""
from __future__ import annotations

from typing import Sequence

import torch

from lldyn.train.config import TrainConfig


def make_optimizer(params: Sequence[torch.nn.Parameter], cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW, RMSprop (the paper's choice) or SGD from torch.

    AdamW and SGD use torch's fused kernels where every parameter allows them (floating point, on
    CPU or CUDA): on SmolLM2 the fused AdamW update takes ~0.2 s on a 2-core CPU against ~1.1 s
    for the default one, a third of a training step. RMSprop has no fused kernel in torch. Sharded (FSDP2)
    parameters take torch's fused AdamW but not its fused SGD (DTensor has no sharding rule for it).
    """
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) or None
    sharded = any(hasattr(p, "device_mesh") for p in params)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    return torch.optim.SGD(params, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                           fused=None if sharded else fused)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """transformers' schedulers with warm-up: constant, linear or cosine decay to 0."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if cfg.scheduler == "constant" else cfg.scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)
