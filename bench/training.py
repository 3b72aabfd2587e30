"""Benchmark: lldyn's DPO training loop vs TRL's ``DPOTrainer`` (issue 5).

Same model (embedded SmolLM2-135M-Instruct, or ``--model tiny-random-llama``), same data (the first
``(warmup + steps) · batch`` built-in training pairs, seen in the same order: lldyn's epoch-0 order, which
TRL reads with ``train_sampling_strategy="sequential"``), same batch, optimizer (torch's fused AdamW, as lldyn
builds it and as TRL's default ``adamw_torch_fused`` does with torch >= 2.8; weight decay 0, no warm-up,
constant schedule), gradient clipping, β, max length
(prompt + response, the start kept; lldyn ``max_prompt_tokens=0`` to match TRL's ``keep_start``),
float32 on the CPU, no gradient checkpointing (TRL turns it on by default: turned off here), no probes,
no tracking.

Runs, each in a fresh subprocess, interleaved over ``--rounds`` (A, B, C, A, B, C, …):

  lldyn           ``train(TrainConfig(method="dpo", ...))``: reference log-probs once per phase with the
                  engine, a safetensors checkpoint (weights + optimizer) at the end of the phase;
  trl             ``DPOTrainer`` as shipped: a frozen reference copy, one reference forward every step;
  trl-precompute  ``DPOTrainer(precompute_ref_log_probs=True)``: the reference log-probs once, up front,
                  as lldyn does (the like-for-like comparison).

TRL gets the prompt pre-rendered through the chat template (as ``lldyn.scoring.encode_prompt``
renders it) and the bare response, so both tokenise the same ids (checked, pair by pair). One more
short run (``trl-conv``, one step) gives TRL the conversational format instead, to show what its own
templating changes.

Timing: *end-to-end* = model load + data + reference log-probs + all steps + what the trainer does at
the end (imports excluded); *per step* = time between the ends of consecutive optimizer steps, over the
steps after ``--warmup``. Prints every run, medians over rounds, the ratios (goal: lldyn steps/s ÷ TRL
steps/s ≥ 1.0) and whether the first-step policy log-probs of chosen/rejected and the second-step loss
agree (≤ 1e-4). Asserts nothing.

Each run uses ``--threads`` torch threads (default 1: on a shared 2-core machine two threads make
timings erratic, one thread keeps them comparable).

    python bench/training.py [--model smollm2-135m-instruct|tiny-random-llama] [--batch 2] [--max-length 128]
                             [--steps 20] [--warmup 2] [--rounds 2] [--threads 1] [--kinds lldyn,trl,trl-precompute]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import children  # noqa: E402  (bench/children.py)

PRELOAD = ("transformers.models.llama.modeling_llama", "transformers.optimization", "trl", "datasets",
           "lldyn.train", "lldyn.checkpoint")  # imported by every child before its clock starts

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

TOL = 1e-4
KINDS = ("lldyn", "trl", "trl-precompute")


def bench_args(a: argparse.Namespace) -> dict:
    return dict(model=a.model, batch=a.batch, max_length=a.max_length, steps=a.steps, warmup=a.warmup, lr=a.lr,
                beta=a.beta, max_grad_norm=a.max_grad_norm, seed=a.seed, threads=a.threads)


def n_pairs(p: dict) -> int:
    """One epoch of exactly warm-up + timed steps."""
    return (p["steps"] + p["warmup"]) * p["batch"]


def ordered_pairs(p: dict):
    """The pairs lldyn trains on (``limit`` = n_pairs), in lldyn's epoch-0 batch order (flattened)."""
    from lldyn.data import load_preferences
    from lldyn.train.batches import batch_order

    pairs = load_preferences("builtin:train", "train", n_pairs(p))
    return [pairs[i] for batch in batch_order(len(pairs), p["batch"], p["seed"], 0, 0) for i in batch]


