"""`lldyn train --fsdp` on two processes (FSDP2 under `torchrun`, gloo on the CPU) gives the one-process run's numbers.

FSDP2 shards the tiny Llama per decoder layer and at its root; every rank trains rows ``rank::2`` of each
micro-batch and FSDP2 averages the gradients. The probe set has 5 prompts, which do not split evenly over 2
ranks: rank 1 scores fewer probes with fewer forward passes (2 against 3) and generates fewer initial samples,
and must pad with dummy forward passes or the ranks' all-gathers wait on each other forever; every two-process command runs under a subprocess
timeout, so such a hang fails the test in seconds, not at the suite's end.

Tolerance: 1e-4 absolute, float32 (measured: ≤ 3.1e-5 on log-probs of magnitude ≈ 200, from the order of
float reductions).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import final_weights, free_port, max_weight_difference, subprocess_env
import torch
import torch.distributed

from lldyn.rundir import RunDir

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is needed for a two-process run on CPU")

TINY = ["--model", "tiny-random-llama", "--data", "builtin:train", "--limit", "12", "--max-length", "96",
        "--max-prompt-tokens", "48", "--lr", "1e-3", "--batch-size", "4"]
TIMING = ("seconds", "probe_seconds")
ABS = 1e-4
HANG = 150  # seconds: a two-process run here takes ~25 s on a loaded 2-core machine




def one_process(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lldyn.cli", "train", *args], cwd=tmp, env=subprocess_env(tmp),
                          capture_output=True, text=True, timeout=HANG)


def torchrun(tmp: Path, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *command],
                          cwd=tmp, env=subprocess_env(tmp), capture_output=True, text=True, timeout=HANG)


def two_processes(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return torchrun(tmp, "-m", "lldyn.cli", "train", *args, "--fsdp")


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, "\n".join(line for line in proc.stderr.splitlines() if "arning" not in line)[-4000:]
    return proc


def assert_same_metrics(one: Path, two: Path, tol: float = ABS) -> None:
    a, b = ([r.to_json() for r in RunDir(d).metrics_rows()] for d in (one, two))
    assert [(r["step"], r["event"]) for r in a] == [(r["step"], r["event"]) for r in b]
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb), set(ra) ^ set(rb)
        for key, va in ra.items():
            if key in TIMING:
                continue
            if isinstance(va, float):
                assert abs(rb[key] - va) <= tol, (ra["step"], ra["event"], key, va, rb[key])
            else:
                assert rb[key] == va, (ra["step"], key)


def assert_same_probe_table(one: Path, two: Path, tol: float = ABS) -> None:
    ta, tb = RunDir(one).probe_table(), RunDir(two).probe_table()
    assert [(r["step"], r["prompt_id"], r["family"]) for r in ta] == [(r["step"], r["prompt_id"], r["family"])
                                                                      for r in tb]
    assert ta and max(abs(ra["logp"] - rb["logp"]) for ra, rb in zip(ta, tb)) <= tol
    assert [r["n_tokens"] for r in ta] == [r["n_tokens"] for r in tb]






def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- no processes needed


def test_equal_shares_pads_the_short_ranks_with_dummies():
    from lldyn.distributed import equal_shares

    assert [equal_shares("abcde", r, 2) for r in range(2)] == [list("ace"), ["b", "d", None]]
    assert [equal_shares("a", r, 3) for r in range(3)] == [["a"], [None], [None]]
    assert [equal_shares("abcdef", r, 3) for r in range(3)] == [list("ad"), list("be"), list("cf")]
    assert equal_shares([], 0, 2) == [] and equal_shares("abc", 0, 1) == list("abc")


@pytest.mark.parametrize("prefix_sharing", [True, False])
def test_forward_passes_counts_the_engines_forward_passes(tiny, prefix_sharing):
    """The count a sharded rank pads up to is the count the engine runs (a decoder pre-hook counts them), with
    small budgets that split prompts and responses over many batches."""
    from lldyn.scoring import Encoder, ScoreConfig, forward_passes, score_encoded

    cfg = ScoreConfig(batch_tokens=160, max_batch=3, prefix_sharing=prefix_sharing, max_length=96)
    enc = Encoder(tiny.tokenizer, cfg)
    prompts = ["hi", "a longer prompt with several words in it", "q", "what is two plus two?"]
    responses = ["ok", "a much longer response that goes on and on for a while", "", "four", "no idea at all"]
    encoded = [enc.pair(p, r) for p in prompts for r in responses[: 2 + len(p) % 4]]
    calls = []
    handle = tiny.model.get_decoder().register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        for subset in (encoded, encoded[:1], encoded[3:9], []):
            calls.clear()
            if subset:
                score_encoded(tiny.model, subset, tiny.tokenizer.pad_token_id, cfg)
            assert forward_passes(subset, cfg) == len(calls)
    finally:
        handle.remove()
    assert forward_passes(encoded, cfg) > len({p.prompt_ids for p in encoded})  # the budget did split


@pytest.mark.parametrize("how", ["flag", "toml"])
def test_fsdp_without_a_process_group_is_one_clear_error(tmp_path, how):
    (tmp_path / "run.toml").write_text("fsdp = true\n")
    extra = ["--fsdp"] if how == "flag" else ["--config", "run.toml"]
    proc = one_process(tmp_path, *TINY, "--method", "sft", "--steps", "1", *extra, "--out", "run")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "lldyn train: error: field 'fsdp': --fsdp shards the model over processes, but this is one process (no "
        "process group) (expected torchrun --nproc_per_node N (or accelerate launch --num_processes N) -m lldyn.cli "
        "train --fsdp ..., with N > 1)"]
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- SFT with probes and initial samples


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
    """SFT with 5 probe prompts (uneven over 2 ranks), initial samples, probes every step, once in one process
    and once sharded over two."""
    tmp = tmp_path_factory.mktemp("fsdp_sft")
    ok(subprocess.run([sys.executable, "-m", "lldyn.cli", "probes", "build", "--data", "builtin", "--out",
                       str(tmp / "probes.jsonl"), "--limit", "5"], env=subprocess_env(tmp), capture_output=True, text=True,
                      timeout=HANG))
    args = [*TINY, "--method", "sft", "--steps", "3", "--probes", "probes.jsonl", "--eval-every", "1",
            "--checkpoint-every", "2"]
    one = ok(one_process(tmp, *args, "--out", "one"))
    two = ok(two_processes(tmp, *args, "--out", "two"))
    return tmp, args, one, two


def test_two_process_fsdp_sft_with_uneven_probes_equals_one_process(sft_runs):
    tmp, _, one, two = sft_runs
    assert "trained 3 steps on 2 processes" in two.stdout and "trained 3 steps;" in one.stdout
    assert uneven_forward_passes(tmp) == [3, 2]  # without dummy forwards rank 0's third one would hang
    assert_same_metrics(tmp / "one", tmp / "two")
    assert_same_probe_table(tmp / "one", tmp / "two")
    assert [r.step for r in RunDir(tmp / "two").probe_summaries()] == [0, 1, 2, 3]
    # the initial samples were generated on both ranks (greedy, synchronised) and are the one-process ones
    assert (tmp / "two" / "initial_samples.jsonl").read_text() == (tmp / "one" / "initial_samples.jsonl").read_text()
    assert any(r["family"] == "initial_sample" for r in RunDir(tmp / "two").probe_table())
    assert max_weight_difference(tmp / "one", tmp / "two") <= 1e-5
    state = json.loads((tmp / "two" / "checkpoints" / "step-00000003" / "state.json").read_text())
    assert state["fsdp_processes"] == 2
    train = [r.to_json() for r in RunDir(tmp / "two").train_rows()]
    assert train[-1]["loss"] < train[0]["loss"]  # it trained


def uneven_forward_passes(tmp: Path) -> list[int]:
    """The engine's forward passes of each rank's share of the probes (with the initial samples) at step 0."""
    from lldyn.distributed import equal_shares
    from lldyn.models import ModelConfig, load_model
    from lldyn.probes import ProbeSet
    from lldyn.scoring import Encoder, ScoreConfig, forward_passes

    probes = ProbeSet.load(tmp / "probes.jsonl")
    samples = {r["prompt_id"]: r["response"] for r in map(json.loads, (tmp / "two" / "initial_samples.jsonl").open())}
    cfg = ScoreConfig(max_length=96, max_prompt_tokens=48)
    enc = Encoder(load_model(ModelConfig(name="tiny-random-llama")).tokenizer, cfg)
    counts = []
    for rank in range(2):
        mine = {pid for pid in equal_shares(probes.prompt_ids, rank, 2) if pid is not None}
        pairs = [enc.pair(p.prompt, p.response) for p in probes if p.prompt_id in mine]
        pairs += [enc.pair(p.prompt, samples[p.prompt_id]) for p in probes if p.prompt_id in mine and p.family == "chosen"]
        counts.append(forward_passes(pairs, cfg))
    return counts


def _probes(tmp: Path):
    from lldyn.probes import ProbeSet

    return list(ProbeSet.load(tmp / "probes.jsonl"))


def test_sharded_checkpoint_loads_in_one_process(sft_runs):
    """The sharded run's last checkpoint, loaded into an unsharded model in this process, scores the probes as
    the sharded run's last evaluation did."""
    from lldyn.runs import load_run_model
    from lldyn.scoring import ScoreConfig, ScoreRequest, score

    tmp = sft_runs[0]
    lm = load_run_model(tmp / "two")
    rows = [r for r in RunDir(tmp / "two").probe_table() if r["step"] == 3 and r["family"] == "chosen"]
    chosen = {p.prompt_id: p for p in _probes(tmp) if p.family == "chosen"}
    cfg = json.loads((tmp / "two" / "config.json").read_text())
    got = score(lm.model, lm.tokenizer, [ScoreRequest(chosen[r["prompt_id"]].prompt, chosen[r["prompt_id"]].response)
                                         for r in rows],
                ScoreConfig(max_length=cfg["max_length"], max_prompt_tokens=cfg["max_prompt_tokens"]))
    assert len(rows) == 5
    assert max(abs(g.logp - r["logp"]) for g, r in zip(got, rows)) <= ABS


