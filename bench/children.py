"""What the side-by-side benches share: each workload runs in a fresh child process of the bench script
(``--child KIND --params JSON``), which prints one JSON line; the parent interleaves the children."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys


def run_child(script: str, kind: str, params: dict) -> dict:
    """Run ``script --child kind --params JSON`` and return the JSON its last stdout line holds; a failed
    child prints its output's tail and stops the bench."""
    proc = subprocess.run([sys.executable, script, "--child", kind, "--params", json.dumps(params)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{kind} run failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def preload(threads: int, modules: tuple[str, ...]) -> None:
    """Every child imports the same libraries before its clock starts, and uses the same thread count
    (0: torch's default)."""
    import torch

    for name in modules:
        importlib.import_module(name)
    if threads > 0:
        torch.set_num_threads(threads)
