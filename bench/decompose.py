"""Benchmark: first-order prediction of one step's Δ log π for P probes, forward mode vs one backward per probe.

On SmolLM2-135M-Instruct, takes a real SGD step (SFT loss on 4 built-in pairs, all 135M parameters),
Δθ = θ_after − θ_before, and predicts every probe's Δ log π = ⟨∇θ log π(probe), Δθ⟩ by

  jvp    — lldyn.decompose.first_order_prediction: torch.func.jvp over the engine, probes batched,
  naive  — lldyn.decompose.naive_first_order_prediction: one backward per probe, dot with Δθ.

The probes are a real probe set (built-in data, rule rephraser): 64 probes over 6 prompts, every family.
The naive loop is slow, so it is timed on a spread subset and scaled to P (said in the output); the two
are compared on that subset. Also prints the actual change (engine, after − before) vs the prediction.
Goal (issue 6): jvp ≥ P/3 ≈ 21× faster than naive, same numbers (≤ 1e-4 relative). Asserts nothing.

    python bench/decompose.py [--probes 64] [--naive 8] [--lr 1e-4]
"""
from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lldyn.data import load_preferences  # noqa: E402
from lldyn.decompose import (  # noqa: E402
    compare,
    first_order_prediction,
    naive_first_order_prediction,
    trainable_parameters,
)
from lldyn.models import ModelConfig, load_model  # noqa: E402
from lldyn.probes import build_probes  # noqa: E402
from lldyn.rephrase import RuleRephraser  # noqa: E402
from lldyn.scoring import Encoder, ScoreConfig, ScoreRequest, collate, score, sequence_logps  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def real_sgd_delta(model, tokenizer, pairs, lr: float) -> dict[str, torch.Tensor]:
    """One SGD step on the SFT loss of ``pairs``; returns Δθ and puts the model back at θ_before."""
    before = {n: p.detach().clone() for n, p in trainable_parameters(model).items()}
    enc = Encoder(tokenizer, ScoreConfig())
    batch = collate([enc.pair(p.prompt, p.chosen) for p in pairs], tokenizer.pad_token_id)
    (-sequence_logps(model, batch).logps.mean()).backward()
    torch.optim.SGD(model.parameters(), lr=lr).step()
    model.zero_grad(set_to_none=True)
    delta = {n: p.detach() - before[n] for n, p in trainable_parameters(model).items()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(before[n])
    return delta


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--probes", type=int, default=64)
    ap.add_argument("--naive", type=int, default=8, help="probes the naive loop is timed on (scaled to --probes)")
    ap.add_argument("--lr", type=float, default=1e-4)
    args = ap.parse_args()

    lm = load_model(ModelConfig())
    model, tok = lm.model, lm.tokenizer
    pairs = load_preferences("builtin")
    train, test = pairs[:-20], pairs[-20:]
    per_prompt = 11
    n_prompts = -(-args.probes // per_prompt)
    probes = list(build_probes(train, test, RuleRephraser(train), limit=n_prompts))[: args.probes]
    P = len(probes)
    enc = Encoder(tok, ScoreConfig())
    lengths = [enc.pair(p.prompt, p.response) for p in probes]
    n_tok = sum(len(e.prompt_ids) + len(e.response_ids) for e in lengths)
    update = train[-4:]  # training batch: pairs that are not probe prompts
    print(f"SmolLM2-135M-Instruct, {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters; "
          f"{P} probes over {n_prompts} prompts ({n_tok} tokens, mean {n_tok / P:.0f}/probe); "
          f"torch threads {torch.get_num_threads()}")

    delta = real_sgd_delta(model, tok, update, args.lr)
    print(f"Δθ: one SGD step, lr {args.lr:g}, SFT on {len(update)} pairs, "
          f"‖Δθ‖ = {sum(float((d.double() ** 2).sum()) for d in delta.values()) ** 0.5:.3e}")

    first_order_prediction(model, tok, probes[:2], delta)  # warm-up
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t_jvp, fast = timed(lambda: first_order_prediction(model, tok, probes, delta))
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fast = fast.predicted[0]

    sub = sorted({round(i * (P - 1) / max(args.naive - 1, 1)) for i in range(args.naive)})
    t_sub, naive = timed(lambda: naive_first_order_prediction(model, tok, [probes[i] for i in sub], delta))
    t_naive = t_sub / len(sub) * P
    rel = ((fast[sub] - naive).abs() / naive.abs().clamp_min(1e-12)).max()
    rel_scale = (fast[sub] - naive).abs().max() / naive.abs().max()

    print(f"jvp (forward mode, batched) : {t_jvp:8.2f} s for {P} probes  ({t_jvp / P * 1e3:7.1f} ms/probe)")
    print(f"naive (1 backward / probe)  : {t_naive:8.2f} s for {P} probes  ({t_sub / len(sub) * 1e3:7.1f} ms/probe; "
          f"timed on {len(sub)} probes = {t_sub:.2f} s, scaled x{P / len(sub):.1f})")
    print(f"speed-up                    : {t_naive / t_jvp:6.2f}x   (goal >= {P / 3:.0f}x)")
    print(f"max relative |jvp - naive| on the {len(sub)} probes: per probe {float(rel):.2e}, "
          f"vs largest {float(rel_scale):.2e} (goal <= 1e-4)")
    print(f"peak RSS growth during the jvp: {(rss1 - rss0) / 1024:.0f} MiB")

    # The actual change, for context: engine before vs after the step. The no-grad scoring pass is the
    # floor of any forward-mode method (a jvp adds two tangent matmuls to each linear layer's one).
    requests = [ScoreRequest(p.prompt, p.response) for p in probes]
    t_score, scored = timed(lambda: score(model, tok, requests))
    before = torch.tensor([r.logp for r in scored], dtype=torch.float64)
    print(f"engine scoring pass (no grad): {t_score:8.2f} s for {P} probes; jvp / scoring = {t_jvp / t_score:.2f}, "
          f"naive / scoring = {t_naive / t_score:.1f}")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in delta:
                p.add_(delta[n])
    after = torch.tensor([r.logp for r in score(model, tok, requests)], dtype=torch.float64)
    actual = after - before
    cmp = compare(fast, actual)
    print(f"predicted vs actual one-step change ({P} probes): Pearson {cmp.pearson:.5f}, "
          f"median relative error {cmp.median_relative_error:.2%}, mean |actual| {float(actual.abs().mean()):.3e}")


if __name__ == "__main__":
    main()
