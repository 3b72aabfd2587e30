"""LearningDynamicsCallback inside a real TRL DPOTrainer / SFTTrainer on the tiny model.

The tiny byte-level tokenizer works with TRL 1.16 as is. One thing TRL needs from the caller: a
``ref_model`` (DPOTrainer builds its reference by re-loading ``model.config._name_or_path``, which is
empty for a model built in memory such as ``tiny-random-llama``; any model loaded from a directory or
the Hub does not need it).
"""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, TrainerCallback  # noqa: E402
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer  # noqa: E402

from lldyn.data import load_preferences  # noqa: E402
from lldyn.generation import GenerationConfig, generate  # noqa: E402
from lldyn.integrations import LearningDynamicsCallback  # noqa: E402
from lldyn.models import ModelConfig, load_model  # noqa: E402
from lldyn.probes import FAMILIES, Probe, ProbeSet, build_probes  # noqa: E402
from lldyn.rephrase import RuleRephraser  # noqa: E402
from lldyn.rundir import RunDir  # noqa: E402
from lldyn.scoring import ScoreRequest, score  # noqa: E402
from lldyn.rundir import INITIAL_SAMPLES  # noqa: E402

GEN = GenerationConfig(max_new_tokens=12)
TINY = ModelConfig(name="tiny-random-llama", seed=0)


class Recorder(TrainerCallback):
    """Stands in for a ``report_to`` backend: keeps what every ``on_log`` received."""

    def __init__(self):
        self.logs: list[tuple[int, dict]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs or {})))


@pytest.fixture(scope="module")
def probes() -> ProbeSet:
    pairs = load_preferences("builtin")
    train = [p for p in pairs if p.extra.get("split") != "test"]
    test = [p for p in pairs if p.extra.get("split") == "test"]
    return build_probes(train, test, RuleRephraser(train), limit=2, seed=0)


def pair_dataset() -> Dataset:
    pairs = load_preferences("builtin:train", limit=8)
    return Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])


def run_dpo(tmp_path, callbacks, name: str):
    lm = load_model(TINY)
    args = DPOConfig(output_dir=str(tmp_path / f"trl-{name}"), per_device_train_batch_size=2, max_steps=2,
                     learning_rate=5e-2, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                     disable_tqdm=True, max_length=128)
    trainer = DPOTrainer(model=lm.model, ref_model=load_model(TINY).model, args=args, train_dataset=pair_dataset(),
                         processing_class=lm.tokenizer, callbacks=callbacks)
    trainer.train()
    return trainer, lm.tokenizer


