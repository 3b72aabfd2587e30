"""The one place that knows about ranks: which process this is, who writes, how values travel between ranks.

:class:`Processes` describes the processes a job runs on: one (the default: every method then does
nothing) or the ranks ``0 … world-1`` that ``accelerate launch`` (or ``torchrun``) started. lldyn's
training loop and the TRL callback both use it, so tracking behaves the same in either.

Sharding (FSDP2, ``torch.distributed.fsdp.fully_shard``): :func:`shard_model` shards a model per decoder
layer, then at its root. A sharded model all-gathers a layer's weights inside every forward pass, so every
rank must run the same number of forward passes or the ranks wait on each other forever. Hence the rule of
this module: work is split with :func:`equal_shares` (every rank gets as many items; dummy items fill the
short ranks and their results are dropped), scoring goes through :func:`score_equal_forwards` (the ranks
that ran fewer forward passes run dummy ones) and generation runs with ``synced_gpus``. :func:`root_call`
runs lldyn's engine (which calls the decoder and the output layer, not the model's own ``forward``)
through the root's FSDP hooks, so the root's weights (embeddings, final norm, output layer) are gathered.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import torch

from lldyn.errors import LldynError
from lldyn.scoring import EncodedPair, Encoder, ScoreConfig, ScoreRequest, ScoreResult, forward_passes, score_encoded

T = TypeVar("T")


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

    def most(self, count: int) -> int:
        """The largest ``count`` over ranks (how many forward passes the busiest rank runs)."""
        if self.world == 1:
            return count
        value = torch.tensor([count], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return int(value.item())

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


# --------------------------------------------------------------------------- sharding (FSDP2)


def equal_shares(items: Sequence[T], rank: int, world: int) -> list[T | None]:
    """Items ``rank::world`` of ``items``, padded with None to ``ceil(len(items) / world)`` entries, so every
    rank holds as many: a rank runs a dummy item where it holds None and drops that result.

    >>> [equal_shares("abcde", r, 2) for r in range(2)]
    [['a', 'c', 'e'], ['b', 'd', None]]
    """
    mine: list[T | None] = list(items[rank::world])
    return mine + [None] * (-(-len(items) // world) - len(mine))


def is_sharded(model: Any) -> bool:
    """Whether ``model`` is sharded with FSDP2 (``fully_shard``, by lldyn or by accelerate)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def refuse_zero3(model: Any) -> None:
    """DeepSpeed ZeRO-3 partitions the weights too (each forward pass gathers them, so the same equal-forward
    rule would apply), but it is untested here: on this CPU machine ``deepspeed.initialize`` with ZeRO-3 under
    torchrun made no progress (docs/training.md, "Scaling out"). Refused, rather than a possible hang."""
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        raise LldynError("the model's weights are partitioned by DeepSpeed ZeRO-3, which lldyn's tracker does not "
                         "support (untested)", field="deepspeed",
                         expected="FSDP2 (accelerate's fsdp_version: 2, or lldyn train --fsdp), or ZeRO stage 1/2")


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The decoder layers of a causal LM (through a peft wrapper too): FSDP2's units."""
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise LldynError(f"cannot find the decoder layers of {type(model).__name__} to shard", field="fsdp",
                         expected="a decoder model whose get_decoder() has .layers (Llama, Qwen, Mistral, SmolLM ...)")
    return list(layers)


def shard_model(model: Any) -> Any:
    """Shard ``model`` in place with FSDP2 over the default process group: each decoder layer is one unit,
    the rest (embeddings, final norm, output layer, tied or not) the root's. Every rank must hold the same
    weights first (:meth:`Processes.same_start`): each keeps its own slice of them."""
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)
    return model


def root_call(model: Any, fn: Callable[[Any], T]) -> T:
    """``fn(model)`` run as the forward pass of ``model``'s root, so a sharded model's FSDP2 hooks run around
    it (its root weights are gathered first; backward through the result reduces their gradients). lldyn's
    engine calls ``model.get_decoder()`` and the output layer directly, which alone would skip those hooks.
    An unsharded model: just ``fn(model)``. For training, let ``fn`` return a tuple whose tensors carry
    the loss: FSDP2 hooks the tensors it finds in what the forward pass returns."""
    if not is_sharded(model):
        return fn(model)
    own = model.__dict__.get("forward")  # an instance-level forward (accelerate's wrappers) is put back after
    model.forward = lambda *args, **kwargs: fn(model)
    try:
        return model()
    finally:
        if own is None:
            del model.__dict__["forward"]
        else:
            model.forward = own


def dummy_forward(model: Any, pad_id: int) -> None:
    """One forward pass of the decoder over one token, whose result is dropped: a short rank's share of
    the all-gathers of a sharded model (inside :func:`root_call`)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        model.get_decoder()(input_ids=torch.full((1, 1), pad_id, dtype=torch.long, device=device), use_cache=False)


def score_equal_forwards(procs: Processes, model: Any, tokenizer: Any, requests: Sequence[ScoreRequest],
                         config: ScoreConfig = ScoreConfig(), progress: bool = False) -> list[ScoreResult]:
    """:func:`lldyn.scoring.score` of this rank's ``requests``. Of a sharded model: every rank calls this (with
    its own requests, any number, none too), the engine's forward passes are counted before they run
    (:func:`lldyn.scoring.forward_passes`), and ranks that run fewer add dummy ones up to the busiest rank's
    count, so the all-gathers pair up; the root's weights are resharded afterwards."""
    encoder = Encoder(tokenizer, config)
    encoded = [encoder.pair(r.prompt, r.response, r.where) for r in requests]
    return score_encoded_equal_forwards(procs, model, encoded, tokenizer.pad_token_id, config, progress)


def score_encoded_equal_forwards(procs: Processes, model: Any, encoded: Sequence[EncodedPair], pad_id: int,
                                 config: ScoreConfig = ScoreConfig(), progress: bool = False) -> list[ScoreResult]:
    """:func:`score_equal_forwards` of pairs already encoded (e.g. the exact tokens of sampled completions)."""
    if not is_sharded(model):
        return score_encoded(model, encoded, pad_id, config, progress=progress)
    mine = forward_passes(encoded, config)
    most = procs.most(mine)

    def run(m: Any) -> list[ScoreResult]:
        results = score_encoded(m, encoded, pad_id, config, progress=progress) if encoded else []
        for _ in range(most - mine):
            dummy_forward(m, pad_id)
        return results

    with torch.no_grad():
        results = root_call(model, run)
    model.reshard()
    return results


def full_tensor(param: torch.Tensor) -> torch.Tensor:
    """A parameter's whole value: gathered from every rank when sharded (a collective: every rank calls it)."""
    from torch.distributed.tensor import DTensor

    return param.full_tensor() if isinstance(param, DTensor) else param
