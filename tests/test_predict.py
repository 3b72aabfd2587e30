"""``lldyn predict``: a planned phase's first-order prediction against the decomposition of the same step, a naive
per-step loop, the real training loop's prefix, the CLI, and the rule for plans longer than their data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lldyn.cli import main
from lldyn.decompose import naive_first_order_prediction
from lldyn.errors import LldynError
from lldyn.losses import dpo_loss
from lldyn.models import ModelConfig, load_model
from lldyn.predict import PredictConfig, pair_probes, planned_phase, predict_phase
from lldyn.probes import Probe, ProbeSet
from lldyn.rundir import DECOMPOSE
from lldyn.runs import load_run_model
from lldyn.scoring import Encoder, ScoreRequest, collate, score, sequence_logps
from lldyn.train import TrainConfig, train
from lldyn.train.batches import encode_phase_data, load_training_data, micro_batch
from lldyn.train.config import phases

TINY = dict(model="tiny-random-llama", data="builtin:train", limit=8, batch_size=2, max_length=96,
            max_prompt_tokens=48, eval_every=0, initial_sample=False)
PROBES = [
    Probe("a", "chosen", "hi there", "hello you"),
    Probe("a", "rejected", "hi there", "go away"),
    Probe("b", "chosen", "name a colour", "red"),
    Probe("b", "random_sentence", "name a colour", "Bread rises in a warm room."),
    Probe("c", "chosen", "What is the capital of France?", "The capital of France is Paris."),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine two threads spin; restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def probes_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("probes") / "probes.jsonl"
    ProbeSet(tuple(PROBES)).save(path)
    return path


def cfg_(tmp_path: Path, **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "out": str(tmp_path / "run"), **kw})


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_one_step_phase_equals_the_decompositions_prediction_of_that_step(tmp_path, probes_file, optimizer):
    """A one-step phase: predict's Δθ (the plan's optimizer on the gradient at θ0, clipped) is the step's real Δθ,
    so its prediction is StepDecomposer's ``predicted`` for the real step (within 1e-5 nats)."""
    cfg = cfg_(tmp_path, method="dpo", steps=1, lr=1e-3, optimizer=optimizer, max_grad_norm=0.5,
               probes=str(probes_file), decompose_every=1)
    result = train(cfg, progress=False)
    rows = {r["probe_id"]: r for r in map(json.loads, (result.run.path / DECOMPOSE).read_text().splitlines())}
    pred = predict_phase(cfg, PROBES)
    decomposed = torch.tensor([rows[p.id]["predicted"] for p in PROBES], dtype=torch.float64)
    assert float(decomposed.abs().max()) > 1e-3  # the step moved the probes
    assert float((pred.predicted - decomposed).abs().max()) <= 1e-5
    assert pred.steps == 1 and pred.prefix_steps == 0
    assert torch.equal(pred.prefix, torch.zeros(len(PROBES), dtype=torch.float64))
    before = torch.tensor([rows[p.id]["logp_before"] for p in PROBES], dtype=torch.float64)
    assert float((pred.start - before).abs().max()) <= 1e-4


def test_k_step_sgd_phase_equals_the_sum_of_per_step_predictions_at_theta0(tmp_path):
    """Naive reference: each planned batch's DPO gradient at θ0 by autograd (one sequence at a time, reference =
    the policy's own log-probs, margin 0), clipped by hand, times the hand-worked linear schedule
    η_t = η (T − t) / T, dotted with each probe's gradient (one backward per probe), summed over the steps."""
    steps, lr, beta = 3, 0.5, 0.1  # a large step: gradients taken anywhere but at θ0 would differ
    base = cfg_(tmp_path, method="dpo", steps=steps, lr=lr, optimizer="sgd", scheduler="linear", beta=beta)
    lm = load_model(ModelConfig(name="tiny-random-llama", seed=0))
    model, tok = lm.model, lm.tokenizer
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    encoder = Encoder(tok, base.scoring())
    examples = encode_phase_data(phases(base)[0], *load_training_data(base), encoder, base.data)
    model.eval()
    grads, norms = [], []
    for t in range(steps):
        batch = micro_batch(examples, base, 0, t)
        logp = lambda e: sequence_logps(model, collate([e], tok.pad_token_id)).logps[0]
        chosen = torch.stack([logp(e.chosen_ids) for e in batch])
        rejected = torch.stack([logp(e.rejected_ids) for e in batch])
        loss = dpo_loss(chosen, rejected, chosen.detach(), rejected.detach(), beta).loss
        g = torch.autograd.grad(loss, list(params.values()))
        grads.append(dict(zip(params, g)))
        norms.append(float(torch.sqrt(sum((x.double() ** 2).sum() for x in g))))
    clip = 0.6 * max(norms)  # at least the largest gradient is clipped
    delta_sum = torch.zeros(len(PROBES), dtype=torch.float64)
    for t in range(steps):
        scale = min(1.0, clip / (norms[t] + 1e-6)) * lr * (steps - t) / steps
        delta = {n: -scale * g for n, g in grads[t].items()}
        delta_sum += naive_first_order_prediction(model, tok, PROBES, delta, base.scoring())
    cfg = cfg_(tmp_path, method="dpo", steps=steps, lr=lr, optimizer="sgd", scheduler="linear", beta=beta,
               max_grad_norm=clip)
    pred = predict_phase(cfg, PROBES)
    assert float(delta_sum.abs().max()) > 1e-3
    assert float((pred.predicted - delta_sum).abs().max()) <= 1e-5  # of values up to ~9 nats


