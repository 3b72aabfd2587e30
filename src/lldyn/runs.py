"""Models from run directories: every command that loads "a model or a run" comes here, not to training.

A *model spec* is what :func:`lldyn.models.load_model` accepts (an alias, a ``.gguf`` file, a model
directory, a Hub id). lldyn also accepts a **run directory** written by ``lldyn train`` (its final
model: the base model named in ``config.json`` with the latest checkpoint loaded) and **one checkpoint**
of a run (``RUN/checkpoints/step-XXXXXXXX``, e.g. the end of a run's SFT phase).

``trust_remote_code`` is always the caller's flag (``--trust-remote-code``), never a run's
``config.json``: a run directory may come from anyone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from lldyn.checkpoint import latest_checkpoint, load_checkpoint
from lldyn.config import build_config
from lldyn.errors import LldynError
from lldyn.models import LoadedModel, ModelConfig, add_lora, load_model
from lldyn.rundir import RunDir

# config.json keys of a training run → ModelConfig fields (what loading its models needs)
MODEL_KEYS = {"model": "name", "dtype": "dtype", "device": "device", "seed": "seed", "lora_r": "lora_r",
              "lora_alpha": "lora_alpha"}


def is_run_dir(path: str | Path) -> bool:
    """A directory ``lldyn train`` wrote into (``config.json`` and ``checkpoints/``)."""
    run = RunDir(path)
    return run.config_path.is_file() and run.checkpoints.is_dir()


def is_checkpoint_dir(path: str | Path) -> bool:
    """``RUN/checkpoints/step-XXXXXXXX`` of a run directory."""
    path = Path(path)
    return path.is_dir() and path.parent.name == RunDir(path.parent.parent).checkpoints.name \
        and is_run_dir(path.parent.parent)


def model_config(values: Mapping[str, Any], trust_remote_code: bool = False, name: str | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a training config's values (``model``, ``dtype``, ``device``, ``seed``, LoRA);
    ``name`` replaces the model (e.g. a ``--ref``)."""
    fields = {field: values[key] for key, field in MODEL_KEYS.items() if key in values}
    if name is not None:
        fields["name"] = name
    return build_config(ModelConfig, {**fields, "trust_remote_code": trust_remote_code})


def run_model_config(run_dir: str | Path, trust_remote_code: bool = False) -> ModelConfig:
    """How a run's starting model was loaded (from its ``config.json``)."""
    run = RunDir(run_dir)
    values = run.config()
    try:
        return model_config(values, trust_remote_code)
    except LldynError as err:
        raise LldynError(err.message, file=str(run.config_path), field=err.field, expected=err.expected) from None


def load_start_model(config: ModelConfig) -> LoadedModel:
    """The model to finetune: ``config.name`` as a model spec, or the final model of an earlier run directory
    (so SFT → DPO can be two runs; a LoRA adapter of the earlier run is merged first, then ``config``'s
    LoRA, if any, is added)."""
    if not is_run_dir(config.name):
        return load_model(config)
    lm = load_run_model(config.name, trust_remote_code=config.trust_remote_code)
    model = lm.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if config.lora_r > 0:
        model = add_lora(model, config)
    lm.model = model
    return lm


def load_run_model(run_dir: str | Path, checkpoint: str | Path | None = None,
                   trust_remote_code: bool = False) -> LoadedModel:
    """The model of a run: its starting model (:func:`run_model_config`) with the latest (or given) checkpoint."""
    run = RunDir(run_dir)
    lm = load_start_model(run_model_config(run.path, trust_remote_code))
    ckpt = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run.checkpoints)
    if ckpt is None:
        raise LldynError("run has no checkpoint yet", file=str(run.checkpoints), expected="a finished or checkpointed run")
    load_checkpoint(ckpt, lm.model, restore_rng=False)
    lm.model.eval()
    return lm


def load_model_or_run(spec: str | Path, trust_remote_code: bool = False, dtype: str | None = None) -> LoadedModel:
    """A model spec, an lldyn run directory (its latest checkpoint) or one checkpoint of a run → LoadedModel.

    ``dtype`` (float32, bfloat16, float16): the weights' dtype (default: float32, or the run's own dtype); the
    engine computes log-softmax and sums in float32 whatever it is.
    """
    if dtype is not None:
        build_config(ModelConfig, {"name": str(spec), "dtype": dtype})  # an unknown dtype is refused before loading
    if is_checkpoint_dir(spec) or is_run_dir(spec) or RunDir(spec).metrics_path.is_file():
        # a run without checkpoints: a clear error from load_run_model
        run_dir, ckpt = (Path(spec).parent.parent, spec) if is_checkpoint_dir(spec) else (spec, None)
        lm = load_run_model(run_dir, ckpt, trust_remote_code=trust_remote_code)
        if dtype is not None:
            from lldyn.models import _torch_dtype

            lm.model.to(_torch_dtype(dtype))
        return lm
    return load_model(ModelConfig(name=str(spec), trust_remote_code=trust_remote_code, dtype=dtype or "float32"))