def step_report(stamps: list[float], t0: float, t_first_start: float, t_end: float, warmup: int) -> dict:
    """Times from the step-end timestamps: set-up, warm-up steps, timed steps, tail."""
    timed = [b - a for a, b in zip(stamps[warmup - 1:], stamps[warmup:])]
    return {"end_to_end_s": t_end - t0, "setup_s": t_first_start - t0,
            "warmup_s": stamps[warmup - 1] - t_first_start, "step_s": timed, "tail_s": t_end - stamps[-1]}


# --------------------------------------------------------------------------- children (one run each)




def child_lldyn(p: dict) -> dict:
    import torch

    from lldyn import rundir
    from lldyn.train import TrainConfig, train

    stamps: list[tuple[int, float, float]] = []
    original = rundir.RunDir.log

    def log_and_stamp(self, row):  # instrumentation only: the time each optimizer step's row is written
        original(self, row)
        if isinstance(row, rundir.TrainRow):
            stamps.append((row.step, time.perf_counter(), row.seconds))

    rundir.RunDir.log = log_and_stamp
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(method="dpo", model=p["model"], data="builtin:train", limit=n_pairs(p), probes=None,
                          eval_every=0, initial_sample=False, squeeze_alarm=False, out=f"{tmp}/run",
                          steps=p["steps"] + p["warmup"], batch_size=p["batch"], grad_accum=1, lr=p["lr"],
                          warmup_steps=0, scheduler="constant", optimizer="adamw", weight_decay=0.0,
                          max_grad_norm=p["max_grad_norm"], beta=p["beta"], max_length=p["max_length"],
                          max_prompt_tokens=0, seed=p["seed"])
        t0 = time.perf_counter()
        result = train(cfg, progress=False)
        t_end = time.perf_counter()
        rows = [r.to_json() for r in result.run.train_rows()]
        ckpt_mib = sum(f.stat().st_size for f in Path(result.run.checkpoints).rglob("*") if f.is_file()) / 2**20
    times = [t for _, t, _ in stamps]
    out = step_report(times, t0, times[0] - stamps[0][2], t_end, p["warmup"])
    out.update(kind="lldyn", threads=torch.get_num_threads(), checkpoint_mib=ckpt_mib,
               loss=[r["loss"] for r in rows], chosen_logp=[r["chosen_logp"] for r in rows],
               rejected_logp=[r["rejected_logp"] for r in rows])
    return out