def test_the_real_prefix_is_the_training_loops_first_steps(tmp_path):
    """With ``prefix_steps`` K the prefix part is the actual change of the first K steps of ``lldyn train`` (same
    batches, optimizer, constant schedule); the prediction is prefix + linearised rest."""
    k = 2
    cfg = cfg_(tmp_path, method="dpo", steps=k, lr=1e-3, optimizer="adamw")
    trained = train(cfg, progress=False)
    start = load_model(ModelConfig(name="tiny-random-llama", seed=0))
    end = load_run_model(trained.run.path)
    reqs = [ScoreRequest(p.prompt, p.response) for p in PROBES]
    actual = torch.tensor([b.logp - a.logp for a, b in zip(score(start.model, start.tokenizer, reqs, cfg.scoring()),
                                                           score(end.model, end.tokenizer, reqs, cfg.scoring()))],
                          dtype=torch.float64)
    pred = predict_phase(cfg_(tmp_path, method="dpo", steps=k + 2, lr=1e-3, optimizer="adamw"), PROBES,
                         PredictConfig(prefix_steps=k))
    assert float(actual.abs().max()) > 1e-3
    assert float((pred.prefix - actual).abs().max()) <= 1e-4
    assert torch.allclose(pred.predicted, pred.prefix + pred.linear)
    assert float(pred.linear.abs().max()) > 0


def test_sft_phase_of_a_two_phase_plan_and_pairs_as_probes(tmp_path):
    """The SFT phase of sft_dpo on 2 pairs (every batch is both): with SGD each step's Δθ = η ∇ Σ_i log π(y+_i) / 2
    at θ0, so Σ_i ⟨∇ log π(y+_i), Δθ⟩ = η ‖Σ_i ∇ log π(y+_i)‖² / 2 > 0: the trained y+ rise together."""
    plan = cfg_(tmp_path, method="sft_dpo", limit=2, sft_steps=2, steps=1, lr=1e-3, optimizer="sgd",
                max_grad_norm=0.0)
    pairs = pair_probes(load_training_data(plan)[0])
    assert [p.family for p in pairs] == ["chosen", "rejected"] * 2
    pred = predict_phase(plan, pairs, PredictConfig(phase="sft"))
    assert pred.steps == 2
    assert sum(float(v) for p, v in zip(pairs, pred.predicted) if p.family == "chosen") > 0


def test_phase_length_rule(tiny, tmp_path):
    """steps alone may repeat the data (as in training); steps and epochs both stated must agree; a prefix must
    leave steps to predict. 8 pairs at batch size 2: one epoch is 4 steps."""
    enc = Encoder(tiny.tokenizer, cfg_(tmp_path).scoring())
    assert planned_phase(cfg_(tmp_path, steps=10), PredictConfig(stated=frozenset({"steps"})), enc).steps == 10
    assert planned_phase(cfg_(tmp_path, epochs=1.5), PredictConfig(stated=frozenset({"epochs"})), enc).steps == 6
    both = frozenset({"steps", "epochs"})
    assert planned_phase(cfg_(tmp_path, steps=4, epochs=1.0), PredictConfig(stated=both), enc).steps == 4
    with pytest.raises(LldynError, match="hold only 4 steps"):
        planned_phase(cfg_(tmp_path, steps=5, epochs=1.0), PredictConfig(stated=both), enc)
    with pytest.raises(LldynError, match="hold only 2 steps"):  # the SFT phase of sft_dpo: sft_steps / sft_epochs
        planned_phase(cfg_(tmp_path, method="sft_dpo", sft_steps=3, sft_epochs=0.5),
                      PredictConfig(phase="sft", stated=frozenset({"sft_steps", "sft_epochs"})), enc)
    with pytest.raises(LldynError, match="leaves nothing to predict"):
        planned_phase(cfg_(tmp_path, steps=3), PredictConfig(prefix_steps=3), enc)