@pytest.fixture(scope="module")
def dpo_run(probes, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dpo")
    cb = LearningDynamicsCallback(probes=probes, every=1, out=tmp / "run", generation_config=GEN)
    rec = Recorder()
    trainer, tok = run_dpo(tmp, [cb, rec], "tracked")
    return tmp, cb, rec, trainer, tok


def score_rows(model, tok, probes: ProbeSet) -> dict[tuple[str, str], float]:
    res = score(model, tok, [ScoreRequest(p.prompt, p.response) for p in probes])
    out = {(p.prompt_id, p.family): r.logp for p, r in zip(probes, res)}
    for p, r in zip(probes, res):
        if p.family == "chosen":
            out[(p.prompt_id, "argmax")] = r.argmax_logp
    return out


def test_callback_values_equal_the_engine_on_the_same_weights(dpo_run, probes):
    tmp, cb, rec, trainer, tok = dpo_run
    run = RunDir(tmp / "run")
    table = run.probe_table()
    assert sorted({r["step"] for r in table}) == [0, 1, 2]
    samples = ProbeSet.load(run.path / "probes.jsonl").with_probes(
        cb.tracker.probes.probes[len(probes):])  # the initial samples the tracker generated
    assert len(samples) == len(probes) + len(probes.prompt_ids)

    # step 0: the starting weights (a fresh copy of the same seeded model)
    start = load_model(TINY)
    for s in (json.loads(line) for line in (run.path / INITIAL_SAMPLES).read_text().splitlines()):
        prompt = probes.get(s["prompt_id"], "chosen").prompt
        assert s["response"] == generate(start.model, start.tokenizer, [prompt], GEN)[0]
    expect0 = score_rows(start.model, start.tokenizer, samples)
    # step 2: the trained weights, saved by the trainer and loaded back as a checkpoint
    trainer.save_model(str(tmp / "checkpoint"))
    trained = AutoModelForCausalLM.from_pretrained(str(tmp / "checkpoint"))
    expect2 = score_rows(trained, tok, samples)
    got = {(r["step"], r["prompt_id"], r["family"]): r["logp"] for r in table}
    assert {(p, f) for _, p, f in got} == {(p, f) for p in probes.prompt_ids for f in FAMILIES}
    for (pid, fam), value in expect0.items():
        assert got[(0, pid, fam)] == pytest.approx(value, abs=1e-4), (pid, fam)
    for (pid, fam), value in expect2.items():
        assert got[(2, pid, fam)] == pytest.approx(value, abs=1e-4), (pid, fam)
    assert max(abs(got[(2, p, f)] - got[(0, p, f)]) for p, f in expect0) > 0.1  # training moved them


def test_metrics_go_through_the_trainers_logging(dpo_run):
    tmp, cb, rec, trainer, _ = dpo_run
    metrics = [m.to_json() for m in RunDir(tmp / "run").probe_summaries()]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    ours = [(step, logs) for step, logs in rec.logs if any(k.startswith("lldyn/") for k in logs)]
    assert [step for step, _ in ours] == [0, 1, 2]
    for (step, logs), row in zip(ours, metrics):  # every on_log (report_to backends) got the same numbers
        assert logs["lldyn/family_mean/chosen"] == pytest.approx(row["family_mean/chosen"])
        assert logs["lldyn/family_delta/rejected"] == pytest.approx(row["family_delta/rejected"])
        assert logs["lldyn/signal/top1_chosen"] == pytest.approx(row["signal/top1_chosen"])
    history = [h for h in trainer.state.log_history if "lldyn/family_mean/chosen" in h]
    assert [h["step"] for h in history] == [0, 1, 2]
    assert [s for s, logs in rec.logs if "loss" in logs] == [1, 2]  # the trainer's own logs are not dropped
    config = json.loads((tmp / "run" / "config.json").read_text())
    assert config["method"] == "dpo" and config["label"] == "dpo lr=0.05"
    # A preference trainer gets the live squeeze alarm: in metrics.jsonl and, as 0/1, in every on_log.
    assert all(isinstance(m["squeeze/alarm"], bool) for m in metrics)
    for (step, logs), row in zip(ours, metrics):
        assert logs["lldyn/squeeze/alarm"] == float(row["squeeze/alarm"])


def test_tracking_does_not_change_training(dpo_run, tmp_path):
    _, _, rec, tracked, _ = dpo_run
    plain_rec = Recorder()
    plain, _ = run_dpo(tmp_path, [plain_rec], "plain")
    losses = lambda r: [logs["loss"] for _, logs in r.logs if "loss" in logs]  # noqa: E731
    assert losses(rec) == losses(plain_rec) and len(losses(rec)) == 2
    for (name, a), (_, b) in zip(tracked.model.state_dict().items(), plain.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_free_running_generations_through_the_callback(probes, tmp_path):
    """The repeater inside a TRL DPOTrainer: the tracker's own code path, every 2nd evaluation, and the last
    generations are the trained model's greedy ones, scored by the engine."""
    from lldyn.generation import sample
    from lldyn.scoring import EncodedPair, ScoreConfig, score_encoded
    from lldyn.tracking import FreeRunConfig

    cb = LearningDynamicsCallback(probes=probes, every=1, out=tmp_path / "run", initial_sample=False,
                                  free_run=FreeRunConfig(prompts=1, max_new_tokens=4, every=2))
    rec = Recorder()
    trainer, tok = run_dpo(tmp_path, [cb, rec], "repeater")
    run = RunDir(tmp_path / "run")
    rows = run.generations()
    assert [(r.step, r.prompt_id) for r in rows] == [(0, probes.prompt_ids[0]), (2, probes.prompt_ids[0])]
    assert json.loads(run.config_path.read_text())["free_run"] == {"prompts": 1, "max_new_tokens": 4, "every": 2}
    logged = [step for step, logs in rec.logs if "lldyn/generation/loop_share" in logs]
    assert logged == [0, 2]
    (s,) = sample(trainer.model, tok, [probes.get(probes.prompt_ids[0], "chosen").prompt],
                  GenerationConfig(max_new_tokens=4))
    (res,) = score_encoded(trainer.model, [EncodedPair(s.prompt_ids, s.completion_ids)], tok.pad_token_id,
                           ScoreConfig())
    assert (rows[-1].text, rows[-1].eos) == (s.text, s.eos)
    assert rows[-1].logp == pytest.approx(res.logp, abs=1e-4)


def test_sft_trainer_and_logging_only(probes, tmp_path):
    lm = load_model(TINY)
    pairs = load_preferences("builtin:train", limit=8)
    data = Dataset.from_list([{"prompt": p.prompt, "completion": p.chosen} for p in pairs])
    cb = LearningDynamicsCallback(probes=probes, every=2, initial_sample=False)  # no out: logging only
    args = SFTConfig(output_dir=str(tmp_path / "sft"), per_device_train_batch_size=2, max_steps=2, learning_rate=5e-2,
                     logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
                     max_length=128)
    trainer = SFTTrainer(model=lm.model, args=args, train_dataset=data, processing_class=lm.tokenizer, callbacks=[cb])
    trainer.train()
    assert [m["step"] for m in cb.metrics()] == [0, 2]
    assert not any("squeeze/alarm" in m for m in cb.metrics())  # no squeeze alarm on SFT
    assert not any(tmp_path.glob("**/probe_table.jsonl"))
    rows = {(r["prompt_id"], r["family"]): r["logp"] for r in cb.tracker.last_rows}
    expect = score_rows(trainer.model, lm.tokenizer, probes)  # the weights after the last step
    assert set(rows) == set(expect)
    for key, value in expect.items():
        assert rows[key] == pytest.approx(value, abs=1e-4), key
    chosen = [rows[(p, "chosen")] for p in probes.prompt_ids]
    assert cb.metrics()[-1]["family_mean/chosen"] == pytest.approx(sum(chosen) / len(chosen))
    assert any(abs(v) > 0.1 for k, v in cb.metrics()[-1].items() if k.startswith("family_delta/"))


WORKER = '''
import json, os, sys
import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer
from lldyn.data import load_preferences
from lldyn.generation import GenerationConfig
from lldyn.integrations import LearningDynamicsCallback
from lldyn.models import ModelConfig, load_model
from lldyn.probes import ProbeSet
from lldyn.scoring import ScoreRequest, score

out, probes_path = sys.argv[1], sys.argv[2]
tiny = ModelConfig(name="tiny-random-llama", seed=0)
lm = load_model(tiny)
pairs = load_preferences("builtin:train", limit=8)
data = Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])
cb = LearningDynamicsCallback(probes=probes_path, every=1, out=out, generation_config=GenerationConfig(max_new_tokens=12))
args = DPOConfig(output_dir=out + "-trl", per_device_train_batch_size=1, max_steps=2, learning_rate=5e-2,
                 logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
                 max_length=128)
trainer = DPOTrainer(model=lm.model, ref_model=load_model(tiny).model, args=args, train_dataset=data,
                     processing_class=lm.tokenizer, callbacks=[cb])
trainer.train()
if trainer.accelerator.is_main_process:  # every probe, scored directly by one process on the final weights
    probes = cb.tracker.probes
    res = score(trainer.model, lm.tokenizer, [ScoreRequest(p.prompt, p.response) for p in probes])
    rows = [[p.prompt_id, p.family, r.logp] for p, r in zip(probes, res)]
    rows += [[p.prompt_id, "argmax", r.argmax_logp] for p, r in zip(probes, res) if p.family == "chosen"]
    json.dump({"world": trainer.accelerator.num_processes, "rows": rows}, open(out + "-direct.json", "w"))
trainer.accelerator.wait_for_everyone()  # no rank leaves (tearing down gloo) while another still works
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
'''


@pytest.mark.slow
def test_accelerate_two_processes_equal_single_process_values(probes, tmp_path):
    """`accelerate launch --num_processes 2` on CPU (gloo): each rank scores half the prompts, rank 0 writes;
    the values equal a single process's engine on the same weights (step 0: the starting model; last step: the
    trained model, scored directly by one process)."""
    import socket
    import subprocess
    import sys

    pytest.importorskip("accelerate")
    (tmp_path / "worker.py").write_text(WORKER)
    probes_path = probes.save(tmp_path / "probes.jsonl")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # `--cpu` would run a single process (accelerate's multi-CPU path needs MPI); `--multi_gpu` with no GPU
    # visible starts two torchrun workers that talk over gloo on the CPU.
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path),
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", str(port), str(tmp_path / "worker.py"), str(tmp_path / "run"),
                           str(probes_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, "\n".join(line for line in proc.stderr.splitlines() if "Warning" not in line)[-4000:]
    direct = json.loads((tmp_path / "run-direct.json").read_text())
    assert direct["world"] == 2
    table = RunDir(tmp_path / "run").probe_table()
    keys = [(r["step"], r["prompt_id"], r["family"]) for r in table]
    assert len(keys) == len(set(keys)) == 3 * len(probes.prompt_ids) * len(FAMILIES)  # rank 0 alone wrote, once
    got = {k: r["logp"] for k, r in zip(keys, table)}
    for pid, fam, logp in direct["rows"]:
        assert got[(2, pid, fam)] == pytest.approx(logp, abs=1e-4), (pid, fam)
    start = load_model(TINY)
    samples = probes.with_probes(Probe(s["prompt_id"], "initial_sample", s["prompt"], s["response"])
                                 for s in map(json.loads, (tmp_path / "run" / INITIAL_SAMPLES).read_text().splitlines()))
    assert [s.prompt_id for s in samples if s.family == "initial_sample"] == probes.prompt_ids
    for s in samples:
        if s.family == "initial_sample":  # generated by the rank that owns the prompt, gathered to all
            assert s.response == generate(start.model, start.tokenizer, [s.prompt], GEN)[0]
    for (pid, fam), value in score_rows(start.model, start.tokenizer, samples).items():
        assert got[(0, pid, fam)] == pytest.approx(value, abs=1e-4), (pid, fam)


def test_plain_trainer_with_a_causal_lm(probes, tmp_path):
    """transformers' own Trainer (no TRL): the callback tracks, writes a run directory and matches the engine."""
    from transformers import Trainer, TrainingArguments

    lm = load_model(TINY)
    tok = lm.tokenizer
    pairs = load_preferences("builtin:train", limit=4)

    def example(p):
        ids = tok(f"{p.prompt} {p.chosen}")["input_ids"][:64]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids}

    data = Dataset.from_list([example(p) for p in pairs])
    cb = LearningDynamicsCallback(probes=probes, every=1, out=tmp_path / "run", initial_sample=False,
                                  tokenizer=tok)  # a plain Trainer needs no processing_class
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=1, max_steps=2,
                             learning_rate=5e-2, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                             seed=0, disable_tqdm=True)
    trainer = Trainer(model=lm.model, args=args, train_dataset=data, callbacks=[cb])
    trainer.train()
    assert [m["step"] for m in cb.metrics()] == [0, 1, 2]
    rows = {(r["prompt_id"], r["family"]): r["logp"] for r in cb.tracker.last_rows}
    expect = score_rows(trainer.model, tok, probes)
    assert set(rows) == set(expect) and all(rows[k] == pytest.approx(v, abs=1e-4) for k, v in expect.items())
    assert any(abs(v) > 0.1 for k, v in cb.metrics()[-1].items() if k.startswith("family_delta/"))
    assert (tmp_path / "run" / "probe_table.jsonl").is_file()
    assert any("lldyn/family_mean/chosen" in h for h in trainer.state.log_history)
