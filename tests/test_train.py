"""Training loops: hand-computed losses, gradients through the residuals, resume, NaN guard, extend, bad input."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lldyn.checkpoint import list_checkpoints, load_checkpoint
from lldyn.errors import LldynError
from lldyn.models import ModelConfig, load_model
from lldyn.rundir import RunDir
from lldyn.scoring import Encoder, ScoreConfig, ScoreRequest, collate, score, sequence_logps
from lldyn.runs import load_run_model, load_start_model
from lldyn.train import TrainConfig, loop, phases, train
from lldyn.train.batches import encode_phase_data, load_training_data, micro_batch
from lldyn.train.steps import pair_step

TINY = dict(model="tiny-random-llama", data="builtin:train", limit=12, batch_size=4, max_length=96,
            max_prompt_tokens=48, eval_every=0, initial_sample=False)


def cfg_(tmp_path: Path, name: str = "run", **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "out": str(tmp_path / name), **kw})


def train_rows(run: str | Path) -> list[dict]:
    return [r.to_json() for r in RunDir(run).train_rows()]


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_first_sft_step_loss_is_mean_nll_from_engine(tmp_path):
    cfg = cfg_(tmp_path, method="sft", steps=1, lr=1e-3)
    train(cfg, progress=False)
    lm = load_model(ModelConfig(name="tiny-random-llama"))
    pairs, sft = load_training_data(cfg)
    examples = encode_phase_data(phases(cfg)[0], pairs, sft, Encoder(lm.tokenizer, cfg.scoring()), cfg.data)
    batch = micro_batch(examples, cfg, 0, 0)
    res = score(lm.model, lm.tokenizer, [ScoreRequest(e.prompt, e.chosen) for e in batch], cfg.scoring())
    expected = -sum(r.logp for r in res) / len(res)
    assert train_rows(cfg.out)[0]["loss"] == pytest.approx(expected, rel=1e-5)


def test_dpo_loss_at_step_two_matches_hand_computation(tmp_path):
    """Step 1 has policy == reference (loss log 2); step 2's loss is recomputed by hand from the engine."""
    cfg = cfg_(tmp_path, method="dpo", steps=2, lr=1e-3, beta=0.5, checkpoint_every=1, keep_checkpoints=5)
    train(cfg, progress=False)
    rows = train_rows(cfg.out)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    lm = load_run_model(cfg.out, Path(cfg.out) / "checkpoints" / "step-00000001")
    pairs, sft = load_training_data(cfg)
    examples = encode_phase_data(phases(cfg)[0], pairs, sft, Encoder(lm.tokenizer, cfg.scoring()), cfg.data)
    batch = micro_batch(examples, cfg, 0, 1)
    ref = {json.loads(line)["id"]: json.loads(line) for line in
           (Path(cfg.out) / "ref_logps-0.jsonl").read_text().splitlines()}
    losses = []
    for e in batch:
        c, r = score(lm.model, lm.tokenizer, [ScoreRequest(e.prompt, e.chosen), ScoreRequest(e.prompt, e.rejected)],
                     cfg.scoring())
        margin = (c.logp - ref[e.id]["chosen"]) - (r.logp - ref[e.id]["rejected"])
        losses.append(-math.log(1 / (1 + math.exp(-cfg.beta * margin))))
    assert rows[1]["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-4)
    assert rows[1]["loss"] != pytest.approx(math.log(2), abs=1e-3)  # the check is not vacuous


def test_shared_prompt_forward_gives_the_full_sequences_loss_and_gradient(monkeypatch):
    """A preference batch runs each prompt once (y+ and y− continue from its cached keys/values): loss,
    log-probs and every parameter's gradient equal the full-sequence forward's."""
    import lldyn.train.steps as T

    cfg = TrainConfig(**{**TINY, "method": "dpo", "beta": 0.3, "out": "unused"})
    lm = load_model(ModelConfig(name="tiny-random-llama"))
    pairs, sft = load_training_data(cfg)
    examples = encode_phase_data(phases(cfg)[0], pairs, sft, Encoder(lm.tokenizer, cfg.scoring()), cfg.data)[:4]
    ref = {e.id: (-2.0 * i, -300.0 + 3.0 * i) for i, e in enumerate(examples)}
    params = list(lm.model.parameters())
    results = []
    for shared in (True, False):
        if not shared:
            monkeypatch.setattr(T, "shared_prompt_logps", lambda *a, **k: None)
        out = T.pair_step(lm.model, examples, lm.tokenizer.pad_token_id, cfg, "dpo", ref, scale=1.0)
        results.append((out, torch.autograd.grad(out.loss, params, allow_unused=True)))
    (a, ga), (b, gb) = results
    assert a.loss.item() == pytest.approx(b.loss.item(), abs=1e-6)
    assert a.stats["chosen_logp"] == pytest.approx(b.stats["chosen_logp"], abs=1e-4)
    num = sum(float((x - y).norm() ** 2) for x, y in zip(ga, gb) if x is not None) ** 0.5
    den = sum(float(y.norm() ** 2) for y in gb if y is not None) ** 0.5
    assert den > 0 and num / den < 1e-5
    assert all((x is None) == (y is None) for x, y in zip(ga, gb))


@pytest.mark.parametrize("kind", ["dpo", "ipo", "slic", "simpo"])
def test_gradient_equals_sum_of_residual_weighted_logp_gradients(kind):
    """∇θ(batch loss) by autograd of the pure loss = Σ_terms weight · ∇θ log π(y) (the UpdateTerms the hooks see)."""
    cfg = TrainConfig(**{**TINY, "method": kind, "beta": 0.3, "out": "unused"})
    lm = load_model(ModelConfig(name="tiny-random-llama"))
    model, tok = lm.model, lm.tokenizer
    pairs, sft = load_training_data(cfg)
    examples = encode_phase_data(phases(cfg)[0], pairs, sft, Encoder(tok, cfg.scoring()), cfg.data)[:3]
    # A reference that differs from the policy so the residuals are not all equal.
    ref = {e.id: (-2.0 * i, -400.0 + 3.0 * i) for i, e in enumerate(examples)}
    params = [p for p in model.parameters()]
    out = pair_step(model, examples, tok.pad_token_id, cfg, kind, ref, scale=1.0)
    full = torch.autograd.grad(out.loss, params)
    total = [torch.zeros_like(p) for p in params]
    enc = Encoder(tok, cfg.scoring())
    for t in out.terms:
        lp = sequence_logps(model, collate([enc.pair(t.prompt, t.response)], tok.pad_token_id)).logps[0]
        for acc, g in zip(total, torch.autograd.grad(lp, params, allow_unused=True)):
            if g is not None:
                acc += t.weight * g
    num = sum(float((a - b).norm() ** 2) for a, b in zip(full, total)) ** 0.5
    den = sum(float(a.norm() ** 2) for a in full) ** 0.5
    assert den > 0
    assert num / den < 1e-4


class Kill(Exception):
    pass


@pytest.mark.parametrize("where", ["mid_phase", "before_phase_end_evaluation"])
def test_kill_and_resume_equals_uninterrupted(tmp_path, monkeypatch, where):
    """Killed in the DPO phase (resumed from the step-4 checkpoint, RMSprop and a warm-up + cosine schedule
    restored), or right after the SFT phase's last checkpoint but before its end-of-phase probe evaluation
    (step 3: --eval-every 2 does not divide the phase): the resumed run equals the uninterrupted one."""
    import lldyn.tracking as tracking

    base = dict(method="sft_dpo", sft_steps=3, steps=4, lr=1e-3, checkpoint_every=2, eval_every=2,
                optimizer="rmsprop", warmup_steps=2, scheduler="cosine")
    probes = tmp_path / "probes.jsonl"
    subprocess.run([sys.executable, "-m", "lldyn.cli", "probes", "build", "--data", "builtin", "--out", str(probes),
                    "--limit", "3"], check=True, capture_output=True)
    full = train(cfg_(tmp_path, "full", probes=str(probes), **base), progress=False)

    class KillAt:
        def before_step(self, step, model, terms, optimizer=None):
            if step == 6:
                raise Kill

        def after_step(self, step, model, optimizer):
            return None

    cut = cfg_(tmp_path, "cut", probes=str(probes), **base)
    if where == "mid_phase":
        with pytest.raises(Kill):
            train(cut, decomposer=KillAt(), progress=False)
    else:
        real_track = tracking.Tracker.track

        def track(self, step, signals=None):
            if step == 3:
                raise Kill
            return real_track(self, step, signals)

        monkeypatch.setattr(tracking.Tracker, "track", track)
        with pytest.raises(Kill):
            train(cut, progress=False)
        monkeypatch.setattr(tracking.Tracker, "track", real_track)
        assert [c.name for c in list_checkpoints(Path(cut.out) / "checkpoints")][-1] == "step-00000003"
    resumed = train(cut, resume=True, progress=False)
    assert sorted({r["step"] for r in resumed.run.probe_table()}) == [0, 2, 3, 4, 6, 7]
    a, b = train_rows(full.run.path), train_rows(resumed.run.path)
    assert [r["step"] for r in b] == list(range(1, 8))
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], abs=1e-6)
    wa, wb = weights(full.model), weights(resumed.model)
    assert max(float((wa[n] - wb[n]).abs().max()) for n in wa) <= 1e-6
    pa = [(r["step"], r["prompt_id"], r["family"], r["logp"]) for r in full.run.probe_table()]
    pb = [(r["step"], r["prompt_id"], r["family"], r["logp"]) for r in resumed.run.probe_table()]
    assert [x[:3] for x in pa] == [x[:3] for x in pb]  # no duplicated or missing rows
    assert max(abs(x[3] - y[3]) for x, y in zip(pa, pb)) <= 1e-6


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import lldyn.train.steps as T

    real = T.sequence_logps
    calls = {"n": 0}

    def poisoned(model, batch, *a, **k):
        calls["n"] += 1
        out = real(model, batch, *a, **k)
        if calls["n"] == 3:
            out.token_logps = out.token_logps * float("nan")
        return out

    monkeypatch.setattr(T, "sequence_logps", poisoned)
    cfg = cfg_(tmp_path, method="sft", steps=5, lr=1e-3)
    with pytest.raises(LldynError, match="non-finite") as info:
        train(cfg, progress=False)
    assert "step 3" in str(info.value)
    ckpts = list_checkpoints(Path(cfg.out) / "checkpoints")
    assert [c.name for c in ckpts] == ["step-00000002"]
    lm = load_model(ModelConfig(name="tiny-random-llama"))
    load_checkpoint(ckpts[-1], lm.model, restore_rng=False)
    assert all(torch.isfinite(p).all() for p in lm.model.parameters())
    assert [r["step"] for r in train_rows(cfg.out)] == [1, 2]