def test_fsdp_checkpoint_resumed_with_another_number_of_processes_is_one_clear_error(sft_runs, tmp_path):
    tmp, args, _, _ = sft_runs
    shutil.copy(tmp / "probes.jsonl", tmp_path / "probes.jsonl")
    shutil.copytree(tmp / "two", tmp_path / "two")
    shutil.rmtree(tmp_path / "two" / "checkpoints" / "step-00000003")
    before = tree(tmp_path)
    for extra in ([], ["--fsdp"]):  # as the run was configured, or without --fsdp: the checkpoint decides
        proc = one_process(tmp_path, *args, *extra, "--out", "two", "--resume")
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            "lldyn train: error: two/checkpoints/step-00000002/state.json, field 'fsdp_processes': this FSDP "
            "checkpoint was written by 2 processes; resuming it on 1 is refused (expected torchrun --nproc_per_node 2 "
            "(or accelerate launch --num_processes 2) with --fsdp; its model.safetensors loads in one process for "
            "analysis)"]
        assert tree(tmp_path) == before  # nothing written


# --------------------------------------------------------------------------- DPO: reference, checkpoints, resume


@pytest.fixture(scope="module")
def dpo_runs(sft_runs):
    tmp = sft_runs[0]
    args = [*TINY, "--method", "dpo", "--steps", "3", "--probes", "probes.jsonl", "--eval-every", "2",
            "--checkpoint-every", "2", "--no-initial-sample"]
    ok(one_process(tmp, *args, "--out", "dpo-one"))
    ok(two_processes(tmp, *args, "--out", "dpo-two"))
    return tmp, args


