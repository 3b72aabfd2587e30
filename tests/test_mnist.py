"""The MNIST experiment: IDX reading, the run directory it writes, on real MNIST and on load_digits."""
from __future__ import annotations

import argparse
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

from lldyn.errors import LldynError
from lldyn.experiments.mnist import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    MnistConfig,
    load_mnist,
    read_idx,
    run_mnist,
    write_idx,
)

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
TINY = dict(train_size=96, test_size=60, epochs=1, probes_per_class=1, updates_per_class=1)


def _mnist_folder(tmp_path: Path, n: int = 20, magic_images: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "idx"
    folder.mkdir()
    write_idx(folder / "t-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    write_idx(folder / "t-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    if magic_images is not None:
        path = folder / "t-images-idx3-ubyte.gz"
        raw = bytearray(gzip.decompress(path.read_bytes()))
        raw[:4] = magic_images.to_bytes(4, "big")
        path.write_bytes(gzip.compress(bytes(raw)))
    return folder


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_round_trip(tmp_path, suffix):
    images = np.random.default_rng(1).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / f"x-images-idx3-ubyte{suffix}", images)
    back = read_idx(tmp_path / f"x-images-idx3-ubyte{suffix}", IMAGES_MAGIC)
    assert back.dtype == np.uint8 and back.shape == (7, 28, 28)
    np.testing.assert_array_equal(back, images)
    floats = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    write_idx(tmp_path / "f.idx", floats)
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), floats)


def test_bad_magic_names_file_and_expectation(tmp_path):
    folder = _mnist_folder(tmp_path, magic_images=0x00000801)
    with pytest.raises(LldynError) as err:
        load_mnist(folder)
    text = str(err.value)
    assert "t-images-idx3-ubyte.gz" in text and "0x00000803" in text and "magic" in text


def test_truncated_or_missing_idx_is_refused(tmp_path):
    path = tmp_path / "y-labels-idx1-ubyte"
    write_idx(path, np.arange(10, dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(LldynError, match="7 bytes.*expected 10 bytes"):
        read_idx(path, LABELS_MAGIC)
    with pytest.raises(LldynError, match="not found"):
        read_idx(tmp_path / "missing-idx3-ubyte", IMAGES_MAGIC)
    with pytest.raises(LldynError, match="MNIST data folder not found"):
        load_mnist(tmp_path / "nowhere")


def test_out_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "taken"
    out.write_text("x")
    with pytest.raises(LldynError, match="file"):
        run_mnist(MnistConfig(data=str(_mnist_folder(tmp_path)), **TINY), out, log=lambda _: None)


def test_config_is_validated():
    with pytest.raises(LldynError, match="checkpoints"):
        MnistConfig(epochs=2, checkpoints=(3,))
    assert MnistConfig(epochs=30).resolved_checkpoints() == (0, 15, 30)


def _check_outputs(out: Path, expect_mnist: bool) -> None:
    for name in ("config.json", "metrics.jsonl", "results.json", "figures/mnist-heatmap.png",
                 "figures/mnist-scatter.png", "figures/mnist-pairs.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["is_mnist"] is expect_mnist
    matrix = np.array(results["matrix"], dtype=float)
    assert matrix.shape == (10, 10) and np.isfinite(matrix).all()
    for ckpt in results["checkpoints"]:
        for key in ("matrix", "matrix_predicted", "own_class_matrix", "ntk_similarity"):
            m = np.array(ckpt[key], dtype=float)
            assert m.shape == (10, 10) and np.isfinite(m).all(), key
    assert math.isfinite(results["pearson"]) and results["pearson"] > 0.9
    assert results["settings"]["checkpoints"] == [0, 1]


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"real MNIST not present at {SHARED_MNIST}")
def test_tiny_run_on_real_mnist_through_the_cli(tmp_path, capsys):
    from lldyn.commands import mnist as command

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args(["mnist", "--out", str(tmp_path / "run"), "--data", str(SHARED_MNIST),
                              "--train-size", "96", "--test-size", "60", "--epochs", "1",
                              "--probes-per-class", "1", "--updates-per-class", "1"])
    assert args.run(args) == 0
    assert "MNIST IDX files" in capsys.readouterr().out
    _check_outputs(tmp_path / "run", expect_mnist=True)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train_size"] == 96


def test_tiny_run_on_load_digits_fallback(tmp_path, monkeypatch):
    lines: list[str] = []
    result = run_mnist(MnistConfig(**TINY), tmp_path / "run", log=lines.append)
    assert any("load_digits" in line and "NOT MNIST" in line for line in lines)
    assert result.out == tmp_path / "run"
    _check_outputs(result.out, expect_mnist=False)