def test_non_finite_weights_are_never_kept_as_last_good(tmp_path):
    """A step that overflows the weights (finite loss, huge SGD step) is caught at the next loss; the
    overflowed weights are not saved, so --resume cannot pick them up."""
    cfg = cfg_(tmp_path, method="sft", steps=5, lr=1e38, optimizer="sgd", max_grad_norm=0.0, checkpoint_every=1)
    with pytest.raises(LldynError, match="non-finite") as info:
        train(cfg, progress=False)
    assert "no earlier checkpoint" in str(info.value) or "kept in" in str(info.value)
    for ckpt in list_checkpoints(Path(cfg.out) / "checkpoints"):
        lm = load_model(ModelConfig(name="tiny-random-llama"))
        load_checkpoint(ckpt, lm.model, restore_rng=False)
        assert all(torch.isfinite(p).all() for p in lm.model.parameters()), ckpt
    stopped = [r.to_json() for r in RunDir(cfg.out).stopped_rows()]
    assert len(stopped) == 1 and stopped[0]["weights_finite"] is False


def test_extend_reference_is_the_extended_sft_model(tmp_path):
    cfg = cfg_(tmp_path, method="extend", sft_steps=3, steps=1, lr=1e-3, keep_checkpoints=5)
    result = train(cfg, progress=False)
    rows = train_rows(cfg.out)
    assert [r["phase"] for r in rows] == ["sft"] * 3 + ["dpo"]
    pairs, _ = load_training_data(cfg)
    ids = {p.id for p in pairs}
    sft_examples = encode_phase_data(phases(cfg)[0], pairs, [], Encoder(result.tokenizer, cfg.scoring()), cfg.data)
    assert {e.id for e in sft_examples} == {f"{i}/chosen" for i in ids} | {f"{i}/rejected" for i in ids}
    sft_model = load_run_model(cfg.out, Path(cfg.out) / "checkpoints" / "step-00000003")
    base = load_model(ModelConfig(name="tiny-random-llama"))
    ref = [json.loads(line) for line in (Path(cfg.out) / "ref_logps-1.jsonl").read_text().splitlines()]
    by_id = {p.id: p for p in pairs}
    for r in ref[:3]:
        p = by_id[r["id"]]
        want = score(sft_model.model, sft_model.tokenizer, [ScoreRequest(p.prompt, p.chosen)], cfg.scoring())[0].logp
        was = score(base.model, base.tokenizer, [ScoreRequest(p.prompt, p.chosen)], cfg.scoring())[0].logp
        assert r["chosen"] == pytest.approx(want, abs=1e-4)
        assert abs(r["chosen"] - was) > 1e-2