def test_two_process_fsdp_dpo_equals_one_process(dpo_runs):
    """The sharded policy is its own reference: every rank scores its share of the pairs' reference log-probs."""
    tmp, _ = dpo_runs
    assert_same_metrics(tmp / "dpo-one", tmp / "dpo-two")
    assert_same_probe_table(tmp / "dpo-one", tmp / "dpo-two")
    ref = [[json.loads(x) for x in (tmp / run / "ref_logps-0.jsonl").read_text().splitlines()]
           for run in ("dpo-one", "dpo-two")]
    assert [r["id"] for r in ref[0]] == [r["id"] for r in ref[1]] and len(ref[0]) == 12
    assert max(max(abs(a["chosen"] - b["chosen"]), abs(a["rejected"] - b["rejected"]))
               for a, b in zip(*ref)) <= ABS
    assert max_weight_difference(tmp / "dpo-one", tmp / "dpo-two") <= 1e-5


def test_sharded_checkpoint_resume_gives_the_same_final_numbers(dpo_runs, tmp_path):
    """Killed after step 3's rows but before its checkpoint: both ranks load their slices of step 2's weights
    and optimizer state, rank 0 drops the later rows, and the run ends where the uninterrupted one ended."""
    tmp, args = dpo_runs
    shutil.copy(tmp / "probes.jsonl", tmp_path / "probes.jsonl")
    shutil.copytree(tmp / "dpo-two", tmp_path / "dpo-two")
    shutil.rmtree(tmp_path / "dpo-two" / "checkpoints" / "step-00000003")
    ok(two_processes(tmp_path, *args, "--out", "dpo-two", "--resume"))
    assert_same_metrics(tmp / "dpo-two", tmp_path / "dpo-two", tol=1e-6)
    assert_same_probe_table(tmp / "dpo-two", tmp_path / "dpo-two", tol=1e-6)
    assert max_weight_difference(tmp / "dpo-two", tmp_path / "dpo-two") <= 1e-6
    assert_same_metrics(tmp / "dpo-one", tmp_path / "dpo-two")


