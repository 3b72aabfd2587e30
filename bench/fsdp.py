"""Benchmark: two-process FSDP2 ``lldyn train --fsdp`` (torchrun, gloo, CPU) against the same run in one process.

Runs SFT and DPO (float32, probes every step, checkpoints) once in one process and once sharded over two
processes with ``torchrun --nproc_per_node 2 -m lldyn.cli train --fsdp``, then prints the largest absolute
differences of the logged losses and statistics, of the tracked probe log-probs, of the reference
log-probs (DPO) and of the final weights, next to the largest magnitudes they are measured at, and the
wall-clock ratio. Goal (issue #15): losses and probe values equal to one process within 1e-4 (float32).
Asserts nothing.

    python bench/fsdp.py [--model tiny-random-llama] [--steps 3] [--prompts 5]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lldyn
from lldyn.checkpoint import latest_checkpoint
from lldyn.rundir import RunDir

SRC = str(Path(lldyn.__file__).resolve().parents[1])


def env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": SRC, "HOME": str(tmp)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(tmp: Path, command: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=tmp, env=env(tmp), capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    return time.perf_counter() - t0


def differences(one: Path, two: Path) -> dict[str, tuple[float, float]]:
    """name → (largest |difference|, largest |value|)."""
    from safetensors.torch import load_file

    out: dict[str, tuple[float, float]] = {}

    def add(name: str, a: float, b: float) -> None:
        d, m = out.get(name, (0.0, 0.0))
        out[name] = (max(d, abs(a - b)), max(m, abs(a)))

    for ra, rb in zip(*([r.to_json() for r in RunDir(d).metrics_rows()] for d in (one, two))):
        for key, va in ra.items():
            if isinstance(va, float) and key not in ("seconds", "probe_seconds"):
                add("loss" if key == "loss" else "metrics (all)", va, rb[key])
    for ra, rb in zip(RunDir(one).probe_table(), RunDir(two).probe_table()):
        add("probe log-probs", ra["logp"], rb["logp"])
    ref = [one / "ref_logps-0.jsonl", two / "ref_logps-0.jsonl"]
    if ref[0].is_file():
        for la, lb in zip(ref[0].read_text().splitlines(), ref[1].read_text().splitlines()):
            a, b = json.loads(la), json.loads(lb)
            add("reference log-probs", a["chosen"], b["chosen"])
            add("reference log-probs", a["rejected"], b["rejected"])
    wa, wb = (load_file(str(latest_checkpoint(d / "checkpoints") / "model.safetensors")) for d in (one, two))
    for k in wa:
        out["final weights"] = (max(out.get("final weights", (0.0, 0.0))[0], float((wa[k] - wb[k]).abs().max())),
                                max(out.get("final weights", (0.0, 0.0))[1], float(wa[k].abs().max())))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-random-llama")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=5, help="probe prompts (5: uneven over 2 ranks)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-fsdp-"))
    py = sys.executable
    run(tmp, [py, "-m", "lldyn.cli", "probes", "build", "--data", "builtin", "--out", "probes.jsonl",
              "--limit", str(args.prompts)])
    common = ["--model", args.model, "--data", "builtin:train", "--limit", "12", "--max-length", "96",
              "--max-prompt-tokens", "48", "--lr", "1e-3", "--batch-size", "4", "--steps", str(args.steps),
              "--probes", "probes.jsonl", "--eval-every", "1", "--checkpoint-every", "2"]
    print(f"model {args.model}, {args.steps} steps, batch 4, {args.prompts} probe prompts, float32, CPU; in {tmp}")
    for method in ("sft", "dpo"):
        cmd = ["-m", "lldyn.cli", "train", *common, "--method", method]
        t1 = run(tmp, [py, *cmd, "--out", f"{method}-one"])
        t2 = run(tmp, [py, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                       "--master_port", str(free_port()), *cmd, "--fsdp", "--out", f"{method}-two"])
        print(f"\n{method}: one process {t1:.1f} s, two FSDP2 processes {t2:.1f} s (ratio {t2 / t1:.2f}; "
              "not a speed: start-up and a shared CPU dominate here)")
        for name, (diff, mag) in differences(tmp / f"{method}-one", tmp / f"{method}-two").items():
            print(f"  {name:22s} max |two − one| = {diff:.3g}   (values up to {mag:.3g})")


if __name__ == "__main__":
    main()
