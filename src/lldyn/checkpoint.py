"""Checkpoints: trainable weights as safetensors, plus optimizer, scheduler and RNG state.

Layout of one checkpoint (``RUN/checkpoints/step-00000040/``)::

    model.safetensors   the trainable parameters by name (all of them for full finetuning, the
                        adapter's for LoRA); frozen weights are reloaded from the base model
    optimizer.pt        optimizer.state_dict()   — plain tensors and numbers only
    scheduler.pt        scheduler.state_dict()
    rng.pt              torch / python / numpy RNG states
    state.json          step, phase, data position and whatever the loop needs to continue

A model sharded with FSDP2 (``lldyn train --fsdp``) is saved in the same layout, whole: every rank
takes part in gathering it (:func:`gather_state`: each trainable parameter's ``full_tensor()``, the
optimizer's state through ``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict`` with
``full_state_dict``, keyed by parameter name), rank 0 writes it, ``state.json`` records the number of
processes, and every rank loads its own slices of it back. Its ``model.safetensors`` loads into an
unsharded model in one process like any other; resuming it needs as many processes as wrote it.

Everything is written into a temporary directory next to the target and renamed into place, so
a crash leaves either the previous checkpoint or the new one, never half of one; only the last
``keep`` checkpoints are kept. Loading uses ``torch.load(weights_only=True)``: a checkpoint can
never run code.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import safetensors.torch
import torch

from lldyn.errors import LldynError
from lldyn.io import atomic_write_json

PREFIX = "step-"
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
RNG = "rng.pt"
STATE = "state.json"


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The parameters that train, by name, as contiguous CPU tensors."""
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def is_sharded_model(model: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


class GatheredState(NamedTuple):
    """A sharded model's trainable weights and optimizer state, whole (on rank 0; empty on the others)."""

    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None


def gather_state(model: Any, optimizer: Any = None) -> GatheredState:
    """Gather a sharded (FSDP2) model's trainable weights and its optimizer's state to rank 0, as CPU tensors.
    A collective: every rank calls it, in the same order; the other ranks get empty dicts."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    main = dist.get_rank() == 0
    model.reshard()  # the root's weights as FSDP2 keeps them between steps (a no-grad forward leaves them whole)
    weights = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            whole = p.detach().full_tensor()
            if main:
                weights[name] = whole.to("cpu").contiguous()
    optim = None
    if optimizer is not None:
        optim = get_optimizer_state_dict(model, optimizer,
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return GatheredState(weights, optim)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss)
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        kind, keys, pos, has_gauss, gauss_np = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss_np))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(PREFIX):])


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints (those with a ``state.json``), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir()
             if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit() and (p / STATE).is_file()]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def _remove_leftovers(directory: Path) -> None:
    """Delete ``.tmp-*`` / ``.old-*`` directories of writers that no longer run (a killed run leaves them)."""
    for path in directory.iterdir():
        pid = path.name.rsplit("-", 1)[-1]
        if not (path.name.startswith((".tmp-", ".old-")) and pid.isdigit() and path.is_dir()):
            continue
        if int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                continue  # another live process is writing here
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        shutil.rmtree(path, ignore_errors=True)


def _torch_save(value: Any, path: Path) -> None:
    # Through a Python file object, so a failed write keeps its OSError (see _io_failure).
    with open(path, "wb") as fh:
        torch.save(value, fh)


def _io_failure(err: BaseException) -> str | None:
    """The OS error behind a failed write, or None for any other exception (a bug, re-raised).

    torch.save reports a full disk as a RuntimeError raised while handling the OSError, and
    safetensors as a SafetensorError naming "os error 28"; both are found here.
    """
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError):
            return seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    match = re.search(r"os error (\d+)", str(err))
    return os.strerror(int(match.group(1))) if match else None


def save_checkpoint(directory: str | Path, step: int, model: Any, optimizer: Any = None, scheduler: Any = None,
                    state: dict[str, Any] | None = None, keep: int = 2, gathered: GatheredState | None = None) -> Path:
    """Write checkpoint ``step`` atomically into ``directory`` and keep only the last ``keep``.
    A sharded model's weights and optimizer state come in ``gathered`` (:func:`gather_state`, every rank).

    A failed write (disk full, permissions) removes the partial copy, leaves the previous
    checkpoints as they were and raises :class:`LldynError` naming the checkpoint.
    """
    directory = Path(directory)
    final = directory / f"{PREFIX}{step:08d}"
    tmp = directory / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(directory)
        tmp.mkdir()
    except OSError as err:
        raise LldynError(f"cannot write checkpoint: {err.strerror}", file=str(final)) from None
    try:
        weights = gathered.weights if gathered is not None else trainable_state(model)
        safetensors.torch.save_file(weights, str(tmp / WEIGHTS), metadata={"step": str(step)})
        if gathered is not None and gathered.optimizer is not None:
            _torch_save(gathered.optimizer, tmp / OPTIMIZER)
        elif optimizer is not None:
            _torch_save(optimizer.state_dict(), tmp / OPTIMIZER)
        if scheduler is not None:
            _torch_save(scheduler.state_dict(), tmp / SCHEDULER)
        _torch_save(rng_state(), tmp / RNG)
        atomic_write_json(tmp / STATE, {"step": step, **(state or {})})
        if final.exists():  # the same step saved again (e.g. end of a phase): replace it
            old = directory / f".old-{final.name}-{os.getpid()}"
            final.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(final)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = err.message.removeprefix("cannot write: ") if isinstance(err, LldynError) else _io_failure(err)
        if cause is None:
            raise
        raise LldynError(f"cannot write checkpoint: {cause}", file=str(final),
                         expected="free disk space; the previous checkpoint is left intact") from None
    if keep > 0:
        for old in list_checkpoints(directory)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # a Python object other than tensors, numbers and containers
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        detail = f"it calls {refused.group(1)}" if refused else str(err).splitlines()[0]
        raise LldynError(f"refused to load: the file holds more than tensors and numbers ({detail}); loading it "
                         "could run code", file=str(path), expected="a checkpoint written by lldyn") from None
    except Exception as err:
        raise LldynError(f"cannot read checkpoint file: {str(err).splitlines()[0]}", file=str(path)) from None


def load_checkpoint(path: str | Path, model: Any, optimizer: Any = None, scheduler: Any = None,
                    restore_rng: bool = True) -> dict[str, Any]:
    """Load weights (and optimizer / scheduler / RNG state when given) from ``path``; return ``state.json``."""
    path = Path(path)
    if not (path / STATE).is_file():
        raise LldynError("not a complete checkpoint (no state.json)", file=str(path))
    weights = safetensors.torch.load_file(str(path / WEIGHTS))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unknown = [n for n in weights if n not in params]
    if missing or unknown:
        name = (missing or unknown)[0]
        raise LldynError(f"checkpoint does not match the model ({len(missing)} missing, {len(unknown)} unknown "
                         f"tensors, e.g. {name!r})", file=str(path / WEIGHTS),
                         expected="a checkpoint of the same model and LoRA settings")
    sharded = is_sharded_model(model)
    with torch.no_grad():
        for name, value in weights.items():
            if params[name].shape != value.shape:
                raise LldynError(f"shape mismatch for {name!r}: {tuple(value.shape)} vs {tuple(params[name].shape)}",
                                 file=str(path / WEIGHTS), expected="a checkpoint of the same model")
            value = value.to(params[name].device, params[name].dtype)
            if sharded and hasattr(params[name], "device_mesh"):  # this rank's slice, cut locally (no collective)
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value, params[name].device_mesh, params[name].placements, src_data_rank=None)
            params[name].copy_(value)
    if optimizer is not None and (path / OPTIMIZER).is_file():
        if sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(model, optimizer, optim_state_dict=_load(path / OPTIMIZER),
                                     options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(_load(path / OPTIMIZER))
    if scheduler is not None and (path / SCHEDULER).is_file():
        scheduler.load_state_dict(_load(path / SCHEDULER))
    if restore_rng and (path / RNG).is_file():
        set_rng_state(_load(path / RNG))
    return json.loads((path / STATE).read_text(encoding="utf-8"))


def check_resume_processes(path: str | Path, world: int) -> None:
    """Refuse to resume a sharded checkpoint (``state.json`` has ``fsdp_processes``: the number of processes of the
    ``--fsdp`` run that wrote it) on ``world`` processes when they differ: its data split was that many ranks'.
    An unsharded checkpoint passes."""
    path = Path(path)
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LldynError(f"cannot read checkpoint state: {err}", file=str(path / STATE)) from None
    then = state.get("fsdp_processes")
    if then is not None and int(then) != world:
        raise LldynError(f"this FSDP checkpoint was written by {then} processes; resuming it on {world} is refused",
                         file=str(path / STATE), field="fsdp_processes",
                         expected=f"torchrun --nproc_per_node {then} (or accelerate launch --num_processes {then}) "
                                  "with --fsdp; its model.safetensors loads in one process for analysis")
