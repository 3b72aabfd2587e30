"""Benchmark: the log-prob engine vs the reference-repo style and vs a bare batched forward.

On SmolLM2-135M-Instruct with 64 prompts × 13 responses each (built-in data: each prompt's chosen and
rejected plus 11 responses borrowed from other prompts), measures responses scored per second by

  lldyn  — lldyn.scoring.score (length buckets, prefix sharing, chunked head), padded and packed
           (``ScoreConfig(packing=True)``: no padding), timed interleaved over ``--rounds``,
  (a)    — the reference-repo style: batch 1, full logits, full log-softmax, one forward per response,
  (b)    — a bare batched model forward over the same full prompt+response sequences (no log-prob work),

checks lldyn agrees with (a), and measures peak memory (RSS above the loaded model, each workload in a
fresh subprocess) of scoring vs the bare forward at sequence length 512, on SmolLM2 and on a random
2-layer Llama with Qwen2.5's vocabulary (V = 151,936). Goals (issues 3, 15): ≥ 8× (a) (≥ 3× on HH),
≥ 1.0× (b), memory ≤ 1.3× (b). Prints every number and ratio; asserts nothing.

    python bench/scoring.py [--prompts 64] [--per-prompt 13] [--data builtin|FILE] [--rounds 2] [--skip-memory]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lldyn.data import load_preferences  # noqa: E402
from lldyn.models import ModelConfig, load_model  # noqa: E402
from lldyn.scoring import Encoder, ScoreConfig, ScoreRequest, score  # noqa: E402
from lldyn.testing import naive_logp  # noqa: E402

BIG_VOCAB = 151_936  # Qwen2.5's vocabulary


def build_requests(n_prompts: int, per_prompt: int, data: str = "builtin") -> list[ScoreRequest]:
    pairs = load_preferences(data, skip_invalid=True)
    pairs = pairs[: max(n_prompts, per_prompt)]
    pool = [r for p in pairs for r in (p.chosen, p.rejected)]
    reqs = []
    for i, p in enumerate(pairs[:n_prompts]):
        others = [pool[(2 * i + 2 + k) % len(pool)] for k in range(per_prompt - 2)]
        reqs += [ScoreRequest(p.prompt, r) for r in [p.chosen, p.rejected, *others]]
    return reqs


def bare_forward(model, pairs, pad_id: int, batch: int = 32, device=None) -> None:
    """(b) a bare batched forward over the same sequences, length-sorted, right-padded (full logits)."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].prompt_ids) + len(pairs[i].response_ids))
    with torch.no_grad():
        for s in range(0, len(order), batch):
            seqs = [list(pairs[i].prompt_ids) + list(pairs[i].response_ids) for i in order[s:s + batch]]
            L = max(map(len, seqs))
            ids = torch.full((len(seqs), L), pad_id)
            att = torch.zeros((len(seqs), L), dtype=torch.long)
            for r, q in enumerate(seqs):
                ids[r, :len(q)], att[r, :len(q)] = torch.tensor(q), 1
            model(input_ids=ids.to(device), attention_mask=att.to(device))


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _memory_workload(big_vocab: bool):
    """(model, encoded pairs, pad id) of the memory benchmark: 512-token sequences (448 prompt + 64 response).

    Default: SmolLM2 and 8 built-in prompts padded with filler text. ``big_vocab``: a 2-layer random Llama with
    Qwen2.5's vocabulary (V = 151,936, no download) and 4 sequences of random token ids, where a bare forward's
    logits alone take 4 × 512 × V × 4 B = 1.2 GB.
    """
    from lldyn.scoring import EncodedPair

    if big_vocab:
        from lldyn.models import build_tiny_model

        model = build_tiny_model(vocab_size=BIG_VOCAB, hidden_size=64).eval()
        gen = torch.Generator().manual_seed(0)
        encoded = [EncodedPair(tuple(torch.randint(0, BIG_VOCAB, (448,), generator=gen).tolist()),
                               tuple(torch.randint(0, BIG_VOCAB, (64,), generator=gen).tolist())) for _ in range(4)]
        return model, encoded, 0
    lm = load_model(ModelConfig())
    tok = lm.tokenizer
    pairs = load_preferences("builtin")[:8]
    enc = Encoder(tok, ScoreConfig(max_length=2048))
    filler = " ".join(["The weather was mild and the market was busy."] * 60)
    encoded = []
    for p in pairs:
        prompt_ids = enc.prompt(filler + " " + str(p.prompt))[-448:]
        resp = (enc.pair(p.prompt, p.chosen + " " + filler).response_ids)[:64]
        encoded.append(EncodedPair(tuple(prompt_ids), tuple(resp)))
    return lm.model, encoded, tok.pad_token_id


def memory_child(kind: str) -> None:
    """Run one workload at sequence length 512 and print the peak RSS growth (MiB) over the loaded model."""
    model, encoded, pad_id = _memory_workload(kind.endswith("-bigvocab"))
    # The process's lifetime peak (ru_maxrss) can come from loading the model; sample the RSS while the
    # workload runs instead, every millisecond, and report its peak above the RSS just before it.
    import gc
    import threading

    import psutil

    gc.collect()
    proc = psutil.Process()
    base = peak = proc.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    if kind.startswith("score"):
        from lldyn.scoring import score_encoded

        score_encoded(model, encoded, pad_id, ScoreConfig(max_length=2048, packing="-packed" in kind))
    else:
        bare_forward(model, encoded, pad_id, batch=8)
    done.set()
    sampler.join()
    print(json.dumps({"kind": kind, "peak_growth_mib": (peak - base) / 2**20}))