def test_dpo_from_a_previous_run_directory(tmp_path):
    sft = train(cfg_(tmp_path, "sft", method="sft", steps=2, lr=1e-3), progress=False)
    dpo = train(cfg_(tmp_path, "dpo", method="dpo", steps=1, model=str(sft.run.path)), progress=False)
    # The DPO run starts from the SFT weights: its first loss is log 2 and its reference is the SFT model.
    assert train_rows(dpo.run.path)[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    ref = json.loads((dpo.run.path / "ref_logps-0.jsonl").read_text().splitlines()[0])
    lm = load_run_model(sft.run.path)
    pairs, _ = load_training_data(cfg_(tmp_path, method="dpo"))
    p = {q.id: q for q in pairs}[ref["id"]]
    got = score(lm.model, lm.tokenizer, [ScoreRequest(p.prompt, p.chosen)], TrainConfig(**TINY).scoring())[0].logp
    assert ref["chosen"] == pytest.approx(got, abs=1e-4)


@pytest.mark.parametrize("optimizer", ["adamw", "rmsprop", "sgd"])
def test_optimizers_and_lora_take_steps(tmp_path, optimizer, monkeypatch):
    """The loss falls; every base weight of the model train() started from is bit-identical at the end, and
    every adapter has moved."""
    start: dict[str, torch.Tensor] = {}

    def recording(config):
        lm = load_start_model(config)
        start.update({n: p.detach().clone() for n, p in lm.model.named_parameters()})
        return lm

    monkeypatch.setattr(loop, "load_start_model", recording)
    result = train(cfg_(tmp_path, method="dpo", steps=2, lr=1e-2, optimizer=optimizer, lora_r=4, limit=4), progress=False)
    rows = train_rows(result.run.path)
    assert len(rows) == 2 and rows[1]["loss"] < rows[0]["loss"]
    names = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert names and all("lora" in n for n in names)
    end = dict(result.model.named_parameters())
    assert sorted(end) == sorted(start)
    base = [n for n in start if "lora" not in n]
    assert base and all(torch.equal(end[n], start[n]) for n in base)
    # B starts at zero, so B·A (the adapter's whole contribution) moves exactly when B does; A's first
    # updates are second order (through B) and may round away in float32 with SGD.
    lora_b = [n for n in names if "lora_B" in n]
    assert lora_b and [n for n in lora_b if torch.equal(end[n], start[n])] == []


def test_gradient_accumulation_matches_a_big_batch(tmp_path):
    """Two micro-batches of 2 with grad_accum 2 make the update of one batch of those 4 rows: the logged
    loss is their mean NLL and the weights equal one SGD step on the mean loss, done by hand."""
    b = train(cfg_(tmp_path, "b", method="sft", steps=1, lr=1e-2, optimizer="sgd", batch_size=2, grad_accum=2,
                   max_grad_norm=0.0), progress=False)
    cfg = cfg_(tmp_path, "b", method="sft", steps=1, batch_size=2, grad_accum=2)
    lm = load_model(ModelConfig(name="tiny-random-llama"))
    pairs, sft = load_training_data(cfg)
    enc = Encoder(lm.tokenizer, cfg.scoring())
    ex = encode_phase_data(phases(cfg)[0], pairs, sft, enc, cfg.data)
    rows = micro_batch(ex, cfg, 0, 0) + micro_batch(ex, cfg, 0, 1)
    res = score(lm.model, lm.tokenizer, [ScoreRequest(e.prompt, e.chosen) for e in rows], cfg.scoring())
    assert train_rows(b.run.path)[0]["loss"] == pytest.approx(-sum(r.logp for r in res) / 4, rel=1e-5)
    batch = collate([e.chosen_ids for e in rows], lm.tokenizer.pad_token_id)
    (-sequence_logps(lm.model, batch).logps.mean()).backward()
    with torch.no_grad():
        for p in lm.model.parameters():
            p -= 1e-2 * p.grad
    got, want = weights(b.model), weights(lm.model)
    assert max(float((got[n] - want[n]).abs().max()) for n in want) <= 1e-6
    start = weights(load_model(ModelConfig(name="tiny-random-llama")).model)
    assert max(float((got[n] - start[n]).abs().max()) for n in want) > 1e-4  # the step did move the weights


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lldyn.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


BASE = ["train", "--model", "tiny-random-llama", "--data", "builtin:train", "--limit", "8", "--steps", "1",
        "--batch-size", "2", "--no-initial-sample"]


@pytest.mark.parametrize("extra, needle", [
    (["--method", "ppo"], "unknown method 'ppo'"),
    (["--optimizer", "adam9"], "unknown optimizer 'adam9'"),
    (["--beta", "0"], "beta must be > 0"),
    (["--beta", "-1"], "beta must be > 0"),
    (["--lr", "0"], "learning rate must be > 0"),
    (["--batch-size", "64"], "batch size 64 is larger than the 8 usable examples"),
    (["--limit", "2", "--max-prompt-tokens", "1", "--max-length", "3", "--no-template"],  # both pairs start "The capital"
         "no usable pairs after truncation"),
    (["--lr", "abc"], "--lr expects float"),
    (["--ref", "/nonexistent/model"], "model path not found"),
    (["--ref", "someone/not-cached-model"], "not in the local Hugging Face cache"),
])
def test_bad_training_input_is_one_clear_error_and_writes_nothing(tmp_path, extra, needle):
    proc = run_cli(*BASE, "--out", "run", *extra, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_resume_with_a_different_config_is_refused(tmp_path):
    assert run_cli(*BASE, "--out", "run", cwd=tmp_path).returncode == 0
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    proc = run_cli(*BASE, "--out", "run", "--lr", "1e-2", "--resume", cwd=tmp_path)
    assert proc.returncode == 2 and "different config" in proc.stderr and "lr" in proc.stderr
    proc = run_cli(*BASE, "--out", "run", cwd=tmp_path)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


def test_toml_config_with_cli_override(tmp_path):
    (tmp_path / "c.toml").write_text('method = "sft"\nlr = 1e-3\nsteps = 2\nbatch_size = 2\n')
    proc = run_cli("train", "--config", "c.toml", "--model", "tiny-random-llama", "--data", "builtin:train",
                   "--limit", "4", "--steps", "1", "--no-initial-sample", "--out", "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["method"] == "sft" and config["lr"] == 1e-3 and config["steps"] == 1
    (tmp_path / "bad.toml").write_text('method = "sft"\nlearning_rate = 1e-3\n')
    proc = run_cli("train", "--config", "bad.toml", "--out", "run2", cwd=tmp_path)
    assert proc.returncode == 2 and "bad.toml" in proc.stderr and "learning_rate" in proc.stderr


def prefer_short(prompt: str, response: str) -> float:
    """A reward function for the on-policy test: shorter responses win; equal lengths are broken by a
    hash of the text (the tiny model's samples often have the same length), so only identical samples tie."""
    import zlib

    return -float(len(response)) + (zlib.crc32(response.encode()) % 1000) * 1e-6


def test_on_policy_dpo_samples_from_the_policy_and_labels_with_the_source(tmp_path):
    cfg = cfg_(tmp_path, method="dpo", steps=2, lr=1e-3, limit=6, batch_size=2, on_policy=True,
               preference_source="test_train:prefer_short", on_policy_max_new_tokens=8)
    result = train(cfg, progress=False)
    rows = train_rows(result.run.path)
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    # The pairs trained on are the policy's own samples, labelled by the reward: chosen is never longer.
    from lldyn.preferences import load_preference_source
    from lldyn.train.on_policy import on_policy_pairs

    pairs, _ = load_training_data(cfg)
    fresh = on_policy_pairs(result.model, result.tokenizer, pairs, load_preference_source("test_train:prefer_short"),
                            cfg, step=0)
    assert fresh and all(len(p.chosen) <= len(p.rejected) for p in fresh)
    assert all(p.chosen not in {q.chosen for q in pairs} for p in fresh)


def test_on_policy_round_samples_only_the_prompts_it_needs_and_saves_them(tmp_path):
    """Each round samples refresh × batch prompts (not the whole data set), writes what it sampled and how
    it was labelled into the run directory, and reports the round in the metrics."""
    cfg = cfg_(tmp_path, method="dpo", steps=4, lr=1e-3, limit=12, batch_size=2, on_policy=True, on_policy_refresh=2,
               preference_source="test_train:prefer_short", on_policy_max_new_tokens=8)
    result = train(cfg, progress=False)
    rounds = sorted((result.run.path / "on_policy").glob("round-*.jsonl"))
    assert [p.name for p in rounds] == ["round-000000.jsonl", "round-000001.jsonl"]
    for path in rounds:
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        assert 2 <= len(rows) <= 4 and all(len(r["chosen"]) <= len(r["rejected"]) for r in rows)
        assert rows[0]["prompts_sampled"] < 12  # not every prompt of the data set
    metrics = train_rows(result.run.path)
    assert [r["on_policy/round"] for r in metrics] == [0, 0, 1, 1]


def prefer_nothing(prompt: str, response: str) -> float:
    """A reward function that separates nothing: every pair is a tie."""
    return 0.0


def test_on_policy_with_an_undecided_source_stops_instead_of_training_off_policy(tmp_path):
    cfg = cfg_(tmp_path, method="dpo", steps=2, lr=1e-3, limit=6, batch_size=2, on_policy=True,
               preference_source="test_train:prefer_nothing", on_policy_max_new_tokens=8)
    with pytest.raises(LldynError, match="decided only 0 of 6") as info:
        train(cfg, progress=False)
    assert info.value.field == "preference_source"
    assert train_rows(cfg.out) == []


def test_on_policy_kill_and_resume_equals_uninterrupted(tmp_path):
    """Resumed in the middle of a round: the reference is still the starting model and the round's pairs
    are the ones sampled before the kill (read back from the run directory), so the losses match."""
    base = dict(method="dpo", steps=5, lr=1e-3, limit=8, batch_size=2, on_policy=True, on_policy_refresh=2,
                preference_source="test_train:prefer_short", on_policy_max_new_tokens=8, checkpoint_every=1)
    full = train(cfg_(tmp_path, "full", **base), progress=False)

    class KillAt:
        def before_step(self, step, model, terms, optimizer=None):
            if step == 4:  # after the step-3 checkpoint: in the middle of round 1 (steps 3-4)
                raise Kill

        def after_step(self, step, model, optimizer):
            return None

    cut = cfg_(tmp_path, "cut", **base)
    with pytest.raises(Kill):
        train(cut, decomposer=KillAt(), progress=False)
    resumed = train(cut, resume=True, progress=False)
    a, b = train_rows(full.run.path), train_rows(resumed.run.path)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], abs=1e-6)
        assert rb["on_policy/round"] == ra["on_policy/round"]


def test_on_policy_lora_reference_is_the_policy_with_its_adapter_disabled(tmp_path):
    """On-policy + LoRA: no frozen copy; the reference log-probs are the starting model's even after the
    adapter has moved, and a short run completes."""
    import lldyn.train.reference as T
    from lldyn.runs import load_start_model

    cfg = cfg_(tmp_path, method="dpo", steps=2, lr=1e-3, limit=6, batch_size=2, on_policy=True, lora_r=4,
               preference_source="test_train:prefer_short", on_policy_max_new_tokens=8)
    lm = load_start_model(cfg.model_config())
    ref = T.reference_model(cfg, lm.model)
    assert isinstance(ref, T.AdapterDisabled) and ref.model is lm.model
    with torch.no_grad():  # the adapter moves away from zero, as training would move it
        for name, p in lm.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    pairs, sft = load_training_data(cfg)
    examples = encode_phase_data(phases(cfg)[0], pairs, sft, Encoder(lm.tokenizer, cfg.scoring()), cfg.data)
    base = load_model(ModelConfig(name="tiny-random-llama"))
    expected = T.reference_logps(base.model, base.tokenizer, examples, cfg)
    moved = T.reference_logps(lm.model, lm.tokenizer, examples, cfg)
    got = T.reference_logps(ref, lm.tokenizer, examples, cfg)
    assert all(got[k] == pytest.approx(expected[k], abs=1e-4) for k in expected)
    assert any(abs(moved[k][0] - expected[k][0]) > 1e-2 for k in expected)  # the adapter did change the policy
    rows = train_rows(train(cfg, progress=False).run.path)
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)