def child_trl(p: dict, kind: str) -> dict:
    import copy

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import DPOConfig, DPOTrainer

    from lldyn.models import ModelConfig, load_model
    from lldyn.scoring import Encoder, ScoreConfig

    conversational = kind == "trl-conv"
    steps = 1 if conversational else p["steps"] + p["warmup"]
    stamps: list[float] = []
    first_start: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if not first_start:
                first_start.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        lm = load_model(ModelConfig(name=p["model"], seed=p["seed"]))
        model, tok = lm.model, lm.tokenizer
        pairs = ordered_pairs(p)
        rows = []
        for e in pairs:
            messages = [{"role": "user", "content": e.prompt}] if isinstance(e.prompt, str) else list(e.prompt)
            if conversational:  # TRL applies the template to prompt + response itself
                rows.append({"prompt": messages, "chosen": [{"role": "assistant", "content": e.chosen}],
                             "rejected": [{"role": "assistant", "content": e.rejected}]})
            else:  # the prompt rendered as lldyn's engine renders it; TRL appends the EOS text to responses
                rows.append({"prompt": tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                             "chosen": e.chosen, "rejected": e.rejected})
        precompute = kind == "trl-precompute"
        args = DPOConfig(
            output_dir=tmp, per_device_train_batch_size=p["batch"], gradient_accumulation_steps=1, max_steps=steps,
            learning_rate=p["lr"], lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch_fused", weight_decay=0.0,
            max_grad_norm=p["max_grad_norm"], beta=p["beta"], loss_type=["sigmoid"], max_length=p["max_length"],
            truncation_mode="keep_start", precompute_ref_log_probs=precompute, gradient_checkpointing=False,
            bf16=False, fp16=False, use_cpu=True, logging_steps=1, save_strategy="no", report_to="none",
            disable_tqdm=True, seed=p["seed"], train_sampling_strategy="sequential", dataloader_num_workers=0)
        trainer = DPOTrainer(model=model, ref_model=None if precompute else copy.deepcopy(model), args=args,
                             train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        trainer.train()
        t_end = time.perf_counter()
        logs = [h for h in trainer.state.log_history if "logps/chosen" in h]
        data = trainer.train_dataset
        trl_ids = list(zip(data["prompt_ids"], data["chosen_ids"], data["rejected_ids"]))
    # Token-level comparison with lldyn's engine (untruncated: TRL truncates in its collator).
    enc = Encoder(tok, ScoreConfig(template=True, max_length=100_000))
    differ, example = 0, None
    for e, (prompt_ids, chosen_ids, rejected_ids) in zip(pairs, trl_ids):
        c, r = enc.pair(e.prompt, e.chosen), enc.pair(e.prompt, e.rejected)
        if (list(c.prompt_ids), list(c.response_ids), list(r.response_ids)) != (prompt_ids, chosen_ids, rejected_ids):
            differ += 1
            if example is None:
                example = {"lldyn_chosen": tok.convert_ids_to_tokens(list(c.response_ids)),
                           "trl_chosen": tok.convert_ids_to_tokens(chosen_ids),
                           "prompt_equal": list(c.prompt_ids) == prompt_ids}
    if conversational:
        out = {"end_to_end_s": t_end - t0}
    else:
        out = step_report(stamps, t0, first_start[0], t_end, p["warmup"])
    out.update(kind=kind, threads=torch.get_num_threads(), loss=[h["loss"] for h in logs],
               chosen_logp=[h["logps/chosen"] for h in logs], rejected_logp=[h["logps/rejected"] for h in logs],
               pairs_with_other_tokens=differ, n_pairs=len(pairs), token_example=example)
    return out




# --------------------------------------------------------------------------- the parent


def med(values: list[float]) -> float:
    return statistics.median(values)


def describe(r: dict, timed_steps: int) -> str:
    per = r["step_s"]
    return (f"{r['kind']:<15} end-to-end {r['end_to_end_s']:7.2f} s  (set-up {r['setup_s']:6.2f} s, "
            f"warm-up steps {r['warmup_s']:5.2f} s, {timed_steps} steps {sum(per):6.2f} s, after last step "
            f"{r['tail_s']:5.2f} s)  {timed_steps / sum(per):7.3f} steps/s, median step {1000 * med(per):7.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2, help="optimizer steps run first and left out of the per-step time")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated runs: " + ", ".join(KINDS))
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in both runs (0 = torch's default); 1 keeps timings stable on a shared machine")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--params", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        p = json.loads(a.params)
        children.preload(p["threads"], PRELOAD)
        print(json.dumps(child_lldyn(p) if a.child == "lldyn" else child_trl(p, a.child)))
        return
    kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    if "lldyn" not in kinds or not set(kinds) <= set(KINDS) or len(kinds) < 2:
        raise SystemExit(f"--kinds must name lldyn and at least one of {', '.join(KINDS[1:])}")
    if a.warmup < 1 or a.steps < 1:
        raise SystemExit("--warmup and --steps must be >= 1 (per-step times are differences of step ends)")
    import torch
    import trl

    p = bench_args(a)
    print(f"{a.model}: DPO, {n_pairs(p)} built-in pairs (one epoch, the same order in both), batch {a.batch}, "
          f"max length {a.max_length}, {a.warmup}+{a.steps} steps, AdamW lr {a.lr}, constant, clip "
          f"{a.max_grad_norm}, beta {a.beta}, float32 CPU, trl {trl.__version__}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, torch threads {a.threads or 'default'}, {a.rounds} rounds interleaved")
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for rnd in range(a.rounds):
        for kind in kinds:
            r = children.run_child(__file__, kind, p)
            runs[kind].append(r)
            print(f"round {rnd + 1}  {describe(r, a.steps)}  [{r['threads']} threads]", flush=True)
    conv = children.run_child(__file__, "trl-conv", p)

    print("\nmedians over rounds:")
    step_rate = {k: med([a.steps / sum(r["step_s"]) for r in v]) for k, v in runs.items()}
    e2e = {k: med([r["end_to_end_s"] for r in v]) for k, v in runs.items()}
    for k in kinds:
        v = runs[k]
        print(f"  {k:<15} {step_rate[k]:7.3f} steps/s per step   end-to-end {e2e[k]:7.2f} s "
              f"({(a.steps + a.warmup) / e2e[k]:6.3f} steps/s)   set-up {med([r['setup_s'] for r in v]):6.2f} s   "
              f"after last step {med([r['tail_s'] for r in v]):5.2f} s")
    print(f"  (lldyn's 'after last step' is its end-of-phase checkpoint, weights + optimizer state, "
          f"{runs['lldyn'][0]['checkpoint_mib']:.1f} MiB; TRL saves nothing: save_strategy='no')")
    for k in kinds[1:]:
        verdict = [("met" if ok else "NOT met") for ok in (step_rate["lldyn"] >= step_rate[k], e2e[k] >= e2e["lldyn"])]
        print(f"lldyn / {k:<15} per step: {step_rate['lldyn'] / step_rate[k]:5.2f}x   end-to-end: "
              f"{e2e[k] / e2e['lldyn']:5.2f}x   (goal >= 1.0x: {verdict[0]} per step, {verdict[1]} end-to-end)")

    print("\nagreement (round 1; same pairs, same order, same token ids):")
    mine = runs["lldyn"][0]
    for k in kinds[1:]:
        other = runs[k][0]
        diffs = []
        print(f"  vs {k}: token ids differ in {other['pairs_with_other_tokens']} of {other['n_pairs']} pairs")
        for label, key, step in (("step 1, mean policy log pi(y+)", "chosen_logp", 0),
                                 ("step 1, mean policy log pi(y-)", "rejected_logp", 0), ("step 2, loss", "loss", 1)):
            diffs.append(abs(mine[key][step] - other[key][step]))
            print(f"    {label:<31} lldyn {mine[key][step]:12.7f}  TRL {other[key][step]:12.7f}  "
                  f"|diff| {diffs[-1]:.1e}")
        print(f"    -> {'MATCH' if max(diffs) <= TOL else 'DIFFER'} (tolerance {TOL:g}; log 2 = {math.log(2):.7f});  "
              f"last step ({a.steps + a.warmup}) loss lldyn {mine['loss'][-1]:.6f}, TRL {other['loss'][-1]:.6f}")
    dc = conv["chosen_logp"][0] - mine["chosen_logp"][0]
    dr = conv["rejected_logp"][0] - mine["rejected_logp"][0]
    print(f"  TRL given conversational messages instead (it templates prompt + response itself): token ids differ in "
          f"{conv['pairs_with_other_tokens']} of {conv['n_pairs']} pairs; step-1 mean log pi(y+) "
          f"{conv['chosen_logp'][0]:.6f} ({dc:+.4f} vs lldyn), log pi(y-) {conv['rejected_logp'][0]:.6f} ({dr:+.4f})")
    if conv["token_example"]:
        ex = conv["token_example"]
        print(f"    first differing pair, end of the chosen response: lldyn {ex['lldyn_chosen'][-3:]}  TRL "
              f"{ex['trl_chosen'][-3:]}  (prompt ids equal: {ex['prompt_equal']})")


if __name__ == "__main__":
    main()
