"""Benchmark: lldyn's GRPO step vs TRL 1.16's ``GRPOTrainer``, split into generation and update (issue 16).

Same model (embedded SmolLM2-135M-Instruct, or ``--model tiny-random-llama``), same prompts in the same order
(the built-in training prompts that have a gold answer, in lldyn's order of the steps; TRL reads them with
``shuffle_dataset=False``), same group size, generation batch (``--batch`` completions per optimizer step, one
micro-batch), maximum completion length, sampling (temperature 1, top-p 1), reward (``--reward builtin``: the
row's gold answer, :func:`lldyn.rewards.gold_answer_reward`, given to TRL as a reward function), loss type
(``dapo``), β = 0 (no reference model), optimizer (torch's fused AdamW, weight decay 0, constant schedule, no
warm-up), clipping, float32 on the CPU (``use_cpu=True, bf16=False``), no gradient checkpointing (TRL's
GRPOConfig turns it on by default: turned off here), no probes, no tracking, no checkpoints.

Runs, each in a fresh subprocess, interleaved over ``--rounds`` (lldyn, TRL, lldyn, TRL, …).

Per optimizer step after ``--warmup``:

  step        time between the ends of consecutive optimizer steps;
  generation  lldyn: :func:`lldyn.train.grpo.sample_generation` (sampling with ``generate``, rewards, group
              advantages); TRL: ``GRPOTrainer._generate_and_score_completions`` (the same, plus its bookkeeping),
              of which ``_generate`` (tokenising, ``generate``, decoding) is shown apart;
  update      the rest: the forward and backward of the loss, clipping, the optimizer, logging.

The completions are sampled, so their lengths differ between the runs (the RNGs differ): generation is also
given per generated token (the sum of completion lengths). Prints every run, medians over all timed steps of all rounds, the ratios
(goal: lldyn steps/s ÷ TRL steps/s ≥ 1.0) and where the time goes. Asserts nothing.

    python bench/grpo.py [--model smollm2-135m-instruct|tiny-random-llama] [--batch 8] [--num-generations 4]
                         [--max-completion-length 48] [--steps 4] [--warmup 1] [--rounds 2] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import children  # noqa: E402  (bench/children.py)

PRELOAD = ("transformers.models.llama.modeling_llama", "transformers.optimization", "trl", "datasets",
           "lldyn.train", "lldyn.checkpoint")  # imported by every child before its clock starts

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

KINDS = ("lldyn", "trl")


def bench_args(a: argparse.Namespace) -> dict:
    return dict(model=a.model, batch=a.batch, num_generations=a.num_generations,
                max_completion_length=a.max_completion_length, steps=a.steps, warmup=a.warmup, lr=a.lr,
                max_grad_norm=a.max_grad_norm, seed=a.seed, threads=a.threads)


def lldyn_config(p: dict, out: str):
    from lldyn.train import TrainConfig

    return TrainConfig(method="grpo", model=p["model"], data="builtin:train", skip_invalid=True, reward="builtin",
                       probes=None, eval_every=0, initial_sample=False, out=out, steps=p["steps"] + p["warmup"],
                       batch_size=p["batch"], grad_accum=1, num_generations=p["num_generations"],
                       max_completion_length=p["max_completion_length"], temperature=1.0, top_p=1.0,
                       loss_type="dapo", beta=0.0, lr=p["lr"], warmup_steps=0, scheduler="constant",
                       optimizer="adamw", weight_decay=0.0, max_grad_norm=p["max_grad_norm"], seed=p["seed"])


def ordered_prompts(p: dict):
    """The prompts lldyn's steps sample from, flattened in step order (each once; TRL repeats each G times)."""
    import warnings

    from lldyn.train.grpo import load_grpo_prompts, step_prompts

    cfg = lldyn_config(p, "unused")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "N of M prompts skipped: no gold answer"
        prompts, _ = load_grpo_prompts(cfg)
    return [q for s in range(p["steps"] + p["warmup"]) for q in step_prompts(prompts, cfg, 0, s)]


def split_steps(step_ends: list[float], gen_spans: list[tuple[float, float]], warmup: int) -> list[dict]:
    """Per timed step (after ``warmup``): its total time and the generation time that falls inside it."""
    out = []
    for a, b in zip(step_ends[warmup - 1:], step_ends[warmup:]):
        gen = sum(min(e, b) - max(s, a) for s, e in gen_spans if s < b and e > a)
        out.append({"step_s": b - a, "generation_s": gen, "update_s": b - a - gen})
    return out