def memory_ratio(suffix: str = "") -> tuple[float, float, float]:
    """Peak RSS growth (MiB) of scoring padded, packed and of the bare forward, each in a fresh process."""
    mem = []
    for kind in ("score", "score-packed", "bare"):
        out = subprocess.run([sys.executable, __file__, "--memory-child", kind + suffix], capture_output=True,
                             text=True, check=True).stdout.strip().splitlines()[-1]
        mem.append(json.loads(out)["peak_growth_mib"])
    return mem[0], mem[1], mem[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--per-prompt", type=int, default=13)
    ap.add_argument("--data", default="builtin",
                    help="preference data whose prompts and responses are scored (default: the built-in set, short "
                         "prompts; e.g. ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz for real multi-turn ones)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="interleaved rounds of the engine padded / packed (each engine's best round is reported)")
    ap.add_argument("--skip-memory", action="store_true", help="no memory measurements")
    ap.add_argument("--memory-only", action="store_true", help="only the memory measurements")
    ap.add_argument("--skip-bare", action="store_true", help="no (b) bare forward")
    ap.add_argument("--reference-sample", type=int, default=104, help="responses (a) is timed on (scaled to all)")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    if args.memory_only:
        return print_memory()
    lm = load_model(ModelConfig())
    model, tok = lm.model, lm.tokenizer
    reqs = build_requests(args.prompts, args.per_prompt, args.data)
    enc = Encoder(tok, ScoreConfig())
    pairs = [enc.pair(r.prompt, r.response) for r in reqs]
    n = len(reqs)
    tokens = sum(len(p.prompt_ids) + len(p.response_ids) for p in pairs)
    shared = sum(len(p) for p in {q.prompt_ids for q in pairs}) + sum(len(q.response_ids) for q in pairs)
    print(f"SmolLM2-135M-Instruct, {args.data}: {args.prompts} prompts x {args.per_prompt} responses = {n} responses, "
          f"{tokens} tokens as full sequences, {shared} with each prompt once, torch threads {torch.get_num_threads()}")

    engines = {"padded": ScoreConfig(), "packed": ScoreConfig(packing=True)}
    for cfg in engines.values():
        score(model, tok, reqs[:26], cfg)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in engines}
    results: dict[str, list] = {}
    for _ in range(args.rounds):  # interleaved, so that a load change on the machine hits both engines
        for name, cfg in engines.items():
            out: list = []
            times[name].append(timed(lambda: out.extend(score(model, tok, reqs, cfg))))
            results[name] = out
    t_bare = float("nan") if args.skip_bare else timed(lambda: bare_forward(model, pairs, tok.pad_token_id))
    sub = list(range(0, n, max(1, n // args.reference_sample)))  # (a) is slow: time a spread sample and scale
    ref = {}
    t_ref_sample = timed(lambda: ref.update({i: naive_logp(model, pairs[i]) for i in sub}))
    t_ref = t_ref_sample * n / len(sub)
    for name in engines:
        t = min(times[name])
        diff = max(abs(results[name][i].logp - ref[i][0]) / max(1.0, abs(ref[i][0])) for i in sub)
        rounds = ", ".join(f"{v:.2f}" for v in times[name])
        print(f"lldyn score, {name:6s}: {t:8.2f} s  {n / t:8.1f} responses/s (rounds: {rounds} s)")
        print(f"  speed-up vs (a) {t_ref / t:6.2f}x (goal >= 8x built-in, >= 3x HH), vs (b) {t_bare / t:6.2f}x "
              f"(goal >= 1.0x), max relative |logp - (a)| over the sample {diff:.2e}")
    gap = max(abs(a.logp - b.logp) for a, b in zip(results["padded"], results["packed"]))
    print(f"(a) reference style  : {t_ref:8.2f} s  {n / t_ref:8.1f} responses/s (timed on {len(sub)} responses, scaled)")
    print(f"(b) bare forward     : {t_bare:8.2f} s  {n / t_bare:8.1f} responses/s")
    print(f"packed vs padded     : {min(times['padded']) / min(times['packed']):6.2f}x faster, "
          f"max |logp difference| {gap:.2e}")
    if not args.skip_memory:
        print_memory()


def print_memory() -> None:
    for suffix, what in (("", "8 sequences, SmolLM2"),
                         ("-bigvocab", f"4 sequences, random 2-layer Llama with V = {BIG_VOCAB:,}")):
        padded, packed, bare = memory_ratio(suffix)
        print(f"peak memory @512 tokens, {what}: lldyn {padded:.0f} MiB (packed {packed:.0f} MiB), bare forward "
              f"{bare:.0f} MiB, ratio {padded / bare:.2f} (packed {packed / bare:.2f}; goal <= 1.3)")


if __name__ == "__main__":
    main()
