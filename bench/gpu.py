"""One-shot GPU benchmark: scoring, tracking overhead, DPO step time vs TRL and the decomposition, in bf16.

On a CUDA machine (``make bench-gpu``), in a few minutes, on a randomly initialised model built from a real
config (Qwen2.5-0.5B: 24 layers, hidden 896, V = 151,936; weights random, nothing downloaded) in bfloat16.
Prints, per part, times, ratios, tokens/s and the peak GPU memory (``torch.cuda.max_memory_allocated``):

  scoring     lldyn.scoring.score padded and packed vs the reference-repo style (batch 1, full logits, full
              log-softmax; timed on a spread sample, scaled) and vs a bare batched forward (no log-prob work),
              on the built-in prompts (``--prompts`` × 13 responses); max |Δ log π| between the engines;
  tracking    lldyn DPO steps untracked vs tracking ``--probe-prompts`` probe prompts (every family) every
              ``--every`` steps: overhead per tracked evaluation, and vs the scoring passes alone;
  training    lldyn DPO vs TRL DPOTrainer (precomputed reference, as lldyn does), same pairs, batch, AdamW,
              bf16 weights: median seconds per optimizer step after the warm-up, ratio;
  decompose   first-order Δ log π of ``--probe-prompts`` × 11 probes for one SGD step: forward mode (jvp)
              vs one backward per probe (timed on a sample, scaled), and their agreement.

The tokenizer is SmolLM2's (49,152 ids, all inside the model's vocabulary) when the embedded model is installed,
else lldyn's byte-level test tokenizer. Asserts nothing.

``--cpu-tiny`` runs the same code on the CPU with a tiny config (2 layers, hidden 64, float32) in seconds: what
the test suite runs so this script cannot rot.

    python bench/gpu.py                 # CUDA, Qwen2.5-0.5B config, bf16
    python bench/gpu.py --cpu-tiny      # CPU, tiny config
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scoring import bare_forward, build_requests  # noqa: E402  (bench/scoring.py: the same 64 × 13 workload)

from lldyn.scoring import Encoder, ScoreConfig, ScoreRequest, collate, score, sequence_logps  # noqa: E402

# Qwen2.5-0.5B's config.json (the architecture only; no weights are read)
QWEN25_05B = dict(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32_768, rope_theta=1e6,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048, rope_theta=1e6, rms_norm_eps=1e-6,
            tie_word_embeddings=True, use_sliding_window=False)


class Clock:
    """Wall time that waits for the GPU's queued work (torch.cuda.synchronize) before reading the clock, and the
    peak GPU memory of what ran inside it."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def run(self, fn):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else float("nan")
        return time.perf_counter() - t, peak, out


def gib(x: float) -> str:
    return "n/a (CPU)" if x != x else f"{x:.2f} GiB"


