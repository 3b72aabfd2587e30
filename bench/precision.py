"""Measurement: how far bfloat16 scoring is from float32, per response, over the built-in probe set.

Scores every static probe of ``lldyn probes build --data builtin --limit 64`` (704 responses) with SmolLM2 three
ways and prints, per probe family and over all probes, the max and median |Δ log π| against float32:

  bf16 weights — ``--dtype bfloat16``: the model's weights and activations in bfloat16; the engine's
                 log-softmax and sums in float32 (what ``lldyn train/score --dtype bfloat16`` computes);
  autocast     — float32 weights under ``torch.autocast(bfloat16)``, the way accelerate runs a TRL trainer's
                 forward with ``bf16=True`` (what TRL's own logged log-probs see; lldyn's callback inside such a
                 trainer calls the decoder directly, outside the autocast wrapper, and records float32).

    python bench/precision.py [--limit 64] [--model smollm2-135m-instruct]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lldyn.models import ModelConfig, load_model  # noqa: E402
from lldyn.probes import ProbeSet  # noqa: E402
from lldyn.scoring import ScoreConfig, ScoreRequest, score  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=64, help="probe prompts (lldyn probes build --limit)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args()
    from lldyn.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probes.jsonl")
        assert cli(["probes", "build", "--data", "builtin", "--out", path, "--limit", str(args.limit)]) == 0
        probes = list(ProbeSet.load(path))
    reqs = [ScoreRequest(p.prompt, p.response) for p in probes]
    cfg = ScoreConfig()
    values: dict[str, list[float]] = {}
    lm = load_model(ModelConfig(name=args.model))
    t = time.perf_counter()
    base = score(lm.model, lm.tokenizer, reqs, cfg)
    values["float32"] = [r.logp for r in base]
    print(f"float32: {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values["autocast"] = [r.logp for r in score(lm.model, lm.tokenizer, reqs, cfg)]
    print(f"autocast bf16: {time.perf_counter() - t:.1f} s")
    del lm
    lm = load_model(ModelConfig(name=args.model, dtype="bfloat16"))
    t = time.perf_counter()
    values["bf16 weights"] = [r.logp for r in score(lm.model, lm.tokenizer, reqs, cfg)]
    print(f"bf16 weights: {time.perf_counter() - t:.1f} s")

    families = sorted({p.family for p in probes})
    print(f"\n{args.model}, {len(reqs)} probe responses ({args.limit} prompts), |Δ log π| vs float32 in nats:")
    print("| family | n | mean log π (float32) | bf16 weights: max | median | autocast: max | median |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for fam in families + ["all"]:
        idx = [i for i, p in enumerate(probes) if fam in ("all", p.family)]
        row = [f"| {fam} | {len(idx)} | {statistics.mean(values['float32'][i] for i in idx):.2f}"]
        for kind in ("bf16 weights", "autocast"):
            d = [abs(values[kind][i] - values["float32"][i]) for i in idx]
            row.append(f"{max(d):.3f} | {statistics.median(d):.3f}")
        print(" | ".join(row) + " |")
    rel = [abs(values["bf16 weights"][i] - values["float32"][i]) / max(1.0, abs(values["float32"][i]))
           for i in range(len(reqs))]
    per_tok = [abs(values["bf16 weights"][i] - values["float32"][i]) / base[i].n_tokens for i in range(len(reqs))]
    print(f"\nbf16 weights, relative |Δ| / max(1, |log π|): max {max(rel):.4f}, median {statistics.median(rel):.4f}; "
          f"|Δ| per response token: max {max(per_tok):.4f}, median {statistics.median(per_tok):.4f}")


if __name__ == "__main__":
    main()