# --------------------------------------------------------------------------- LoRA


LORA_WORKER = '''
import json, sys
import torch, torch.distributed as dist
from lldyn.models import ModelConfig, load_model
from lldyn.train import TrainConfig, train

cfg = TrainConfig(method="sft", model="tiny-random-llama", data="builtin:train", limit=12, max_length=96,
                  max_prompt_tokens=48, lr=1e-2, steps=2, batch_size=4, probes="probes.jsonl", eval_every=1,
                  initial_sample=False, lora_r=4, fsdp=True, out=sys.argv[1])
result = train(cfg, progress=False)
start = dict(load_model(ModelConfig(name="tiny-random-llama", seed=0)).model.named_parameters())
changes = {"base": 0.0, "adapter": 0.0, "n_base": 0, "n_adapter": 0}
for name, p in result.model.named_parameters():  # every rank gathers each whole tensor, in the same order
    whole = p.detach().full_tensor()
    if p.requires_grad:
        changes["adapter"] = max(changes["adapter"], float(whole.abs().max()))  # lora_B starts at 0
        changes["n_adapter"] += 1
    else:
        base = name.replace("base_model.model.", "").replace(".base_layer", "")
        changes["base"] = max(changes["base"], float((whole - start[base]).abs().max()))
        changes["n_base"] += 1
if dist.get_rank() == 0:
    print("CHANGES " + json.dumps(changes))
dist.destroy_process_group()
'''