def test_ref_is_another_model_or_run(tmp_path):
    """--ref PATH: the reference log-probs are that model's (here an SFT run's), not the starting model's."""
    import lldyn.train.reference as T

    sft = train(cfg_(tmp_path, "sft", method="sft", steps=2, lr=1e-2), progress=False)
    dpo_cfg = cfg_(tmp_path, "dpo", method="dpo", steps=1, lr=1e-3, ref=str(sft.run.path))
    train(dpo_cfg, progress=False)
    stored = {json.loads(x)["id"]: json.loads(x) for x in (tmp_path / "dpo" / "ref_logps-0.jsonl").read_text().splitlines()}
    pairs, _ = load_training_data(dpo_cfg)
    examples = encode_phase_data(phases(dpo_cfg)[0], pairs, [], Encoder(sft.tokenizer, dpo_cfg.scoring()), dpo_cfg.data)
    from_sft = T.reference_logps(load_run_model(sft.run.path).model, sft.tokenizer, examples, dpo_cfg)
    start = load_model(ModelConfig(name="tiny-random-llama"))
    from_start = T.reference_logps(start.model, start.tokenizer, examples, dpo_cfg)
    assert all(stored[k]["chosen"] == pytest.approx(from_sft[k][0], abs=1e-4) for k in from_sft)
    assert any(abs(stored[k]["chosen"] - from_start[k][0]) > 1e-2 for k in from_sft)