# --------------------------------------------------------------------------- children (one run each)




def timed(owner, name: str, spans: list[tuple[float, float]]) -> None:
    """Instrumentation only: record the (start, end) of every call of ``owner.name``."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spans.append((t, time.perf_counter()))

    setattr(owner, name, wrapper)


def child_lldyn(p: dict) -> dict:
    import torch

    from lldyn import rundir
    from lldyn.train import loop, train

    step_ends: list[float] = []
    gen: list[tuple[float, float]] = []
    original = rundir.RunDir.log

    def log_and_stamp(self, row):  # instrumentation only: the time each optimizer step's row is written
        original(self, row)
        if isinstance(row, rundir.TrainRow):
            step_ends.append(time.perf_counter())

    rundir.RunDir.log = log_and_stamp
    timed(loop, "sample_generation", gen)  # the loop's name for it (imported into lldyn.train.loop)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train(lldyn_config(p, f"{tmp}/run"), progress=False)
        t_end = time.perf_counter()
        rows = [r.to_json() for r in result.run.train_rows()]
        lengths = [sum(c.n_tokens for c in result.run.grpo_step(r["step"])) for r in rows]
    return {"kind": "lldyn", "threads": torch.get_num_threads(), "end_to_end_s": t_end - t0,
            "steps": split_steps(step_ends, gen, p["warmup"]), "tokens": lengths[p["warmup"]:],
            "reward": [r["reward"] for r in rows], "loss": [r["loss"] for r in rows]}


def child_trl(p: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOConfig, GRPOTrainer

    from lldyn.models import ModelConfig, load_model
    from lldyn.rewards import gold_answer_reward

    step_ends: list[float] = []
    gen: list[tuple[float, float]] = []
    sampling: list[tuple[float, float]] = []
    tokens: list[int] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())

    def builtin(prompts, completions, answer=None, answer_aliases=None, **kwargs):
        tokens.append(sum(len(ids) for ids in kwargs["completion_ids"]))
        return gold_answer_reward(prompts, completions, answer=answer, answer_aliases=answer_aliases)

    builtin.__name__ = "builtin"
    timed(GRPOTrainer, "_generate_and_score_completions", gen)
    timed(GRPOTrainer, "_generate", sampling)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        lm = load_model(ModelConfig(name=p["model"], seed=p["seed"]))
        rows = [{"prompt": [{"role": "user", "content": q.prompt}], "answer": q.fields["answer"],
                 "answer_aliases": q.fields.get("answer_aliases") or []} for q in ordered_prompts(p)]
        args = GRPOConfig(
            output_dir=tmp, per_device_train_batch_size=p["batch"], gradient_accumulation_steps=1,
            num_generations=p["num_generations"], max_completion_length=p["max_completion_length"],
            temperature=1.0, top_p=1.0, loss_type="dapo", beta=0.0, max_steps=p["steps"] + p["warmup"],
            learning_rate=p["lr"], lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch_fused",
            weight_decay=0.0, max_grad_norm=p["max_grad_norm"], gradient_checkpointing=False, bf16=False, fp16=False,
            use_cpu=True, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=p["seed"],
            shuffle_dataset=False, dataloader_num_workers=0)
        trainer = GRPOTrainer(model=lm.model, reward_funcs=[builtin], args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=lm.tokenizer, callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        trainer.train()
        t_end = time.perf_counter()
        logs = [h for h in trainer.state.log_history if "reward" in h]
    steps = split_steps(step_ends, gen, p["warmup"])
    for s, (a, b) in zip(steps, zip(step_ends[p["warmup"] - 1:], step_ends[p["warmup"]:])):
        s["sampling_s"] = sum(e - t for t, e in sampling if a < t < b)
    return {"kind": "trl", "threads": torch.get_num_threads(), "end_to_end_s": t_end - t0, "steps": steps,
            "tokens": tokens[p["warmup"]:], "reward": [h["reward"] for h in logs], "loss": [h["loss"] for h in logs]}




# --------------------------------------------------------------------------- the parent


def med(values: list[float]) -> float:
    return statistics.median(values)


def totals(r: dict) -> dict:
    """Sums over a run's timed steps: step, generation, update seconds and generated tokens."""
    s = r["steps"]
    return {"step_s": sum(x["step_s"] for x in s), "generation_s": sum(x["generation_s"] for x in s),
            "update_s": sum(x["update_s"] for x in s), "tokens": sum(r["tokens"])}