def build_model_dir(root: Path, arch: dict, seed: int) -> tuple[Path, str]:
    """A Qwen2 model directory with random weights (safetensors) and a tokenizer; returns (dir, tokenizer name)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from lldyn.models import ModelConfig, build_tiny_tokenizer, load_tokenizer

    tok_name = "byte-level (lldyn's test tokenizer)"
    tok = build_tiny_tokenizer()
    if arch["vocab_size"] >= 49_152:
        try:
            tok, tok_name = load_tokenizer(ModelConfig()), "SmolLM2's"
        except Exception:  # the embedded model is not installed: keep the byte-level tokenizer
            pass
    config = Qwen2Config(**arch, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    path = root / "model"
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path, tok_name


def naive_logp(model, pair, device) -> float:
    """Reference-repo style: one sequence, full logits, full log-softmax (as lldyn.testing.naive_logp, on device)."""
    ids = torch.tensor([list(pair.prompt_ids) + list(pair.response_ids)], device=device)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    n = len(pair.prompt_ids)
    rows = logp[n - 1:n - 1 + len(pair.response_ids)]
    return float(rows.gather(-1, torch.tensor(pair.response_ids, device=device)[:, None]).sum())


def bench_scoring(lm, args, clock: Clock, device: str) -> None:
    model, tok = lm.model, lm.tokenizer
    reqs = build_requests(args.prompts, 13, "builtin")
    pairs = [Encoder(tok, ScoreConfig()).pair(r.prompt, r.response) for r in reqs]
    n, tokens = len(reqs), sum(len(p.prompt_ids) + len(p.response_ids) for p in pairs)
    print(f"\n== scoring: {args.prompts} prompts x 13 responses = {n} responses, {tokens} tokens as full sequences")
    score(model, tok, reqs[:26])  # warm-up (kernels, allocator)
    engines = {"padded": ScoreConfig(), "packed": ScoreConfig(packing=True)}
    results, times = {}, {}
    for name, cfg in engines.items():
        t, peak, results[name] = clock.run(lambda: score(model, tok, reqs, cfg))
        times[name] = t
        print(f"lldyn {name:6s}: {t:7.2f} s  {n / t:8.1f} responses/s  {tokens / t:10.0f} tokens/s  peak {gib(peak)}")
    sub = list(range(0, n, max(1, n // args.reference_sample)))
    t_sub, peak, ref = clock.run(lambda: {i: naive_logp(model, pairs[i], device) for i in sub})
    t_ref = t_sub * n / len(sub)
    print(f"(a) reference style: {t_ref:7.2f} s (timed on {len(sub)} responses, scaled)  peak {gib(peak)}")
    t_bare, peak, _ = clock.run(lambda: bare_forward(model, pairs, tok.pad_token_id, device=device))
    print(f"(b) bare forward   : {t_bare:7.2f} s  {tokens / t_bare:10.0f} tokens/s  peak {gib(peak)}")
    for name in engines:
        print(f"{name}: {t_ref / times[name]:6.2f}x vs (a), {t_bare / times[name]:6.2f}x vs (b)")
    gap = max(abs(a.logp - b.logp) for a, b in zip(results["padded"], results["packed"]))
    diff = max(abs(results["padded"][i].logp - ref[i]) / max(1.0, abs(ref[i])) for i in sub)
    print(f"max |packed - padded| {gap:.2e} nats; max relative |padded - (a)| {diff:.2e} (in bf16 the two paths' "
          f"forwards round differently)")


def dpo_config(args, model_dir: Path, out: str, probes: str | None, device: str, dtype: str):
    from lldyn.train import TrainConfig

    return TrainConfig(method="dpo", model=str(model_dir), data="builtin:train", limit=args.batch * args.steps,
                       probes=probes, eval_every=args.every if probes else 0, initial_sample=False,
                       squeeze_alarm=probes is not None, out=out, steps=args.steps, batch_size=args.batch,
                       lr=5e-6, max_grad_norm=1.0, max_length=args.max_length, max_prompt_tokens=0, seed=0,
                       dtype=dtype, device=device)


def bench_tracking_and_training(args, model_dir: Path, root: Path, clock: Clock, device: str, dtype: str) -> None:
    from lldyn.cli import main as cli
    from lldyn.rundir import RunDir
    from lldyn.train import train

    probes = root / "probes.jsonl"
    assert cli(["probes", "build", "--data", "builtin", "--out", str(probes), "--limit", str(args.probe_prompts)]) == 0
    print(f"\n== tracking: DPO, {args.steps} steps, batch {args.batch}, max length {args.max_length}; "
          f"{args.probe_prompts} probe prompts every {args.every} steps")
    t_plain, peak_plain, plain = clock.run(lambda: train(
        dpo_config(args, model_dir, str(root / "plain"), None, device, dtype), progress=False))
    t_tracked, peak_tracked, tracked = clock.run(lambda: train(
        dpo_config(args, model_dir, str(root / "tracked"), str(probes), device, dtype), progress=False))
    summaries = RunDir(tracked.run.path).probe_summaries()
    probe_s = sum(float(s.extra.get("probe_seconds", 0.0)) for s in summaries)
    print(f"untracked {t_plain:7.2f} s (peak {gib(peak_plain)}), tracked {t_tracked:7.2f} s (peak {gib(peak_tracked)}), "
          f"{len(summaries)} evaluations; overhead {t_tracked - t_plain:6.2f} s = {t_tracked / t_plain:5.2f}x "
          f"untracked; tracker's own clock {probe_s:6.2f} s, overhead / tracker clock "
          f"{(t_tracked - t_plain) / max(probe_s, 1e-9):5.2f}")
    del tracked

    print(f"\n== training: lldyn DPO vs TRL DPOTrainer (precomputed reference), {args.steps} steps, "
          f"first {args.warmup} left out")
    rows = RunDir(plain.run.path).train_rows()
    lldyn_step = statistics.median(r.seconds for r in rows[args.warmup:])
    del plain
    t_trl, peak_trl, trl_steps = clock.run(lambda: trl_dpo(args, model_dir, root, device, dtype))
    trl_step = statistics.median(trl_steps[args.warmup:])
    print(f"lldyn: median step {1000 * lldyn_step:8.1f} ms; TRL: median step {1000 * trl_step:8.1f} ms "
          f"(TRL run {t_trl:.1f} s, peak {gib(peak_trl)}); lldyn steps/s / TRL steps/s = {trl_step / lldyn_step:5.2f}x")


def trl_dpo(args, model_dir: Path, root: Path, device: str, dtype: str) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import DPOConfig, DPOTrainer

    from lldyn.data import load_preferences
    from lldyn.models import ModelConfig, load_model

    lm = load_model(ModelConfig(name=str(model_dir), dtype=dtype, device=device))
    tok = lm.tokenizer
    pairs = load_preferences("builtin:train", limit=args.batch * args.steps)
    rows = [{"prompt": tok.apply_chat_template([{"role": "user", "content": p.prompt}] if isinstance(p.prompt, str)
                                               else list(p.prompt), tokenize=False, add_generation_prompt=True),
             "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    ends: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, a, state, control, **kwargs):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

        def on_step_begin(self, a, state, control, **kwargs):
            if not ends:
                ends.append(time.perf_counter())

    cfg = DPOConfig(output_dir=str(root / "trl"), per_device_train_batch_size=args.batch, max_steps=args.steps,
                    learning_rate=5e-6, lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.0,
                    max_grad_norm=1.0, beta=0.1, max_length=args.max_length, truncation_mode="keep_start",
                    precompute_ref_log_probs=True, gradient_checkpointing=False, bf16=dtype == "bfloat16",
                    use_cpu=not device.startswith("cuda"), logging_steps=1, save_strategy="no", report_to="none",
                    disable_tqdm=True, seed=0, train_sampling_strategy="sequential", dataloader_num_workers=0)
    trainer = DPOTrainer(model=lm.model, ref_model=None, args=cfg, train_dataset=Dataset.from_list(rows),
                         processing_class=tok, callbacks=[Stamp()])
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.train()
    return [b - a for a, b in zip(ends, ends[1:])]


def bench_decompose(lm, args, clock: Clock, device: str) -> None:
    from lldyn.data import load_preferences
    from lldyn.decompose import first_order_prediction, naive_first_order_prediction, trainable_parameters
    from lldyn.probes import build_probes
    from lldyn.rephrase import RuleRephraser

    model, tok = lm.model, lm.tokenizer
    pairs = load_preferences("builtin")
    train, test = pairs[:-20], pairs[-20:]
    probes = list(build_probes(train, test, RuleRephraser(train), limit=args.probe_prompts))
    P = len(probes)
    print(f"\n== decompose: one SGD step's first-order Δ log π for {P} probes")
    # Δθ of one SGD step (lr 1e-4, SFT on 4 pairs) taken from the gradient itself: in bf16 weights most of such
    # a step would round away, and the prediction's cost does not depend on Δθ's values
    enc = Encoder(tok, ScoreConfig())
    batch = collate([enc.pair(p.prompt, p.chosen) for p in train[-4:]], tok.pad_token_id).to(device)
    (-sequence_logps(model, batch).logps.mean()).backward()
    names = set(trainable_parameters(model))
    delta = {n: (-1e-4 * p.grad).detach() for n, p in model.named_parameters() if n in names}
    model.zero_grad(set_to_none=True)
    first_order_prediction(model, tok, probes[:2], delta)  # warm-up
    t_jvp, peak_jvp, fast = clock.run(lambda: first_order_prediction(model, tok, probes, delta))
    fast = fast.predicted[0].cpu()
    sub = sorted({round(i * (P - 1) / max(args.naive - 1, 1)) for i in range(args.naive)})
    t_sub, peak_naive, naive = clock.run(
        lambda: naive_first_order_prediction(model, tok, [probes[i] for i in sub], delta))
    t_naive = t_sub / len(sub) * P
    naive = naive.cpu()
    rel = float((fast[sub] - naive).abs().max() / naive.abs().max().clamp_min(1e-12))
    t_score, _, _ = clock.run(lambda: score(model, tok, [ScoreRequest(p.prompt, p.response) for p in probes]))
    print(f"jvp {t_jvp:7.2f} s (peak {gib(peak_jvp)}), naive {t_naive:7.2f} s (timed on {len(sub)}, scaled; peak "
          f"{gib(peak_naive)}): {t_naive / t_jvp:6.2f}x; max |jvp - naive| / max |naive| {rel:.2e}; "
          f"scoring pass {t_score:.2f} s, jvp / scoring {t_jvp / t_score:.2f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-tiny", action="store_true", help="CPU, tiny config, float32: seconds (the test)")
    ap.add_argument("--prompts", type=int, default=None, help="scoring prompts (default 64; cpu-tiny 4)")
    ap.add_argument("--steps", type=int, default=None, help="DPO steps (default 20; cpu-tiny 3)")
    ap.add_argument("--warmup", type=int, default=None, help="steps left out of the per-step time (default 3; 1)")
    ap.add_argument("--batch", type=int, default=None, help="DPO batch (default 8; cpu-tiny 2)")
    ap.add_argument("--max-length", type=int, default=None, help="DPO max length (default 512; cpu-tiny 96)")
    ap.add_argument("--probe-prompts", type=int, default=None, help="probe prompts (default 16; cpu-tiny 2)")
    ap.add_argument("--every", type=int, default=None, help="tracking period (default 10; cpu-tiny 2)")
    ap.add_argument("--naive", type=int, default=None, help="probes the naive decomposition is timed on (8; 2)")
    ap.add_argument("--reference-sample", type=int, default=None, help="responses (a) is timed on (104; 4)")
    args = ap.parse_args(argv)
    tiny = args.cpu_tiny
    defaults = dict(prompts=(4, 64), steps=(3, 20), warmup=(1, 3), batch=(2, 8), max_length=(96, 512),
                    probe_prompts=(2, 16), every=(2, 10), naive=(2, 8), reference_sample=(4, 104))
    for key, (small, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, small if tiny else full)
    if tiny:
        device, dtype, arch, label = "cpu", "float32", TINY, "tiny Qwen2 config (2 layers, hidden 64)"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("bench/gpu.py: no CUDA device (use --cpu-tiny for the CPU check)")
        device, dtype, arch, label = "cuda", "bfloat16", QWEN25_05B, "Qwen2.5-0.5B config (random weights)"
    from lldyn.models import ModelConfig, load_model

    t_start = time.perf_counter()
    clock = Clock(device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir, tok_name = build_model_dir(root, arch, seed=0)
        lm = load_model(ModelConfig(name=str(model_dir), dtype=dtype, device=device))  # eager: jvp needs it
        n_params = sum(p.numel() for p in lm.model.parameters())
        where = torch.cuda.get_device_name() if device == "cuda" else "CPU"
        print(f"{label}: {n_params / 1e6:.2f}M parameters, {arch['num_hidden_layers']} layers, "
              f"V = {arch['vocab_size']:,}, {dtype} on {where}; {tok_name} tokenizer; torch {torch.__version__}")
        bench_scoring(lm, args, clock, device)
        bench_decompose(lm, args, clock, device)
        del lm
        if device == "cuda":
            torch.cuda.empty_cache()
        bench_tracking_and_training(args, model_dir, root, clock, device, dtype)
    print(f"\ntotal {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
