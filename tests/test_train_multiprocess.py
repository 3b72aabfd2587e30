"""`lldyn train` on two processes (`accelerate launch`, gloo on the CPU) gives the one-process run's numbers.

Data parallelism splits every micro-batch of ``batch_size`` rows over the ranks (rows ``rank::2``) and
averages the gradients, so the metrics rows (losses, lr, gradient norm, log-probs, probe family means),
the probe table, the reference log-probs and the final weights equal those of the same config run in one
process, up to float reduction order. Both runs go through the real CLI in subprocesses with the same
environment (one thread each), so they differ in nothing but the number of processes.

Tolerance: 1e-5, relative for log-probs and statistics; a *difference* of log-probs (a margin, a reward,
a family's change since step 0) is compared at the scale of the log-probs it is made of (|log π| ≈ 300
here, where float32 itself only resolves 3e-5).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import free_port, max_weight_difference, subprocess_env

pytest.importorskip("accelerate")
import torch.distributed  # noqa: E402

from lldyn.rundir import RunDir  # noqa: E402

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is needed for a two-process run on CPU")

TINY = ["--model", "tiny-random-llama", "--data", "builtin:train", "--limit", "12", "--max-length", "96",
        "--max-prompt-tokens", "48", "--lr", "1e-3", "--no-initial-sample"]
TIMING = ("seconds", "probe_seconds")
REL = 1e-5




def one_process(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lldyn.cli", "train", *args], cwd=tmp, env=subprocess_env(tmp),
                          capture_output=True, text=True, timeout=300)


def two_processes(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    # `--cpu` would run a single process (accelerate's multi-CPU launcher needs MPI).
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", str(free_port()), "-m", "lldyn.cli", "train", *args],
                          cwd=tmp, env=subprocess_env(tmp), capture_output=True, text=True, timeout=300)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, "\n".join(line for line in proc.stderr.splitlines() if "Warning" not in line)[-4000:]
    return proc


def scale(key: str, row: dict) -> float:
    """The magnitude a value is compared at (see the module docstring)."""
    if key in ("margin", "chosen_reward", "rejected_reward"):
        return abs(row["chosen_logp"])
    for prefix in ("family_delta/", "squeeze/d_logp_"):  # squeeze/d_logp_chosen is the change of family chosen
        if key.startswith(prefix):
            return abs(row["family_mean/" + key[len(prefix):]])
    return abs(row[key])


def assert_same_metrics(one: Path, two: Path) -> None:
    a, b = ([r.to_json() for r in RunDir(d).metrics_rows()] for d in (one, two))
    assert [(r["step"], r["event"]) for r in a] == [(r["step"], r["event"]) for r in b]
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb), set(ra) ^ set(rb)
        for key, va in ra.items():
            if key in TIMING:
                continue
            if isinstance(va, float):
                assert abs(rb[key] - va) <= REL * max(scale(key, ra), 1e-1), (ra["step"], ra["event"], key, va, rb[key])
            else:
                assert rb[key] == va, (ra["step"], key)






def assert_written_once(run: Path) -> None:
    """Rank 0 alone wrote: no duplicated rows, no leftover temporary files."""
    metrics = Counter(RunDir(run).events())
    table = Counter((r["step"], r["prompt_id"], r["family"]) for r in RunDir(run).probe_table())
    assert max(metrics.values()) == 1 and (not table or max(table.values()) == 1)
    assert not [p for p in run.rglob(".*") if p.name.startswith((".tmp", ".old"))]


def test_each_rank_takes_its_own_rows_of_a_micro_batch():
    from lldyn.distributed import Processes

    batch = list("abcdef")
    assert [Processes(rank, 2).shard(batch) for rank in range(2)] == [list("ace"), list("bdf")]
    assert Processes().shard(batch) == batch


@pytest.fixture(scope="module")
def dpo_runs(tmp_path_factory):
    """DPO with probes and checkpoints, once in one process and once in two."""
    tmp = tmp_path_factory.mktemp("dpo")
    ok(subprocess.run([sys.executable, "-m", "lldyn.cli", "probes", "build", "--data", "builtin", "--out",
                       str(tmp / "probes.jsonl"), "--limit", "2"], env=subprocess_env(tmp), capture_output=True, text=True))
    args = [*TINY, "--method", "dpo", "--steps", "4", "--batch-size", "4", "--probes", "probes.jsonl",
            "--eval-every", "2", "--checkpoint-every", "2"]
    one = ok(one_process(tmp, *args, "--out", "one"))
    two = ok(two_processes(tmp, *args, "--out", "two"))
    return tmp, args, one, two


def test_two_process_dpo_equals_one_process(dpo_runs):
    tmp, _, one, two = dpo_runs
    assert "trained 4 steps on 2 processes" in two.stdout and "trained 4 steps;" in one.stdout
    assert_same_metrics(tmp / "one", tmp / "two")
    train = [r.to_json() for r in RunDir(tmp / "two").train_rows()]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert {"loss", "lr", "grad_norm", "chosen_logp", "rejected_logp", "margin", "reward_acc"} <= set(train[0])
    assert train[-1]["loss"] < train[0]["loss"]  # it trained
    probes = [r.to_json() for r in RunDir(tmp / "two").probe_summaries()]
    assert [r["step"] for r in probes] == [0, 2, 4] and "family_mean/chosen" in probes[0]

    ta, tb = RunDir(tmp / "one").probe_table(), RunDir(tmp / "two").probe_table()
    assert [(r["step"], r["prompt_id"], r["family"]) for r in ta] == [(r["step"], r["prompt_id"], r["family"])
                                                                      for r in tb]
    for ra, rb in zip(ta, tb):  # each rank scored one prompt's probes; rank 0 wrote them all
        assert rb["logp"] == pytest.approx(ra["logp"], rel=REL) and rb["n_tokens"] == ra["n_tokens"]
    ref_a = [json.loads(x) for x in (tmp / "one" / "ref_logps-0.jsonl").read_text().splitlines()]
    ref_b = [json.loads(x) for x in (tmp / "two" / "ref_logps-0.jsonl").read_text().splitlines()]
    assert [r["id"] for r in ref_a] == [r["id"] for r in ref_b]
    for ra, rb in zip(ref_a, ref_b):
        assert (rb["chosen"], rb["rejected"]) == pytest.approx((ra["chosen"], ra["rejected"]), rel=REL)
    assert sorted(p.name for p in (tmp / "two" / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    assert max_weight_difference(tmp / "one", tmp / "two") <= 1e-5
    assert_written_once(tmp / "two")


def test_two_process_resume_equals_uninterrupted(dpo_runs, tmp_path):
    """A two-process run killed after step 4's rows but before its checkpoint resumes from step 2 (every rank
    loads it, rank 0 drops the later rows) and ends where the uninterrupted runs ended."""
    tmp, args, _, _ = dpo_runs
    shutil.copy(tmp / "probes.jsonl", tmp_path / "probes.jsonl")
    shutil.copytree(tmp / "two", tmp_path / "two")  # the same relative --out, hence the same config
    shutil.rmtree(tmp_path / "two" / "checkpoints" / "step-00000004")
    ok(two_processes(tmp_path, *args, "--out", "two", "--resume"))
    assert_same_metrics(tmp / "two", tmp_path / "two")
    assert_same_metrics(tmp / "one", tmp_path / "two")
    assert_written_once(tmp_path / "two")
    assert max_weight_difference(tmp / "two", tmp_path / "two") <= 1e-6
    assert max_weight_difference(tmp / "one", tmp_path / "two") <= 1e-5


def test_two_process_run_into_a_used_directory_is_one_clear_error(dpo_runs):
    """Rank 0 checks the run directory; its refusal reaches the other rank, which stops with the same line."""
    tmp, args, _, _ = dpo_runs
    before = (tmp / "two" / "metrics.jsonl").read_text()
    proc = two_processes(tmp, *args, "--out", "two")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lldyn train: error:")]
    # Both ranks raise the same error; torchrun may stop rank 1 before it prints, once rank 0 exited.
    assert errors and len(set(errors)) == 1 and "already holds a run" in errors[0]
    assert "[rank" not in proc.stderr  # no rank died with a traceback
    assert (tmp / "two" / "metrics.jsonl").read_text() == before


def test_two_process_sft_with_gradient_accumulation_equals_one_process(tmp_path):
    args = [*TINY, "--method", "sft", "--steps", "3", "--batch-size", "2", "--grad-accum", "2", "--optimizer", "sgd",
            "--lr", "1e-2"]
    ok(one_process(tmp_path, *args, "--out", "one"))
    ok(two_processes(tmp_path, *args, "--out", "two"))
    assert_same_metrics(tmp_path / "one", tmp_path / "two")
    assert [step for step, _ in RunDir(tmp_path / "two").events()] == [1, 2, 3]
    assert max_weight_difference(tmp_path / "one", tmp_path / "two") <= 1e-5
    assert_written_once(tmp_path / "two")


def test_batch_size_that_does_not_split_over_the_processes_is_refused(tmp_path):
    args = [*TINY, "--method", "dpo", "--steps", "1", "--batch-size", "3", "--out", "run"]
    proc = two_processes(tmp_path, *args)
    assert proc.returncode != 0  # the launcher's own status (1) once a process failed
    errors = {line for line in proc.stderr.splitlines() if line.startswith("lldyn train: error:")}
    assert errors == {"lldyn train: error: field 'batch_size': batch size 3 does not split evenly over 2 processes "
                      "(expected a multiple of 2 (--batch-size is the global micro-batch; each process takes "
                      "batch_size / 2 rows))"}
    assert not (tmp_path / "run").exists()
    # Each process exits 2 with that one line, before it waits on another: seen here as one process that
    # torchrun would start (rank 0 of 2), which returns without any other process running.
    rank0 = subprocess.run([sys.executable, "-m", "lldyn.cli", "train", *args], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120, env={**subprocess_env(tmp_path), "WORLD_SIZE": "2", "RANK": "0",
                                                        "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                                                        "MASTER_PORT": str(free_port())})
    assert rank0.returncode == 2 and rank0.stderr.strip().splitlines() == sorted(errors)
    assert not (tmp_path / "run").exists()


def test_two_process_non_finite_loss_stops_every_rank_with_the_last_good_weights(tmp_path):
    """An absurd learning rate makes step 2's loss NaN: both ranks stop together before applying it, rank 0
    keeps step 1's weights and logs the stop, as one process does."""
    args = [*TINY, "--method", "sft", "--steps", "4", "--batch-size", "2", "--lr", "1e30", "--optimizer", "sgd",
            "--max-grad-norm", "0"]
    proc = two_processes(tmp_path, *args, "--out", "run")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lldyn train: error:")]
    assert errors and len(set(errors)) == 1 and "non-finite loss, gradient or weights at step 2" in errors[0]
    assert "[rank" not in proc.stderr
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-00000001"]
    assert RunDir(tmp_path / "run").events() == [(1, "train"), (2, "stopped")]
