"""bench/gpu.py (the one-shot GPU benchmark) in its CPU mode on a tiny config, so that it cannot rot."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_runs_in_cpu_mode_on_a_tiny_config():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--cpu-tiny"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for part in ("== scoring", "== decompose", "== tracking", "== training", "total "):
        assert part in out, out
    assert "tiny Qwen2 config" in out and "float32 on CPU" in out
    # every part measured something: ratios and tokens/s are printed as numbers
    assert "x vs (a)" in out and "tokens/s" in out and "lldyn steps/s / TRL steps/s" in out
    gap = float(out.split("max |packed - padded| ")[1].split()[0])
    assert gap < 1e-3  # float32 on the CPU: the packed and padded engines agree
    rel = float(out.split("max |jvp - naive| / max |naive| ")[1].split(";")[0])
    assert rel < 1e-4
