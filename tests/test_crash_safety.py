"""Crash safety: SIGKILL a real training run five times, resume, get the same numbers;
a full disk while writing a checkpoint leaves the previous one intact.

The killed run is ``lldyn train`` in a subprocess (sft_dpo on the tiny model, a checkpoint and a
probe evaluation after every step). The kill moments are drawn from a seeded RNG: a number of
``metrics.jsonl`` rows to wait for, then a random sleep, so kills land while the run is loading,
training, scoring probes, appending rows or writing a checkpoint. After every kill the two
append-only files are read strictly (no torn row anywhere, no duplicated key); after the last
resume every loss and probe log-prob equals the uninterrupted run's within 1e-6.
"""
from __future__ import annotations

import errno
import importlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from lldyn.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from lldyn.cli import main
from lldyn.errors import LldynError
from lldyn.io import read_jsonl
from lldyn.models import build_tiny_model

TRAIN = ["train", "--model", "tiny-random-llama", "--method", "sft_dpo", "--data", "builtin:train", "--limit", "8",
         "--batch-size", "2", "--sft-steps", "5", "--steps", "6", "--lr", "1e-3", "--checkpoint-every", "1",
         "--eval-every", "1", "--probes", "probes.jsonl", "--max-length", "96", "--max-prompt-tokens", "48"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
N_KILLS = 5
TRAIN_KEYS = ("loss", "lr", "grad_norm", "chosen_logp", "rejected_logp", "margin", "reward_acc")


def launch(root: Path, out: str, resume: bool) -> subprocess.Popen:
    """``lldyn train`` in the background; its stderr goes to ``root/<out>-N.log`` (a pipe could fill and block)."""
    argv = [sys.executable, "-m", "lldyn.cli", *TRAIN, "--out", out] + (["--resume"] if resume else [])
    log = root / f"{out}-{len(list(root.glob(f'{out}-*.log')))}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(argv, cwd=root, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def n_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def check_files(run: Path) -> tuple[list[dict], list[dict]]:
    """Both append-only files: whole rows only (strict reading, newline-terminated), no duplicated key."""
    tables = []
    for name, key in (("metrics.jsonl", ("step", "event")), ("probe_table.jsonl", ("step", "prompt_id", "family"))):
        path = run / name
        if not path.exists():
            tables.append([])
            continue
        raw = path.read_bytes()
        assert not raw or raw.endswith(b"\n"), f"torn last row in {name}: {raw[-80:]!r}"
        rows = list(read_jsonl(path, strict=True, torn_tail=False))
        assert len(rows) == raw.count(b"\n"), f"{name}: a line is not one JSON row"
        dup = [k for k, n in Counter(tuple(r[k_] for k_ in key) for r in rows).items() if n > 1]
        assert not dup, f"duplicated rows in {name}: {dup[:3]}"
        tables.append(rows)
    for ckpt in list_checkpoints(run / "checkpoints"):  # every complete checkpoint is loadable
        from safetensors.torch import load_file

        assert load_file(str(ckpt / "model.safetensors"))
    return tables[0], tables[1]


def run_to_end(root: Path, out: str, resume: bool) -> None:
    proc = launch(root, out, resume)
    assert proc.wait(timeout=600) == 0, proc.log.read_text()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, builtin_probes) -> Path:
    root = tmp_path_factory.mktemp("crash")
    shutil.copy(builtin_probes, root / "probes.jsonl")
    return root


def test_sigkill_at_five_random_points_then_resume_equals_uninterrupted(workdir):
    run_to_end(workdir, "full", resume=False)
    full_metrics, full_probes = check_files(workdir / "full")
    total = len(full_metrics)
    assert total == 23  # 11 train rows and 12 probe evaluations (step 0, every step): room for 5 kills

    # Five kill points spread over the run: wait until metrics.jsonl holds `target` rows written by this
    # process (it starts by cutting the files back to its checkpoint), then sleep 0-50 ms, so kills land
    # in training, probe scoring, appending and checkpointing.
    rng = random.Random(20250409)
    targets = sorted(rng.sample(range(2, total - 1), N_KILLS))
    cut = workdir / "cut"
    kills = []
    for i, target in enumerate(targets):
        launched = time.time()
        proc = launch(workdir, "cut", resume=i > 0)
        metrics = cut / "metrics.jsonl"
        while proc.poll() is None and not (metrics.exists() and metrics.stat().st_mtime >= launched
                                           and n_lines(metrics) >= target):
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))
        assert proc.poll() is None, f"run {i} ended before its kill point: {proc.log.read_text()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        rows, probe_rows = check_files(cut)
        kills.append((target, len(rows), len(probe_rows), len(list_checkpoints(cut / "checkpoints"))))
    print("kills (target rows, metrics rows, probe rows, checkpoints after the kill):", kills)
    assert kills[-1][1] > kills[0][1]  # later kills hit later in the run
    run_to_end(workdir, "cut", resume=True)
    metrics, probes = check_files(cut)
    assert not [p.name for p in (cut / "checkpoints").iterdir() if p.name.startswith(".")], "stale temporary checkpoints"

    # The same rows in the same order, and the same numbers.
    assert [(r["step"], r["event"]) for r in metrics] == [(r["step"], r["event"]) for r in full_metrics]
    for a, b in zip(full_metrics, metrics):
        keys = [k for k in a if k in TRAIN_KEYS or k.startswith(("family_mean/", "family_delta/", "signal/"))]
        assert keys or a["event"] not in ("train", "probes")
        for k in keys:
            assert b[k] == pytest.approx(a[k], abs=1e-6), (a["step"], a["event"], k)
    assert [(r["step"], r["prompt_id"], r["family"]) for r in probes] == \
        [(r["step"], r["prompt_id"], r["family"]) for r in full_probes]
    assert max(abs(a["logp"] - b["logp"]) for a, b in zip(full_probes, probes)) <= 1e-6
    assert json.loads((cut / "initial_samples.jsonl").read_text().splitlines()[0]) == \
        json.loads((workdir / "full" / "initial_samples.jsonl").read_text().splitlines()[0])