def describe(r: dict) -> str:
    t, n = totals(r), len(r["steps"])
    extra = ""
    if r["kind"] == "trl":
        extra = f" (generate() path {sum(x['sampling_s'] for x in r['steps']) / n:6.2f} s)"
    return (f"{r['kind']:<6} end-to-end {r['end_to_end_s']:7.2f} s   per step {t['step_s'] / n:6.2f} s = generation "
            f"{t['generation_s'] / n:6.2f} s{extra} + update {t['update_s'] / n:6.2f} s   "
            f"{t['tokens'] / n:6.1f} completion tokens/step, generation {1000 * t['generation_s'] / max(t['tokens'], 1):6.1f} ms/token")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=8, help="completions per optimizer step (one micro-batch)")
    ap.add_argument("--num-generations", type=int, default=4)
    ap.add_argument("--max-completion-length", type=int, default=48)
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=1, help="optimizer steps run first and left out of the per-step time")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-6)
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
        print(json.dumps(child_lldyn(p) if a.child == "lldyn" else child_trl(p)))
        return
    if a.warmup < 1 or a.steps < 1:
        raise SystemExit("--warmup and --steps must be >= 1 (per-step times are differences of step ends)")
    if a.num_generations < 2 or a.batch % a.num_generations:
        raise SystemExit("--num-generations must be >= 2 and divide --batch")
    import torch
    import trl

    p = bench_args(a)
    print(f"{a.model}: GRPO, {a.batch // a.num_generations} built-in prompts x {a.num_generations} completions per "
          f"step (reward builtin), max completion length {a.max_completion_length}, loss dapo, beta 0, "
          f"{a.warmup}+{a.steps} steps, AdamW lr {a.lr}, constant, clip {a.max_grad_norm}, float32 CPU, "
          f"trl {trl.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads "
          f"{a.threads or 'default'}, {a.rounds} rounds interleaved")
    runs: dict[str, list[dict]] = {k: [] for k in KINDS}
    for rnd in range(a.rounds):
        for kind in KINDS:
            r = children.run_child(__file__, kind, p)
            runs[kind].append(r)
            print(f"round {rnd + 1}  {describe(r)}  [{r['threads']} threads]", flush=True)

    # medians over every timed step of every round: one step slowed by a neighbour's burst on a shared machine
    # moves a mean, not the median
    print(f"\nmedians over the {a.rounds * a.steps} timed steps of all rounds (seconds per step):")
    per = {k: {key: med([s[key] for r in v for s in r["steps"]]) for key in ("step_s", "generation_s", "update_s")}
           for k, v in runs.items()}
    for k, v in runs.items():
        per[k]["tokens"] = med([t for r in v for t in r["tokens"]])
    for k in KINDS:
        m = per[k]
        print(f"  {k:<6} step {m['step_s']:6.2f}  generation {m['generation_s']:6.2f} "
              f"({100 * m['generation_s'] / m['step_s']:4.1f} %)  update {m['update_s']:6.2f} "
              f"({100 * m['update_s'] / m['step_s']:4.1f} %)  {m['tokens']:6.1f} completion tokens, generation "
              f"{1000 * m['generation_s'] / max(m['tokens'], 1):6.1f} ms/token")
    trl_sampling = med([x["sampling_s"] for r in runs["trl"] for x in r["steps"]])
    print(f"  (TRL's generate() path, _generate: {trl_sampling:.2f} s of its {per['trl']['generation_s']:.2f} s "
          f"generation; the rest is reward, advantages and its bookkeeping)")
    mine, theirs = per["lldyn"], per["trl"]
    for key, label in (("step_s", "per step"), ("generation_s", "generation"), ("update_s", "update")):
        ratio = theirs[key] / mine[key]
        goal = "   (goal >= 1.0x: " + ("met" if ratio >= 1.0 else "NOT met") + ")" if key == "step_s" else ""
        print(f"lldyn / trl {label:<11} {ratio:5.2f}x faster{goal}")
    per_token = (theirs["generation_s"] / max(theirs["tokens"], 1)) / (mine["generation_s"] / max(mine["tokens"], 1))
    print(f"lldyn / trl generation per completion token {per_token:5.2f}x faster")
    print(f"mean reward over the steps: lldyn {statistics.mean(runs['lldyn'][0]['reward']):.3f}, "
          f"TRL {statistics.mean(runs['trl'][0]['reward']):.3f} (round 1; sampled, so not equal)")


if __name__ == "__main__":
    main()