TINY_FLAGS = ["--model", "tiny-random-llama", "--data", "builtin:train", "--limit", "8", "--batch-size", "2",
              "--max-length", "96", "--max-prompt-tokens", "48"]


def test_cli_predicts_a_plan_end_to_end(tmp_path, probes_file, capsys):
    out = tmp_path / "table.jsonl"
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(json.dumps({"id": "h1", "prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}) + "\n")
    code = main(["predict", *TINY_FLAGS, "--method", "dpo", "--steps", "2", "--lr", "1e-3", "--probes",
                 str(probes_file), "--pairs", str(held_out), "--prefix-steps", "1", "--out", str(out)])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["probe_id"] for r in rows] == [p.id for p in PROBES] + ["h1/chosen", "h1/rejected"]
    for r in rows:
        assert r["predicted"] == pytest.approx(r["prefix_actual"] + r["linear"])
        assert r["steps"] == 2 and r["prefix_steps"] == 1
    assert "predicted Δ log π over 2 steps" in capsys.readouterr().out


@pytest.mark.parametrize("extra, needle", [
    (["--steps", "5", "--epochs", "1"], "hold only 4 steps"),
    (["--steps", "2", "--prefix-steps", "2"], "leaves nothing to predict"),
    (["--method", "sft_dpo", "--phase", "dpo"], "--start MODEL"),
    (["--phase", "sft"], "has no phase 'sft'"),
    (["--batch-size", "64"], "larger than the 8 usable examples"),
])
def test_bad_plan_is_one_clear_line_exit_2_nothing_written(tmp_path, probes_file, capsys, extra, needle):
    out = tmp_path / "table.jsonl"
    code = main(["predict", *TINY_FLAGS, "--probes", str(probes_file), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_on_policy_plan_is_refused(tmp_path, probes_file, capsys):
    plan = tmp_path / "plan.toml"
    plan.write_text('method = "dpo"\non_policy = true\npreference_source = "hf:x"\n')
    code = main(["predict", "--config", str(plan), *TINY_FLAGS, "--probes", str(probes_file), "--out",
                 str(tmp_path / "t.jsonl")])
    assert code == 2 and "on-policy phase cannot be planned" in capsys.readouterr().err
    assert not (tmp_path / "t.jsonl").exists()


def test_a_plan_from_a_toml_file_or_a_run_directory(tmp_path, probes_file, capsys):
    """--config: a TOML file states its keys (and flags theirs); a run directory's config.json states nothing
    (every field is there, resolved), so its steps may repeat the data as its run did."""
    from lldyn.predict import load_plan

    toml = tmp_path / "plan.toml"
    toml.write_text('model = "tiny-random-llama"\nepochs = 1.0\nbatch_size = 2\n')
    plan, stated = load_plan(str(toml), {"steps": 5, "lr": None})
    assert plan.steps == 5 and plan.epochs == 1.0 and stated == {"model", "epochs", "batch_size", "steps"}
    run = train(cfg_(tmp_path, method="sft", steps=5, lr=1e-3), progress=False).run.path  # 5 steps > 1 epoch of 8
    plan, stated = load_plan(str(run), {"lr": 1e-2})
    assert (plan.method, plan.steps, plan.lr, stated) == ("sft", 5, 1e-2, {"lr"})
    out = tmp_path / "t.jsonl"
    assert main(["predict", "--config", str(run), "--probes", str(probes_file), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == len(PROBES)
    code = main(["predict", "--config", str(toml), *TINY_FLAGS, "--steps", "5", "--probes", str(probes_file),
                 "--out", str(out.with_name("u.jsonl"))])
    assert code == 2 and "hold only 4 steps" in capsys.readouterr().err
    assert not out.with_name("u.jsonl").exists()