def test_on_policy_needs_a_reference_based_method():
    with pytest.raises(LldynError, match="on-policy"):
        TrainConfig(method="simpo", on_policy=True, preference_source="x:y")


def test_decompose_every_writes_predictions_that_match_the_actual_change(tmp_path):
    """Training with --decompose-every: per-probe actual vs predicted rows; SGD at a small lr predicts well."""
    probes = tmp_path / "probes.jsonl"
    subprocess.run([sys.executable, "-m", "lldyn.cli", "probes", "build", "--data", "builtin", "--out", str(probes),
                    "--limit", "2"], check=True, capture_output=True)
    cfg = cfg_(tmp_path, method="dpo", steps=2, lr=1e-3, optimizer="sgd", probes=str(probes), decompose_every=1,
               eval_every=1, max_grad_norm=0.0)
    result = train(cfg, progress=False)
    rows = [json.loads(x) for x in (result.run.path / "decompose.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == {1, 2}
    actual = torch.tensor([r["actual"] for r in rows])
    predicted = torch.tensor([r["predicted"] for r in rows])
    assert float(torch.corrcoef(torch.stack([actual, predicted]))[0, 1]) > 0.99
    metrics = [r for r in train_rows(result.run.path) if "decompose/seconds" in r]
    assert len(metrics) == 2


def test_lldyn_decompose_replays_a_run(tmp_path):
    probes = tmp_path / "probes.jsonl"
    subprocess.run([sys.executable, "-m", "lldyn.cli", "probes", "build", "--data", "builtin", "--out", str(probes),
                    "--limit", "2"], check=True, capture_output=True)
    assert run_cli(*BASE, "--out", "run", "--steps", "2", "--probes", str(probes), "--eval-every", "1",
                   cwd=tmp_path).returncode == 0
    proc = run_cli("decompose", "--run", "run", "--every", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Written into the run itself, after checking that the replay followed it; the scratch replay is gone.
    rows = [json.loads(x) for x in (tmp_path / "run" / "decompose.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == {1, 2}
    assert "the replay followed the run: largest loss difference 0.0e+00" in proc.stdout
    assert not (tmp_path / "run" / ".decompose-replay").exists()
    # Its figures (predicted vs actual, the +/- split per family) are drawn and embedded by `lldyn report`.
    figures = [tmp_path / "run" / "figures" / name for name in ("decompose-scatter.png", "decompose-parts.png")]
    assert all(f.read_bytes().startswith(b"\x89PNG") for f in figures)
    assert run_cli("report", "run", cwd=tmp_path).returncode == 0
    assert "decompose-0-scatter.png" in (tmp_path / "run" / "report.html").read_text()
    # A second decomposition needs --force; --out keeps the replay, whose losses equal the run's.
    again = run_cli("decompose", "--run", "run", "--every", "1", cwd=tmp_path)
    assert again.returncode == 2 and "already holds a decomposition" in again.stderr
    assert run_cli("decompose", "--run", "run", "--every", "2", "--out", "dec", "--force", cwd=tmp_path).returncode == 0
    assert [r["loss"] for r in train_rows(tmp_path / "run")] == pytest.approx(
        [r["loss"] for r in train_rows(tmp_path / "dec")], abs=1e-6)
    assert {json.loads(x)["step"] for x in (tmp_path / "run" / "decompose.jsonl").read_text().splitlines()} == {2}


def test_lldyn_decompose_refuses_a_replay_that_leaves_the_run(tmp_path):
    """A replay whose losses differ from the run's (here: the run's log edited, as a GPU run or another
    torch would differ) writes nothing into the run: its numbers would describe another trajectory."""
    probes = tmp_path / "probes.jsonl"
    subprocess.run([sys.executable, "-m", "lldyn.cli", "probes", "build", "--data", "builtin", "--out", str(probes),
                    "--limit", "2"], check=True, capture_output=True)
    assert run_cli(*BASE, "--out", "run", "--steps", "2", "--probes", str(probes), "--eval-every", "1",
                   cwd=tmp_path).returncode == 0
    metrics = tmp_path / "run" / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    for r in rows:
        if r.get("event") == "train" and r["step"] == 2:
            r["loss"] += 0.5
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_cli("decompose", "--run", "run", "--every", "1", cwd=tmp_path)
    assert proc.returncode == 2 and "the replay did not follow the run" in proc.stderr and "at step 2" in proc.stderr
    assert not (tmp_path / "run" / "decompose.jsonl").exists() and not (tmp_path / "run" / ".decompose-replay").exists()


def test_score_a_run_and_one_of_its_checkpoints(tmp_path):
    """lldyn score --model RUN/checkpoints/step-N scores that checkpoint's weights; --model RUN the last ones."""
    cfg = cfg_(tmp_path, method="sft", steps=2, lr=1e-2, checkpoint_every=1, keep_checkpoints=5)
    train(cfg, progress=False)
    first = Path(cfg.out) / "checkpoints" / "step-00000001"
    rows = {}
    for name, spec in (("first", first), ("last", Path(cfg.out))):
        assert run_cli("score", "--model", str(spec), "--data", "builtin:train", "--limit", "2", "--out",
                       f"{name}.jsonl", cwd=tmp_path).returncode == 0
        rows[name] = [json.loads(x)["logp"] for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    lm = load_run_model(cfg.out, first)
    pairs, _ = load_training_data(cfg_(tmp_path, limit=2))
    direct = score(lm.model, lm.tokenizer, [ScoreRequest(p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)],
                   ScoreConfig())
    assert rows["first"] == pytest.approx([r.logp for r in direct], abs=1e-4)
    assert max(abs(a - b) for a, b in zip(rows["first"], rows["last"])) > 1e-3