# --------------------------------------------------------------------------- disk full


def _trained_model():
    model = build_tiny_model(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()
    return model, optimizer


def _contents(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("failing", ["safetensors.torch.save_file", "torch.save"])
def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failing):
    model, optimizer = _trained_model()
    first = save_checkpoint(tmp_path, 1, model, optimizer, state={"phase": 0})
    before = _contents(first)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # the next checkpoint would differ
    module, name = failing.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(module), name, _enospc)
    with pytest.raises(LldynError, match="cannot write checkpoint: No space left on device") as info:
        save_checkpoint(tmp_path, 2, model, optimizer, state={"phase": 0})
    assert "step-00000002" in str(info.value) and "previous checkpoint is left intact" in str(info.value)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001"]  # no partial step-2, no temporary dir
    assert _contents(first) == before
    fresh = build_tiny_model(1)
    assert load_checkpoint(first, fresh, restore_rng=False)["step"] == 1
    want, _ = _trained_model()
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), want.parameters()))


def test_a_non_io_failure_while_checkpointing_is_not_reported_as_disk_full(tmp_path, monkeypatch):
    model, optimizer = _trained_model()

    def bug(*args, **kwargs):
        raise TypeError("not serialisable")

    monkeypatch.setattr(torch, "save", bug)
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, 1, model, optimizer)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_during_training_stops_cleanly_and_resume_finishes(tmp_path, monkeypatch, capsys):
    """The CLI prints one line and exits 2; the last good checkpoint survives; --resume completes the run."""
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = {"n": 0}

    def fail_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            _enospc()
        return real(*args, **kwargs)

    monkeypatch.chdir(tmp_path)
    argv = ["train", "--model", "tiny-random-llama", "--method", "sft", "--data", "builtin:train", "--limit", "6",
            "--batch-size", "2", "--steps", "4", "--lr", "1e-3", "--checkpoint-every", "1", "--max-length", "64",
            "--max-prompt-tokens", "32", "--no-initial-sample", "--out", "run"]
    monkeypatch.setattr(safetensors.torch, "save_file", fail_third)
    assert main(argv) == 2
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\n")[-1]  # the error has a line of its own after the closed progress bar
    assert "Traceback" not in err and err.count("error:") == 1 and last.startswith("lldyn train: error: ")
    assert "checkpoints/step-00000003: cannot write checkpoint: No space left on device" in last
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step-00000001", "step-00000002"]
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert main(argv + ["--resume"]) == 0
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["event"] == "train"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_real_full_disk_on_a_small_tmpfs(tmp_path):
    """The same on a real 1 MB filesystem (root only): torch.save and safetensors report ENOSPC in their own
    ways (a RuntimeError raised while handling the OSError; a SafetensorError naming "os error 28")."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("needs root and permission to mount a tmpfs (a real full disk)")
    try:
        model, optimizer = _trained_model()
        first = save_checkpoint(disk, 1, model, optimizer)
        before = _contents(first)
        free = shutil.disk_usage(disk).free
        with open(disk / "filler", "wb") as fh:  # leave less room than one checkpoint needs
            fh.write(b"\0" * (free - 64 * 1024))
        with pytest.raises(LldynError, match="No space left on device"):
            save_checkpoint(disk, 2, model, optimizer)
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "step-00000001"]
        assert _contents(first) == before
        assert load_checkpoint(first, build_tiny_model(1), restore_rng=False)["step"] == 1
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_failed_append_leaves_no_torn_row(tmp_path, monkeypatch):
    """append_jsonl on a full disk: the error is one LldynError and the file is cut back to whole rows."""
    import builtins

    from lldyn.io import append_jsonl

    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, [{"step": 1}])
    real_open = builtins.open

    class HalfWriter:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def tell(self):
            return self.fh.tell()

        def truncate(self, size):
            return self.fh.truncate(size)

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            _enospc()

    monkeypatch.setattr(builtins, "open", lambda p, mode="r", *a, **k: HalfWriter(real_open(p, mode, *a, **k))
                        if mode == "ab" else real_open(p, mode, *a, **k))
    with pytest.raises(LldynError, match="metrics.jsonl: cannot append: No space left on device"):
        append_jsonl(path, [{"step": 2, "loss": 1.5}])
    monkeypatch.undo()
    assert path.read_text() == '{"step": 1}\n'
