"""The paper's MNIST experiment (Ren & Sutherland, ICLR 2025, Sec. 3.1 and Fig. 2-3).

A LeNet is trained on 2,000 real MNIST digits (SGD, lr 1e-3, momentum 0.9, batch 64). At a few
checkpoints we take probes x_o (held-out digits, a few per class) and training examples x_u (a few
per class), apply *one* plain SGD step on each x_u alone to a float64 copy of the model, and measure
Δ log π(c | x_o) for every class c. The exact decomposition of :mod:`lldyn.decompose.classifier`
predicts the same numbers as −η A(x_o) K(x_o, x_u) G(x_u) (eq. (3)-(5)); we report both.

The 10×10 matrix ``matrix[a][b]`` is the mean Δ log π(y = b | x_o) over probes x_o of class a after
a one-step update on an example of class b: the diagonal is how learning a digit generalises to
other images of that digit, the off-diagonal how it "pulls up" the same label on similar-looking
digits (the paper's "learning a 4 pulls up 9" structure). ``own_class_matrix[a][b]`` is the change
of the probe's own label, Δ log π(y = a | x_o).

Run directory written by :func:`run_mnist`::

    OUT/config.json  metrics.jsonl  results.json
    OUT/figures/mnist-heatmap.png  mnist-scatter.png  mnist-pairs.png
"""
from __future__ import annotations

import copy
import gzip
import math
import struct
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lldyn.config import check, config_to_dict
from lldyn.decompose.classifier import compare, decompose, logit_jacobian, one_step_change, pearson
from lldyn.errors import LldynError
from lldyn.io import save_figure
from lldyn.rundir import RunDir, TrainRow

# matplotlib (the figures) and scikit-learn (the offline stand-in digits) are imported where they are used:
# both are slow to import and the data readers and the analysis need neither.

N_CLASSES = 10
IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions (N, rows, cols)
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension (N,)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# (0-based class of x_o, class of x_u) pairs drawn in the A/K/G figure: same digit, a similar one,
# a dissimilar one.
FIGURE_PAIRS: tuple[tuple[int, int], ...] = ((4, 4), (9, 4), (0, 4))


