"""The one place that knows about ranks: which process this is, who writes, how values travel between ranks.

:class:`Processes` describes the processes a job runs on: one (the default: every method then does
nothing) or the ranks ``0 … world-1`` that ``accelerate launch`` (or ``torchrun``) started. lldyn's
training loop and the TRL callback both use it, so tracking behaves the same in either.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from lldyn.errors import LldynError


@dataclass(frozen=True)
class Processes:
    """The processes of a job, for data parallelism.

    Each rank takes rows ``rank::world`` of every micro-batch and its loss is the mean over its rows;
    :meth:`average_gradients` then makes the update the one of the whole micro-batch (what DDP does,
    without wrapping the model, so checkpoints, probes and generation use the model as it is).
    """

    rank: int = 0
    world: int = 1
    device: str = "cpu"  # where collectives put their tensors (NCCL needs this rank's GPU)

    @classmethod
    def launched(cls, cpu: bool = True) -> "Processes":
        """The processes ``accelerate launch`` / ``torchrun`` started (from ``WORLD_SIZE``); one otherwise.
        accelerate sets up the process group: gloo with ``cpu``, NCCL on GPUs (each rank its own)."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from accelerate import PartialState

        return cls.of(PartialState(cpu=cpu))

    @classmethod
    def of(cls, state: Any) -> "Processes":
        """From an ``accelerate.PartialState`` (what a Hugging Face trainer runs under)."""
        return cls(state.process_index, state.num_processes, str(state.device))

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that writes to the run directory."""
        return self.rank == 0

    def shard(self, batch: Sequence[Any]) -> list[Any]:
        """This rank's rows of a micro-batch."""
        return list(batch[self.rank::self.world])

    def wait(self) -> None:
        """Barrier: returns once every rank got here."""
        if self.world > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order (accelerate flattens one list level, hence ``[obj]``)."""
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return list(gather_object([obj]))

    def from_main(self, compute: Callable[[], Any]) -> Any:
        """``compute()`` run on rank 0 (the others wait) and its value sent to every rank, so all hold the very
        same one; an :class:`LldynError` it raises is raised on every rank (one clear error, not a hang)."""
        if self.world == 1:
            return compute()
        from accelerate.utils import broadcast_object_list

        value = None
        if self.is_main:
            try:
                value = compute()
            except LldynError as err:
                value = err
        value = broadcast_object_list([value])[0]
        if isinstance(value, LldynError):
            raise value
        return value

    def mean(self, stats: dict[str, float]) -> dict[str, float]:
        """Each statistic averaged over ranks: the whole micro-batch's mean, as every rank has as many rows."""
        if self.world == 1:
            return stats
        from accelerate.utils import reduce

        values = reduce(torch.tensor(list(stats.values()), dtype=torch.float64, device=self.device), "mean")
        return dict(zip(stats, values.tolist()))

    def all_finite(self, loss: torch.Tensor) -> bool:
        """Whether ``loss`` is finite on every rank (so that all ranks stop together, or none does)."""
        if self.world == 1:
            return bool(torch.isfinite(loss))
        from accelerate.utils import reduce

        bad = reduce((~torch.isfinite(loss.detach())).reshape(1).to(torch.float64), "sum")
        return float(bad) == 0

    def average_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over ranks, in place. Which parameters have a gradient
        depends on the model, not on the rows, so every rank skips the same ones."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(self.world)

    def same_start(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Rank 0's starting weights on every rank (seeded loading makes them equal already; this guarantees it)."""
        if self.world > 1:
            from accelerate.utils import broadcast

            broadcast([p.data for p in params])



def leave_process_group() -> tuple[int, int]:
    """(rank, number of processes) of the job that ran here; the process group it joined under
    ``accelerate launch`` / ``torchrun`` is closed (the command line does this once training ends)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    rank, world = dist.get_rank(), dist.get_world_size()
    dist.destroy_process_group()
    return rank, world