def test_lora_under_fsdp_trains_only_the_adapter_and_the_probes_see_it(sft_runs, tmp_path):
    """Through the Python API under torchrun: after two sharded LoRA steps every frozen base weight, gathered
    whole, is bit-identical to the starting model's; the adapter moved; and the probes tracked on the sharded
    adapted model equal those of the same LoRA run in one process."""
    tmp = sft_runs[0]
    shutil.copy(tmp / "probes.jsonl", tmp_path / "probes.jsonl")
    (tmp_path / "worker.py").write_text(LORA_WORKER)
    proc = ok(torchrun(tmp_path, "worker.py", "two"))
    changes = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("CHANGES "))[8:])
    assert changes["base"] == 0.0 and changes["n_base"] > changes["n_adapter"] > 0
    assert changes["adapter"] > 0
    ok(one_process(tmp_path, "--model", "tiny-random-llama", "--data", "builtin:train", "--limit", "12",
                   "--max-length", "96", "--max-prompt-tokens", "48", "--lr", "1e-2", "--steps", "2",
                   "--batch-size", "4", "--method", "sft", "--probes", "probes.jsonl", "--eval-every", "1",
                   "--no-initial-sample", "--lora-r", "4", "--out", "one"))
    assert_same_probe_table(tmp_path / "one", tmp_path / "two")
    moved = [s.family_delta["chosen"] for s in RunDir(tmp_path / "two").probe_summaries()]
    assert moved[0] == 0.0 and abs(moved[-1]) > 0.1  # the probes saw the adapter's change
    assert sorted(final_weights(tmp_path / "two")) == sorted(final_weights(tmp_path / "one"))
    assert all("lora_" in k for k in final_weights(tmp_path / "two"))


def test_a_deepspeed_zero3_model_is_refused_by_the_tracker(tiny_fresh, tmp_path):
    """ZeRO-3 is untested here (docs/training.md): its partitioned weights (marked ``ds_id``) are refused with
    one clear error rather than tracked with a possible hang."""
    from lldyn.errors import LldynError
    from lldyn.probes import Probe, ProbeSet
    from lldyn.tracking import Tracker

    next(tiny_fresh.model.parameters()).ds_id = 0
    probes = ProbeSet((Probe("p", "chosen", "hi", "yo"),))
    with pytest.raises(LldynError, match="ZeRO-3") as err:
        Tracker(tiny_fresh.model, tiny_fresh.tokenizer, probes, run=tmp_path / "run")
    assert err.value.field == "deepspeed" and not (tmp_path / "run").exists()


def test_fsdp_non_finite_loss_stops_every_rank_with_the_last_good_weights(tmp_path):
    """An absurd SGD step makes step 2's loss NaN: both ranks agree, gather step 1's weights for rank 0 to keep,
    and stop with the same one line (no hang, no traceback)."""
    args = [*TINY, "--method", "sft", "--steps", "4", "--batch-size", "2", "--lr", "1e30", "--optimizer", "sgd",
            "--max-grad-norm", "0"]
    proc = two_processes(tmp_path, *args, "--out", "run")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lldyn train: error:")]
    assert errors and len(set(errors)) == 1 and "non-finite loss, gradient or weights at step 2" in errors[0]
    assert "[rank" not in proc.stderr
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-00000001"]
    assert RunDir(tmp_path / "run").events() == [(1, "train"), (2, "stopped")]
    weights = final_weights(tmp_path / "run")
    assert all(bool(w.isfinite().all()) for w in weights.values()) and len(weights) == 21


def test_a_sharded_run_is_decomposed_by_replay_in_one_process(sft_runs, tmp_path):
    """`--decompose-every` is refused under sharding; `lldyn decompose` replays the sharded run unsharded in one
    process, and the replay follows it (its losses within the replay's 1e-4 relative check)."""
    tmp = sft_runs[0]
    shutil.copy(tmp / "probes.jsonl", tmp_path / "probes.jsonl")
    shutil.copytree(tmp / "two", tmp_path / "two")
    proc = subprocess.run([sys.executable, "-m", "lldyn.cli", "decompose", "--run", "two", "--every", "3"],
                          cwd=tmp_path, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=HANG)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = RunDir(tmp_path / "two").decompose_rows()
    assert rows and {r["step"] for r in rows} == {3}
