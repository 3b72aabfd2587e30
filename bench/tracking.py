"""Benchmark: what live probe tracking costs a DPO run (issue 4).

On SmolLM2-135M-Instruct (embedded default; ``--model tiny-random-llama`` for a smoke run), three
workloads, each in a fresh subprocess (imports excluded from every clock):

  untracked  a DPO run: ``--steps`` optimizer steps, batch ``--batch``, max length ``--max-length``, on the
             first steps × batch built-in training pairs, no probes;
  tracked    the same run tracking a probe set of ``--prompts`` prompts with every family (the 11 static
             ones from ``lldyn probes build``, plus argmax and the initial samples) at step 0 and every
             ``--every`` steps;
  alone      the forward passes tracking needs, with the engine and nothing else, on the starting model:
             generating the initial samples once (greedy, 64 new tokens, as the tracker does) and scoring
             every probe once per evaluation of the tracked run (argmax comes with y+'s score).

Goal: tracking overhead (tracked − untracked) ≤ 1.2 × alone, i.e. tracking costs nothing beyond the
forward passes it needs. Prints the three times, the ratio, the overhead as a fraction of the untracked
training time, and the tracker's own clock (Σ ``probe_seconds`` of the run's metrics rows). Asserts nothing.

``--trainer lldyn`` (default) trains with ``lldyn.train.train(TrainConfig(...))``; ``--trainer trl`` with
TRL's ``DPOTrainer`` and ``LearningDynamicsCallback`` (tracked) or without it (untracked).

    python bench/tracking.py [--trainer lldyn|trl] [--model smollm2-135m-instruct] [--prompts 64]
                             [--steps 40] [--every 20] [--batch 2] [--max-length 160] [--threads 0] [--rounds 1]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import children  # noqa: E402  (bench/children.py)

PRELOAD = ("transformers.models.llama.modeling_llama", "lldyn.generation", "lldyn.scoring",
           "lldyn.tracking")  # imported by every child before its clock starts

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

INITIAL_SAMPLE_TOKENS = 64  # the tracker's default GenerationConfig(max_new_tokens=64)


def score_config(p: dict):
    """The engine settings the tracker of each trainer uses (lldyn: the run's; TRL callback: the default)."""
    from lldyn.scoring import ScoreConfig

    return ScoreConfig(max_length=p["max_length"]) if p["trainer"] == "lldyn" else ScoreConfig()


def n_evaluations(p: dict) -> int:
    return len(range(0, p["steps"] + 1, p["every"])) + (p["steps"] % p["every"] != 0)  # + the final step


def build_probe_file(p: dict, path: Path) -> None:
    from lldyn.data import load_preferences
    from lldyn.probes import build_probes
    from lldyn.rephrase import RuleRephraser

    pairs = load_preferences("builtin")
    train = [x for x in pairs if x.extra.get("split") != "test"]
    test = [x for x in pairs if x.extra.get("split") == "test"]
    build_probes(train, test, RuleRephraser(train), limit=p["prompts"], seed=0).save(path)




def probe_seconds(metrics_path: Path) -> tuple[float, int]:
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    probes = [r for r in rows if r.get("event") == "probes"]
    return sum(r.get("probe_seconds", 0.0) for r in probes), len(probes)


def child_lldyn(p: dict, tracked: bool) -> dict:
    from lldyn.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(method="dpo", model=p["model"], data="builtin:train", limit=p["steps"] * p["batch"],
                          probes=p["probes"] if tracked else None, eval_every=p["every"] if tracked else 0,
                          initial_sample=tracked, out=f"{tmp}/run", steps=p["steps"], batch_size=p["batch"],
                          lr=p["lr"], max_length=p["max_length"], max_prompt_tokens=None, seed=0)
        t0 = time.perf_counter()
        train(cfg, progress=False)
        seconds = time.perf_counter() - t0
        own, evals = probe_seconds(Path(tmp) / "run" / "metrics.jsonl") if tracked else (0.0, 0)
    return {"seconds": seconds, "tracker_seconds": own, "evaluations": evals}


def child_trl(p: dict, tracked: bool) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from lldyn.data import load_preferences
    from lldyn.models import ModelConfig, load_model

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        lm = load_model(ModelConfig(name=p["model"]))
        pairs = load_preferences("builtin:train", limit=p["steps"] * p["batch"])
        data = Dataset.from_list([{"prompt": x.prompt, "chosen": x.chosen, "rejected": x.rejected} for x in pairs])
        callbacks = []
        if tracked:
            from lldyn.integrations import LearningDynamicsCallback

            callbacks.append(LearningDynamicsCallback(probes=p["probes"], every=p["every"], out=f"{tmp}/run",
                                                      score_config=score_config(p)))
        args = DPOConfig(output_dir=f"{tmp}/trl", per_device_train_batch_size=p["batch"], max_steps=p["steps"],
                         learning_rate=p["lr"], max_length=p["max_length"], logging_steps=p["steps"], report_to=[],
                         save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True, gradient_checkpointing=False)
        ref = load_model(ModelConfig(name=p["model"])).model  # in-memory models need an explicit reference
        DPOTrainer(model=lm.model, ref_model=ref, args=args, train_dataset=data, processing_class=lm.tokenizer,
                   callbacks=callbacks).train()
        seconds = time.perf_counter() - t0
        own, evals = probe_seconds(Path(tmp) / "run" / "metrics.jsonl") if tracked else (0.0, 0)
    return {"seconds": seconds, "tracker_seconds": own, "evaluations": evals}


def child_alone(p: dict) -> dict:
    """Generate the initial samples once, then score every probe once per evaluation, with the engine only."""
    from lldyn.generation import GenerationConfig, generate
    from lldyn.models import ModelConfig, load_model
    from lldyn.probes import ProbeSet
    from lldyn.scoring import ScoreRequest, score

    lm = load_model(ModelConfig(name=p["model"]))
    probes = ProbeSet.load(p["probes"])
    cfg = score_config(p)
    chosen = [x for x in probes if x.family == "chosen"]
    t0 = time.perf_counter()
    samples = generate(lm.model, lm.tokenizer, [x.prompt for x in chosen],
                       GenerationConfig(max_new_tokens=INITIAL_SAMPLE_TOKENS, template=cfg.template))
    t_gen = time.perf_counter() - t0
    requests = [ScoreRequest(x.prompt, x.response) for x in probes]
    requests += [ScoreRequest(x.prompt, s) for x, s in zip(chosen, samples)]
    t1 = time.perf_counter()
    for _ in range(n_evaluations(p)):
        score(lm.model, lm.tokenizer, requests, cfg)
    t_score = time.perf_counter() - t1
    return {"seconds": t_gen + t_score, "generate_seconds": t_gen, "score_seconds": t_score,
            "responses": len(requests)}




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trainer", choices=("lldyn", "trl"), default="lldyn")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=160)
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads in every child (0 = torch's default); 1 is far steadier on a busy machine")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the three workloads, interleaved; medians printed")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--params", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        p = json.loads(a.params)
        children.preload(p["threads"], PRELOAD)
        if a.child == "alone":
            out = child_alone(p)
        else:
            run = child_lldyn if p["trainer"] == "lldyn" else child_trl
            out = run(p, tracked=a.child == "tracked")
        print(json.dumps(out))
        return

    import torch

    if a.trainer == "lldyn":
        try:
            import lldyn.train  # noqa: F401
        except ImportError as err:
            raise SystemExit(f"lldyn.train is not importable ({err}); run with --trainer trl")
    with tempfile.TemporaryDirectory() as tmp:
        p = dict(trainer=a.trainer, model=a.model, prompts=a.prompts, steps=a.steps, every=a.every, batch=a.batch,
                 max_length=a.max_length, lr=a.lr, threads=a.threads, probes=str(Path(tmp) / "probes.jsonl"))
        build_probe_file(p, Path(p["probes"]))
        n_probes = sum(1 for _ in open(p["probes"]))
        print(f"{a.model}, trainer {a.trainer}: DPO {a.steps} steps, batch {a.batch}, max length {a.max_length}; "
              f"{a.prompts} probe prompts x {n_probes // a.prompts} static families = {n_probes} probes "
              f"(+ argmax and initial_sample per prompt), tracked at step 0 and every {a.every} steps "
              f"({n_evaluations(p)} evaluations); torch threads {a.threads or torch.get_num_threads()}", flush=True)
        runs: dict[str, list[dict]] = {"untracked": [], "tracked": [], "alone": []}
        for rnd in range(a.rounds):
            for kind in runs:
                r = children.run_child(__file__, kind, p)
                runs[kind].append(r)
                extra = (f"  (generate initial samples {r['generate_seconds']:.1f} s + {n_evaluations(p)} x score "
                         f"{r['responses']} responses {r['score_seconds']:.1f} s)" if kind == "alone" else
                         f"  (tracker's own clock {r['tracker_seconds']:.1f} s over {r['evaluations']} evaluations)"
                         if kind == "tracked" else "")
                print(f"round {rnd + 1}  {kind:<9} {r['seconds']:8.1f} s{extra}", flush=True)
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    own = statistics.median(r["tracker_seconds"] for r in runs["tracked"])
    overhead = med["tracked"] - med["untracked"]
    print(f"\nmedians over {a.rounds} round(s):")
    print(f"  untracked training      {med['untracked']:8.1f} s")
    print(f"  tracked training        {med['tracked']:8.1f} s")
    print(f"  scoring alone (engine)  {med['alone']:8.1f} s")
    print(f"  tracking overhead (tracked - untracked) {overhead:8.1f} s = {overhead / med['alone']:.2f} x scoring "
          f"alone (goal <= 1.2)")
    print(f"  overhead as a fraction of the untracked training time: {overhead / med['untracked']:.2f}")
    print(f"  tracker's own clock {own:.1f} s = {own / med['alone']:.2f} x scoring alone")


if __name__ == "__main__":
    main()