# ---------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class MnistConfig:
    """Settings of ``lldyn mnist``; defaults follow the paper's setup and run in minutes on 2 CPU cores.

    checkpoints: epochs after which the one-step analysis runs (0 = before training); empty means
        start, middle and end.
    probe_lr: step size η of the single-example analysis steps (plain SGD, no momentum).
    """

    data: str | None = None
    train_size: int = 2000
    test_size: int = 1000
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    momentum: float = 0.9
    seed: int = 0
    probe_lr: float = 1e-3
    probes_per_class: int = 10
    updates_per_class: int = 5
    checkpoints: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("train_size", "test_size", "batch_size", "probes_per_class", "updates_per_class"):
            check(getattr(self, name) >= 1, name, f"{name} must be positive", "an integer >= 1")
        check(self.epochs >= 0, "epochs", "epochs must not be negative", "an integer >= 0")
        check(self.lr > 0, "lr", "lr must be positive", "a number > 0")
        check(self.probe_lr > 0, "probe_lr", "probe_lr must be positive", "a number > 0")
        check(0 <= self.momentum < 1, "momentum", "momentum out of range", "0 <= momentum < 1")
        check(all(0 <= c <= self.epochs for c in self.checkpoints), "checkpoints",
              f"checkpoint epochs must lie in 0..{self.epochs}", f"integers between 0 and {self.epochs}")

    def resolved_checkpoints(self) -> tuple[int, ...]:
        if self.checkpoints:
            return tuple(sorted(set(self.checkpoints)))
        return tuple(sorted({0, self.epochs // 2, self.epochs}))


QUICK = dict(train_size=256, test_size=200, epochs=2, probes_per_class=2, updates_per_class=1)
"""``--quick``: a smoke-test run of a few seconds (flags given explicitly still win)."""


# ------------------------------------------------------------------------------------------- IDX
def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not), checking its magic number and size.

    Args:
        expected_magic: e.g. :data:`IMAGES_MAGIC` (0x00000803) or :data:`LABELS_MAGIC` (0x00000801).
    Returns:
        an array of the shape stored in the header.
    Raises:
        LldynError naming the file on a missing file, bad magic, or a size that does not match.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise LldynError("IDX file not found", file=str(path)) from None
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise LldynError(f"cannot read IDX file: {err}", file=str(path)) from None
    what = f"magic 0x{expected_magic:08x}" if expected_magic is not None else "an IDX magic number"
    if len(raw) < 4:
        raise LldynError("file too short for an IDX header", file=str(path), expected=what)
    (magic,) = struct.unpack(">I", raw[:4])
    zero, dtype_code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if expected_magic is not None and magic != expected_magic:
        raise LldynError(f"bad IDX magic number 0x{magic:08x}", file=str(path), field="magic", expected=what)
    if zero != 0 or dtype_code not in _IDX_DTYPES or ndim == 0:
        raise LldynError(f"bad IDX magic number 0x{magic:08x}", file=str(path), field="magic", expected=what)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise LldynError("truncated IDX header", file=str(path), expected=f"{ndim} dimension sizes")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != n_bytes:
        raise LldynError(f"IDX data has {len(raw) - header} bytes", file=str(path), field="size",
                         expected=f"{n_bytes} bytes for shape {tuple(shape)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``)."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    array = np.asarray(array)
    code = codes[array.dtype.newbyteorder("=")]
    data = struct.pack(">I", (code << 8) | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(_IDX_DTYPES[code]).tobytes()
    if str(path).endswith(".gz"):
        data = gzip.compress(data)
    Path(path).write_bytes(data)


# ------------------------------------------------------------------------------------------ data
class Digits(NamedTuple):
    """images: (N, 1, 28, 28) float32 in [0, 1]; labels: (N,) int64; source: where they came from."""

    images: torch.Tensor
    labels: torch.Tensor
    source: str
    is_mnist: bool


def _find_idx(folder: Path, kind: str) -> Path:
    pattern = "images-idx3-ubyte" if kind == "images" else "labels-idx1-ubyte"
    found = sorted(p for p in folder.iterdir() if pattern in p.name)
    if not found:
        raise LldynError(f"no MNIST {kind} file", file=str(folder), expected=f"a file named *{pattern}[.gz]")
    return next((p for p in found if p.name.startswith("train")), found[0])


def load_mnist(folder: str | Path) -> Digits:
    """MNIST digits from a folder with ``*images-idx3-ubyte[.gz]`` and ``*labels-idx1-ubyte[.gz]``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LldynError("MNIST data folder not found", file=str(folder),
                         expected="a folder with IDX images and labels files")
    images_path, labels_path = _find_idx(folder, "images"), _find_idx(folder, "labels")
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise LldynError(f"images are {images.shape[1]}x{images.shape[2]}", file=str(images_path),
                         field="size", expected="28x28 images")
    if labels.shape[0] != images.shape[0]:
        raise LldynError(f"{labels.shape[0]} labels for {images.shape[0]} images", file=str(labels_path),
                         field="size", expected=f"{images.shape[0]} labels")
    if labels.size and labels.max() >= N_CLASSES:
        raise LldynError(f"label {int(labels.max())} out of range", file=str(labels_path), expected="labels 0-9")
    return Digits(torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1),
                  torch.from_numpy(labels.astype(np.int64)), f"MNIST IDX files in {folder}", True)


def load_digits_28() -> Digits:
    """Offline fallback: scikit-learn's 1,797 8×8 digits, bilinearly upsampled to 28×28 (not MNIST)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False)
    images = F.pad(images, (4, 4, 4, 4)).clamp(0, 1)  # MNIST-like: a 20×20 digit centred in 28×28
    return Digits(images, torch.from_numpy(d.target.astype(np.int64)),
                  "sklearn load_digits (8x8, upsampled to 28x28) - offline fallback, NOT MNIST", False)


def load_data(config: MnistConfig) -> Digits:
    """``config.data`` (a folder of MNIST IDX files; errors if unusable), else the offline load_digits stand-in."""
    if config.data is not None:
        return load_mnist(config.data)
    return load_digits_28()


class Split(NamedTuple):
    """Training and held-out digits; each (N, 1, 28, 28) images and (N,) labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def split_data(digits: Digits, train_size: int, test_size: int, seed: int) -> tuple[Split, list[str]]:
    """Shuffle with ``seed``; the first ``train_size`` train, the next ``test_size`` are held out.

    When the data set is too small (load_digits has 1,797) both sizes shrink; the notes say so.
    """
    n = digits.labels.shape[0]
    notes = []
    if train_size + test_size > n:
        test_size = min(test_size, max(n // 4, 1))
        new_train = min(train_size, n - test_size)
        notes.append(f"only {n} images: train_size {train_size} -> {new_train}, test_size {test_size}")
        train_size = new_train
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    tr, te = order[:train_size], order[train_size:train_size + test_size]
    return Split(digits.images[tr], digits.labels[tr], digits.images[te], digits.labels[te]), notes


# ----------------------------------------------------------------------------------------- model
class LeNet(nn.Module):
    """LeNet-5 style: conv(6,5×5)-pool-conv(16,5×5)-pool-fc120-fc84-fc10, ReLU; (N,1,28,28) → (N,10).

    Inputs in [0, 1] are standardised with the usual MNIST mean and std first; without it, SGD at
    lr 1e-3 sits on the initial plateau for tens of epochs.
    """

    MEAN, STD = 0.1307, 0.3081

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.MEAN) / self.STD
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on (x, y)."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(-1) == y).float().mean())


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                batch_size: int, generator: torch.Generator) -> float:
    """One shuffled pass of minibatch SGD; returns the mean training loss."""
    model.train()
    order = torch.randperm(x.shape[0], generator=generator)
    total = 0.0
    for start in range(0, x.shape[0], batch_size):
        idx = order[start:start + batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * idx.numel()
    return total / x.shape[0]


# -------------------------------------------------------------------------------------- analysis
def per_class_sample(labels: torch.Tensor, per_class: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``per_class`` examples of each class (fewer if a class is short), class-sorted."""
    picks = []
    for c in range(N_CLASSES):
        idx = torch.nonzero(labels == c).flatten()
        picks.append(idx[torch.randperm(idx.numel(), generator=generator)[:per_class]])
    return torch.cat(picks)


def class_means(values: torch.Tensor, probe_y: torch.Tensor, update_y: torch.Tensor) -> torch.Tensor:
    """(N_o, N_u, V) → (10, 10, V): mean over probes of class a and updates of class b (NaN if empty)."""
    out = torch.full((N_CLASSES, N_CLASSES, values.shape[-1]), float("nan"), dtype=torch.float64)
    for a in range(N_CLASSES):
        for b in range(N_CLASSES):
            block = values[probe_y == a][:, update_y == b]
            if block.numel():
                out[a, b] = block.double().mean(dim=(0, 1))
    return out


class CheckpointAnalysis(NamedTuple):
    """One-step analysis at one checkpoint.

    predicted, actual: (N_o, N_u, V) Δ log π(c | x_o) after one SGD step on x_u alone.
    A: (N_o, V, V); K: (N_o, N_u, V, V); G: (N_u, V) — the terms of eq. (5).
    matrix, matrix_predicted: (10, 10) mean Δ log π(y = b | x_o of class a), update on class b.
    own_class_matrix: (10, 10) mean Δ log π(y = a | x_o of class a), update on class b.
    ntk_similarity: (10, 10) mean eNTK cosine tr K(x_o, x_u) / (‖∇_θ z(x_o)‖ ‖∇_θ z(x_u)‖) — the
        "how similar does the network find these two digits" factor of the update, free of A and G.
    """

    epoch: int
    predicted: torch.Tensor
    actual: torch.Tensor
    A: torch.Tensor
    K: torch.Tensor
    G: torch.Tensor
    matrix: torch.Tensor
    matrix_predicted: torch.Tensor
    own_class_matrix: torch.Tensor
    ntk_similarity: torch.Tensor
    pearson: float
    median_relative_error: float
    seconds: float


def analyse_checkpoint(model: nn.Module, epoch: int, probe_x: torch.Tensor, probe_y: torch.Tensor,
                       update_x: torch.Tensor, update_y: torch.Tensor, lr: float) -> CheckpointAnalysis:
    """Predicted (A·K·G) and actual one-step changes on every probe for every single-example update.

    Runs on a float64 copy of ``model`` (the first-order check needs the headroom); ``model`` is untouched.
    """
    start = time.perf_counter()
    model64 = copy.deepcopy(model).double().eval()
    xo, xu = probe_x.double(), update_x.double()
    akg = decompose(model64, xo, xu, update_y, lr=lr)
    predicted = akg.single_example
    actual = torch.stack([one_step_change(model64, xo, xu[u:u + 1], update_y[u:u + 1], lr)
                          for u in range(xu.shape[0])], dim=1)
    cmp = compare(predicted, actual)
    norm_o = torch.cat([logit_jacobian(model64, xo[i:i + 32]).flatten(1).norm(dim=1) for i in range(0, len(xo), 32)])
    norm_u = torch.cat([logit_jacobian(model64, xu[i:i + 32]).flatten(1).norm(dim=1) for i in range(0, len(xu), 32)])
    cosine = torch.diagonal(akg.K, dim1=-2, dim2=-1).sum(-1) / (norm_o[:, None] * norm_u[None, :])
    means, means_pred = class_means(actual, probe_y, update_y), class_means(predicted, probe_y, update_y)
    diag = torch.arange(N_CLASSES)
    return CheckpointAnalysis(
        epoch=epoch, predicted=predicted, actual=actual, A=akg.A, K=akg.K, G=akg.G,
        matrix=means[:, diag, diag], matrix_predicted=means_pred[:, diag, diag],
        own_class_matrix=means[diag, :, diag],
        ntk_similarity=class_means(cosine[..., None], probe_y, update_y)[..., 0],
        pearson=cmp.pearson, median_relative_error=cmp.median_relative_error,
        seconds=time.perf_counter() - start,
    )


# ------------------------------------------------------------------------------------------- run
class MnistResult(NamedTuple):
    """What :func:`run_mnist` wrote: the run directory, results.json contents and the figure paths."""

    out: Path
    results: dict[str, Any]
    figures: dict[str, Path]


def run_mnist(config: MnistConfig, out: str | Path, log: Callable[[str], None] = print) -> MnistResult:
    """Train the LeNet, analyse the checkpoints, write results.json and figures into ``out``."""
    t_start = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LldynError("--out exists and is a file", file=str(out), field="out", expected="a directory")
    digits = load_data(config)
    log(f"data: {digits.source}")
    split, notes = split_data(digits, config.train_size, config.test_size, config.seed)
    for note in notes:
        log(f"note: {note}")
    resolved = replace(config, checkpoints=config.resolved_checkpoints())
    run = RunDir.create(out, config_to_dict(resolved))

    torch.manual_seed(config.seed)
    model = LeNet()
    gen = torch.Generator().manual_seed(config.seed + 1)
    watched = pick_watched(split, config, gen)
    training = train_and_analyse(model, split, watched, resolved, run, gen, log)
    analyses, last = training.analyses, training.analyses[-1]
    figures = write_figures(analyses, watched, run.path / "figures")
    all_act = torch.cat([a.actual.flatten() for a in analyses])
    results = {
        "dataset": {"source": digits.source, "is_mnist": digits.is_mnist, "notes": notes,
                    "n_train": int(split.train_y.shape[0]), "n_test": int(split.test_y.shape[0]),
                    "n_probes": int(watched.probe_y.shape[0]), "n_updates": int(watched.update_y.shape[0])},
        "settings": config_to_dict(resolved),
        "matrix": _rows(last.matrix),
        "matrix_meaning": "matrix[a][b] = mean delta log pi(y=b | x_o of class a) after one SGD step "
                          f"(lr {config.probe_lr}) on one training example of class b; last checkpoint",
        "pearson": pearson(torch.cat([a.predicted.flatten() for a in analyses]), all_act),
        "median_relative_error": float(np.median([a.median_relative_error for a in analyses])),
        "checkpoints": [_checkpoint_summary(a, training.history) for a in analyses],
        "pairs": _pair_summaries(last, watched.probe_y, watched.update_y),
        "history": training.history,
        "figures": {k: str(v.relative_to(run.path)) for k, v in figures.items()},
        "timing_s": {"total": time.perf_counter() - t_start, "training": training.seconds,
                     "analysis": sum(a.seconds for a in analyses)},
    }
    run.write_json("results.json", results)
    log(f"pearson(predicted, actual) = {results['pearson']:.4f} over {all_act.numel()} changes; "
        f"wrote {run.path / 'results.json'} and {len(figures)} figures in {results['timing_s']['total']:.0f}s")
    return MnistResult(run.path, results, figures)


class Watched(NamedTuple):
    """The digits of the one-step analysis: probes x_o (held out, (N_o, 1, 28, 28) and (N_o,)) and the
    training examples x_u each given one update ((N_u, 1, 28, 28) and (N_u,))."""

    probe_x: torch.Tensor
    probe_y: torch.Tensor
    update_x: torch.Tensor
    update_y: torch.Tensor


def pick_watched(split: Split, config: MnistConfig, generator: torch.Generator) -> Watched:
    """``probes_per_class`` held-out digits and ``updates_per_class`` training digits of every class."""
    probe_idx = per_class_sample(split.test_y, config.probes_per_class, generator)
    update_idx = per_class_sample(split.train_y, config.updates_per_class, generator)
    return Watched(split.test_x[probe_idx], split.test_y[probe_idx],
                   split.train_x[update_idx], split.train_y[update_idx])


class Training(NamedTuple):
    """What :func:`train_and_analyse` did: one metrics row per epoch (epoch 0 is before training), the
    analysis of every checkpoint, and the seconds spent training."""

    history: list[dict[str, Any]]
    analyses: list[CheckpointAnalysis]
    seconds: float


def train_and_analyse(model: nn.Module, split: Split, watched: Watched, config: MnistConfig, run: RunDir,
                      generator: torch.Generator, log: Callable[[str], None]) -> Training:
    """Minibatch SGD with momentum for ``config.epochs`` epochs, a :class:`TrainRow` per epoch into the run,
    and :func:`analyse_checkpoint` after each epoch of ``config.checkpoints``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    steps_per_epoch = math.ceil(split.train_y.shape[0] / config.batch_size)
    history, analyses, seconds = [], [], 0.0
    for epoch in range(config.epochs + 1):
        if epoch > 0:
            t0 = time.perf_counter()
            train_loss = train_epoch(model, optimizer, split.train_x, split.train_y, config.batch_size, generator)
            seconds += time.perf_counter() - t0
        else:
            train_loss = evaluate(model, split.train_x, split.train_y)[0]
        test_loss, test_acc = evaluate(model, split.test_x, split.test_y)
        row = TrainRow(epoch * steps_per_epoch, "mnist", epoch * steps_per_epoch, train_loss, config.lr, math.nan,
                       math.nan, {"epoch": epoch, "test_loss": test_loss, "test_accuracy": test_acc})
        run.log(row)
        history.append(row.to_json())
        msg = f"epoch {epoch:3d}  train loss {train_loss:.4f}  test loss {test_loss:.4f}  test acc {test_acc:.3f}"
        if epoch in config.checkpoints:
            a = analyse_checkpoint(model, epoch, *watched, config.probe_lr)
            analyses.append(a)
            msg += f"  | one-step analysis: pearson {a.pearson:.4f} ({a.seconds:.1f}s)"
        log(msg)
    return Training(history, analyses, seconds)


def write_figures(analyses: list[CheckpointAnalysis], watched: Watched, folder: Path) -> dict[str, Path]:
    return {
        "heatmap": write_heatmap(analyses, folder / "mnist-heatmap.png"),
        "scatter": write_scatter(analyses, folder / "mnist-scatter.png"),
        "pairs": write_pairs(analyses[-1], *watched, folder / "mnist-pairs.png"),
    }


def _checkpoint_summary(a: CheckpointAnalysis, history: list[dict[str, Any]]) -> dict[str, Any]:
    return {"epoch": a.epoch, "test_accuracy": history[a.epoch]["test_accuracy"],
            "pearson": a.pearson, "median_relative_error": a.median_relative_error,
            "matrix": _rows(a.matrix), "matrix_predicted": _rows(a.matrix_predicted),
            "own_class_matrix": _rows(a.own_class_matrix), "ntk_similarity": _rows(a.ntk_similarity),
            "largest_abs_error": float((a.predicted - a.actual).abs().max()),
            "seconds": a.seconds}


def _rows(matrix: torch.Tensor) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in matrix.tolist()]


def _pair_indices(probe_y: torch.Tensor, update_y: torch.Tensor) -> list[tuple[int, int]]:
    pairs = []
    for a, b in FIGURE_PAIRS:
        o, u = torch.nonzero(probe_y == a).flatten(), torch.nonzero(update_y == b).flatten()
        if o.numel() and u.numel():
            pairs.append((int(o[0]), int(u[0])))
    return pairs


def _pair_summaries(a: CheckpointAnalysis, probe_y: torch.Tensor, update_y: torch.Tensor) -> list[dict[str, Any]]:
    return [{"probe_class": int(probe_y[o]), "update_class": int(update_y[u]),
             "predicted": a.predicted[o, u].tolist(), "actual": a.actual[o, u].tolist(),
             "G": a.G[u].tolist(), "K_diag": torch.diagonal(a.K[o, u]).tolist()}
            for o, u in _pair_indices(probe_y, update_y)]


# --------------------------------------------------------------------------------------- figures
def _save(fig: Any, path: Path) -> Path:
    return save_figure(fig, path, dpi=90, bbox_inches="tight")


def _diverging(ax: Any, matrix: np.ndarray, title: str) -> Any:
    lim = float(np.nanmax(np.abs(matrix))) or 1.0
    im = ax.imshow(matrix, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_title(title, fontsize=9)
    return im


def write_heatmap(analyses: list[CheckpointAnalysis], path: Path) -> Path:
    """Per checkpoint: actual (top) and A·K·G-predicted (bottom) 10×10 class matrices."""
    from matplotlib.figure import Figure

    n = len(analyses)
    fig = Figure(figsize=(4.2 * n, 11), layout="constrained")
    axes = fig.subplots(3, n, squeeze=False)
    for j, a in enumerate(analyses):
        rows = ((a.matrix, "actual Δ log π(y=b)"), (a.matrix_predicted, "predicted −ηAKG"),
                (a.ntk_similarity, "eNTK cosine of x_o, x_u"))
        for i, (m, kind) in enumerate(rows):
            ax = axes[i, j]
            if i < 2:
                im = _diverging(ax, m.numpy(), f"epoch {a.epoch}: {kind}")
            else:
                im = ax.imshow(m.numpy(), cmap="viridis")
                ax.set_title(f"epoch {a.epoch}: {kind}", fontsize=9)
            ax.set_xticks(range(N_CLASSES))
            ax.set_yticks(range(N_CLASSES))
            ax.set_xlabel("class b of the update x_u", fontsize=8)
            ax.set_ylabel("class a of the probe x_o", fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle("rows 1-2: mean Δ log π(y=b | x_o of class a) after one SGD step on an example of class b;"
                 " row 3: mean eNTK cosine", fontsize=10)
    return _save(fig, path)


def write_scatter(analyses: list[CheckpointAnalysis], path: Path) -> Path:
    """Predicted −ηAKG vs actual Δ log π for every (probe, update, class), one colour per checkpoint."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), layout="constrained")
    ax = fig.subplots()
    lo, hi = math.inf, -math.inf
    for a in analyses:
        x, y = a.actual.flatten().numpy(), a.predicted.flatten().numpy()
        ax.scatter(x, y, s=2, alpha=0.4, rasterized=True, label=f"epoch {a.epoch} (r = {a.pearson:.4f})")
        lo, hi = min(lo, x.min(), y.min()), max(hi, x.max(), y.max())
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--")
    ax.set_xlabel("actual Δ log π after one SGD step")
    ax.set_ylabel("predicted −η A K G")
    ax.legend(fontsize=8, markerscale=4)
    return _save(fig, path)


def write_pairs(a: CheckpointAnalysis, probe_x: torch.Tensor, probe_y: torch.Tensor, update_x: torch.Tensor,
                update_y: torch.Tensor, path: Path) -> Path:
    """One row per chosen (x_o, x_u): the two images, A(x_o), K(x_o, x_u), G(x_u), predicted vs actual."""
    from matplotlib.figure import Figure

    pairs = _pair_indices(probe_y, update_y) or [(0, 0)]
    fig = Figure(figsize=(19, 3.1 * len(pairs)), layout="constrained")
    axes = fig.subplots(len(pairs), 6, squeeze=False)
    classes = np.arange(N_CLASSES)
    for row, (o, u) in zip(axes, pairs):
        row[0].imshow(probe_x[o, 0].numpy(), cmap="gray_r")
        row[0].set_title(f"x_o (class {int(probe_y[o])})", fontsize=9)
        row[1].imshow(update_x[u, 0].numpy(), cmap="gray_r")
        row[1].set_title(f"x_u (label {int(update_y[u])})", fontsize=9)
        for ax in row[:2]:
            ax.axis("off")
        fig.colorbar(_diverging(row[2], a.A[o].numpy(), "A(x_o) = I − 1πᵀ"), ax=row[2], fraction=0.046)
        fig.colorbar(_diverging(row[3], a.K[o, u].numpy(), "K(x_o, x_u) eNTK"), ax=row[3], fraction=0.046)
        row[4].bar(classes, a.G[u].numpy(), color="tab:purple")
        row[4].set_title("G(x_u) = π − e_y", fontsize=9)
        row[5].bar(classes - 0.2, a.actual[o, u].numpy(), width=0.4, label="actual")
        row[5].bar(classes + 0.2, a.predicted[o, u].numpy(), width=0.4, label="−ηAKG")
        row[5].set_title("Δ log π(c | x_o)", fontsize=9)
        row[5].legend(fontsize=7)
        for ax in row[2:]:
            ax.set_xticks(classes)
            ax.tick_params(labelsize=7)
    fig.suptitle(f"A, K, G for chosen pairs at epoch {a.epoch}", fontsize=10)
    return _save(fig, path)
