"""First-order prediction and attribution of one LLM step, and the last-layer eNTK, on the tiny random Llama."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch.func import functional_call, jacrev

from lldyn.decompose import (
    compare,
    DecomposeConfig,
    StepDecomposer,
    first_order_prediction,
    last_layer_kernel,
    naive_first_order_prediction,
    trainable_parameters,
)
from lldyn.cli import main
from lldyn.decompose.plots import plot_decomposition, plot_token_kernel
from lldyn.errors import LldynError
from lldyn.io import read_jsonl
from lldyn.losses import UpdateTerm, dpo_loss
from lldyn.models import ModelConfig, load_model
from lldyn.probes import Probe
from lldyn.rundir import DECOMPOSE, RunDir
from lldyn.scoring import Encoder, ScoreConfig, collate, response_hidden_states, sequence_logps

PROBES = [
    Probe("a", "chosen", "hi there", "hello you"),
    Probe("a", "rejected", "hi there", "go away"),
    Probe("a", "random_sentence", "hi there", "The train left at noon."),
    Probe("b", "chosen", "name a colour", "red"),
    Probe("b", "rejected", "name a colour", "I like trains"),
    Probe("b", "random_sentence", "name a colour", "Bread rises in a warm room."),
    Probe("c", "chosen", "what is 2+2?", "four, I think"),
    Probe("c", "rejected", "what is 2+2?", "five"),
]
# (example id, prompt, y+, y−): the DPO training batch.
TRAIN = [("e1", "hi there", "hello you", "go away"), ("e2", "name a colour", "red", "I like trains")]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine two threads spin; restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


_LOADED: dict[int, object] = {}


def tiny(lora_r: int = 0):
    """A fresh float32 copy of the tiny model (loaded once per LoRA rank)."""
    if lora_r not in _LOADED:
        _LOADED[lora_r] = load_model(ModelConfig(name="tiny-random-llama", seed=0, lora_r=lora_r))
    return copy.deepcopy(_LOADED[lora_r])


def dpo_terms(model, tokenizer, beta: float = 0.1) -> list[UpdateTerm]:
    """Backward the mean DPO loss of TRAIN (ref log π = policy's, shifted so σ ≠ 1/2) and return its terms."""
    enc = Encoder(tokenizer, ScoreConfig())
    pairs = [enc.pair(p, r) for _, p, c, rj in TRAIN for r in (c, rj)]
    logps = sequence_logps(model, collate(pairs, tokenizer.pad_token_id)).logps
    res = dpo_loss(logps[0::2], logps[1::2], logps[0::2].detach() + 1.0, logps[1::2].detach(), beta=beta)
    res.loss.backward()
    B = len(TRAIN)
    terms = []
    for i, (eid, prompt, chosen, rejected) in enumerate(TRAIN):
        terms.append(UpdateTerm(eid, "chosen", prompt, chosen, float(res.chosen_coef[i]) / B))
        terms.append(UpdateTerm(eid, "rejected", prompt, rejected, float(res.rejected_coef[i]) / B))
    return terms


def sft_terms(model, tokenizer) -> list[UpdateTerm]:
    """Backward the mean SFT loss (−log π, c = −1) on TRAIN's y+ and return its terms."""
    enc = Encoder(tokenizer, ScoreConfig())
    logps = sequence_logps(model, collate([enc.pair(p, c) for _, p, c, _ in TRAIN], tokenizer.pad_token_id)).logps
    (-logps.mean()).backward()
    return [UpdateTerm(eid, "response", p, c, -1.0 / len(TRAIN)) for eid, p, c, _ in TRAIN]


def decomposed_step(lr: float, optimizer=torch.optim.SGD, lora_r: int = 0, run=None, loss=dpo_terms, **opt_kw):
    lm = tiny(lora_r)
    opt = optimizer([p for p in lm.model.parameters() if p.requires_grad], lr=lr, **opt_kw)
    dec = StepDecomposer(lm.tokenizer, PROBES, run=run)
    terms = loss(lm.model, lm.tokenizer)
    dec.before_step(0, lm.model, terms)
    opt.step()
    summary = dec.after_step(0, lm.model, opt)
    return lm, dec.last, summary


def real_sgd_delta(model, tokenizer, lr: float) -> dict[str, torch.Tensor]:
    """Δθ of one real SGD step on the DPO batch; the model is put back at θ_before."""
    before = {n: p.detach().clone() for n, p in trainable_parameters(model).items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    dpo_terms(model, tokenizer)
    opt.step()
    delta = {n: p.detach() - before[n] for n, p in trainable_parameters(model).items()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in before:
                p.copy_(before[n])
    return delta


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("prefix_sharing", [True, False])
def test_jvp_prediction_equals_naive_per_probe_gradient_dot_product(prefix_sharing):
    lm = tiny()
    delta = real_sgd_delta(lm.model, lm.tokenizer, lr=1e-2)
    # A small batch budget forces several prompt batches and response chunks in the engine's batching.
    small = ScoreConfig(batch_tokens=120, max_batch=3, prefix_sharing=prefix_sharing)
    fast = first_order_prediction(lm.model, lm.tokenizer, PROBES, delta, small)
    naive = naive_first_order_prediction(lm.model, lm.tokenizer, PROBES, delta)
    assert fast.predicted.shape == (1, len(PROBES))
    assert rel(fast.predicted[0], naive) <= 1e-4
    assert naive.abs().min() > 0  # a real change on every probe, not zeros agreeing with zeros
    # Any direction, including the embedding row of the padding token (EOS here): the naive reference
    # takes the true derivative there, as forward mode does.
    gen = torch.Generator().manual_seed(0)
    direction = {n: 1e-3 * torch.randn(p.shape, generator=gen) for n, p in trainable_parameters(lm.model).items()}
    fast = first_order_prediction(lm.model, lm.tokenizer, PROBES, direction, small)
    assert rel(fast.predicted[0], naive_first_order_prediction(lm.model, lm.tokenizer, PROBES, direction)) <= 1e-4
    # The jvp's primal is the engine's log π.
    enc = Encoder(lm.tokenizer, ScoreConfig())
    with torch.no_grad():
        ref = sequence_logps(lm.model, collate([enc.pair(p.prompt, p.response) for p in PROBES],
                                               lm.tokenizer.pad_token_id)).logps.double()
    assert torch.allclose(fast.logps, ref, atol=1e-4)


def test_parts_and_examples_sum_to_the_whole_step_prediction_sgd(tmp_path):
    lm, res, summary = decomposed_step(1e-2, run=tmp_path)
    scale = res.predicted.abs().max()
    assert scale > 1e-3
    # SGD: Σ_k −η w_k ∇log π(y_k) is the real Δθ, so the terms explain the whole prediction.
    assert float(res.other.abs().max()) <= 1e-4 * float(scale)
    by_part, by_example = res.by_part(), res.by_example()
    assert set(by_part) == {"chosen", "rejected", "other"} and set(by_example) == {"e1", "e2"}
    assert torch.allclose(sum(by_part.values()), res.predicted, atol=1e-9 * float(scale))
    assert torch.allclose(sum(by_example.values()) + res.other, res.predicted, atol=1e-9 * float(scale))
    # DPO pushes y+ up and y− down: on their own probes the chosen part is positive, the rejected negative.
    chosen_probe = [i for i, p in enumerate(PROBES) if p.prompt_id == "a" and p.family == "chosen"][0]
    rejected_probe = [i for i, p in enumerate(PROBES) if p.prompt_id == "a" and p.family == "rejected"][0]
    assert by_part["chosen"][chosen_probe] > 0 > by_part["rejected"][rejected_probe]
    assert summary["decompose/grad_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert summary["decompose/grad_scale"] == pytest.approx(1.0, abs=1e-5)
    # Rows on disk: one per probe, parts summing to the prediction; family means in the summary.
    rows = list(read_jsonl(tmp_path / DECOMPOSE))
    assert len(rows) == len(PROBES) and {r["step"] for r in rows} == {0}
    for row in rows:
        assert sum(row["parts"].values()) == pytest.approx(row["predicted"], abs=1e-9)
        assert sum(row["examples"].values()) + row["parts"]["other"] == pytest.approx(row["predicted"], abs=1e-9)
    chosen_rows = [r for r in rows if r["family"] == "chosen"]
    assert summary["decompose/chosen/chosen"] == pytest.approx(
        sum(r["parts"]["chosen"] for r in chosen_rows) / len(chosen_rows))
    figures = plot_decomposition(RunDir(tmp_path).decompose_rows(), tmp_path / "figures")
    assert [f.name for f in figures] == ["decompose-scatter.png", "decompose-parts.png"]
    assert all(f.stat().st_size > 1000 for f in figures)


def test_clipped_gradient_is_attributed_with_the_clip_factor():
    lm = tiny()
    opt = torch.optim.SGD(lm.model.parameters(), lr=1e-2)
    dec = StepDecomposer(lm.tokenizer, PROBES)
    terms = dpo_terms(lm.model, lm.tokenizer)
    torch.nn.utils.clip_grad_norm_(lm.model.parameters(), max_norm=0.01)
    dec.before_step(0, lm.model, terms)
    opt.step()
    summary = dec.after_step(0, lm.model, opt)
    assert summary["decompose/grad_scale"] < 0.5  # the clip factor, read from .grad
    assert float(dec.last.other.abs().max()) <= 1e-4 * float(dec.last.predicted.abs().max())


@pytest.mark.parametrize(("loss", "lr"), [(dpo_terms, 1e-2), (sft_terms, 1e-3)])
def test_prediction_matches_actual_change_at_small_lr(loss, lr):
    _, res, summary = decomposed_step(lr, loss=loss)
    cmp = compare(res.predicted, res.actual)
    assert float(res.actual.abs().median()) > 1e-3  # changes well above the engine's float32 rounding (~1e-5)
    assert cmp.pearson >= 0.99
    assert cmp.median_relative_error <= 0.05
    assert summary["decompose/pearson"] == pytest.approx(cmp.pearson)


def test_prediction_error_is_second_order_in_the_step_size():
    # The engine sums float32 log-probs, so |actual| carries ~1e-5 of rounding: η is chosen so the error
    # (≥ 4e-4) is far above that floor and below where O(η³) terms bend the curve.
    etas = [5e-4, 1e-3, 2e-3]
    errors = []
    for eta in etas:
        _, res, _ = decomposed_step(eta, loss=sft_terms)
        errors.append(float((res.predicted - res.actual).norm()))
        assert errors[-1] < 0.05 * float(res.predicted.norm())
    fit = torch.linalg.lstsq(torch.tensor([[math.log(e), 1.0] for e in etas], dtype=torch.float64),
                             torch.tensor([[math.log(v)] for v in errors], dtype=torch.float64)).solution
    assert 1.8 <= float(fit[0, 0]) <= 2.2, errors


@pytest.mark.parametrize("optimizer", [torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop])
def test_adaptive_optimizer_first_step_is_explained_by_the_preconditioned_terms(optimizer):
    # At the first step, without weight decay, the preconditioner read after the step is the one applied.
    _, res, summary = decomposed_step(1e-4, optimizer, weight_decay=0.0)
    scale = float(res.predicted.abs().max())
    assert scale > 1e-4
    assert float(res.other.abs().max()) <= 1e-4 * scale
    assert summary["decompose/pearson"] >= 0.99


@pytest.mark.parametrize("optimizer", [torch.optim.Adam, torch.optim.RMSprop])
def test_adaptive_optimizer_later_step_leaves_only_the_carried_momentum_in_other(optimizer):
    """Step 3 of Adam / RMSprop: the preconditioner read after the step (bias corrections at t = 3) scales
    the terms; with RMSprop (no momentum) nothing else moves θ, with Adam the rest is the momentum carried
    from the earlier steps: exactly −lr·β₁·m_prev/(1−β₁ᵗ)/denom, checked against the real Δθ."""
    lm = tiny()
    params = [p for p in lm.model.parameters() if p.requires_grad]
    opt = optimizer(params, lr=1e-4)
    for _ in range(2):  # two earlier steps on the same batch
        opt.zero_grad()
        dpo_terms(lm.model, lm.tokenizer)
        opt.step()
    opt.zero_grad()
    dec = StepDecomposer(lm.tokenizer, PROBES)
    dec.before_step(3, lm.model, dpo_terms(lm.model, lm.tokenizer), opt)
    prev = {id(p): opt.state[p]["exp_avg"].clone() for p in params} if optimizer is torch.optim.Adam else None
    before = {n: p.detach().clone() for n, p in trainable_parameters(lm.model).items()}
    opt.step()
    dec.after_step(3, lm.model, opt)
    res = dec.last
    scale = float(res.predicted.abs().max())
    if prev is None:
        assert float(res.other.abs().max()) <= 1e-4 * scale
    else:
        assert float(res.other.abs().max()) > 1e-2 * scale  # the carried momentum moves the probes too
        # and it is what other holds: predict the probes' change along the carried-momentum direction alone
        beta1, beta2 = opt.param_groups[0]["betas"]
        eps = opt.param_groups[0]["eps"]
        names = {id(p): n for n, p in lm.model.named_parameters()}
        carried = {}
        for p in params:
            st = opt.state[p]
            t = float(st["step"])
            denom = (st["exp_avg_sq"] / (1 - beta2 ** t)).sqrt() + eps
            carried[names[id(p)]] = -1e-4 * beta1 * prev[id(p)] / (1 - beta1 ** t) / denom
        from lldyn.decompose.llm import jvp_logps

        got = jvp_logps(lm.model, dec.encoded, lm.tokenizer.pad_token_id, [carried], before).predicted[0]
        assert float((got - res.other).abs().max()) <= 1e-3 * float(res.other.abs().max())


def test_scheduled_learning_rate_is_this_steps(tmp_path):
    """With a warm-up schedule the terms are scaled by the lr the step used, not the next one: SGD's terms
    still explain the whole step (the training loop calls after_step before scheduler.step)."""
    probes = tmp_path / "probes.jsonl"
    main(["probes", "build", "--data", "builtin", "--out", str(probes), "--limit", "2"])
    from lldyn.train import TrainConfig, train

    cfg = TrainConfig(model="tiny-random-llama", data="builtin:train", limit=8, batch_size=2, max_length=96,
                      max_prompt_tokens=48, method="dpo", steps=3, lr=1e-3, optimizer="sgd", warmup_steps=4,
                      scheduler="linear", probes=str(probes), decompose_every=1, eval_every=0, max_grad_norm=0.0,
                      initial_sample=False, out=str(tmp_path / "run"))
    result = train(cfg, progress=False)
    rows = [json.loads(x) for x in (result.run.path / DECOMPOSE).read_text().splitlines()]
    lrs = [r["lr"] for r in read_jsonl(result.run.path / "metrics.jsonl") if r.get("event") == "train"]
    assert lrs == pytest.approx([1e-3 * k / 4 for k in (0, 1, 2)])  # linear warm-up: every step's lr differs
    for step in (2, 3):
        step_rows = [r for r in rows if r["step"] == step]
        biggest = max(abs(r["predicted"]) for r in step_rows)
        assert biggest > 0
        assert max(abs(r["parts"]["other"]) for r in step_rows) <= 1e-3 * biggest


def test_sgd_dampening_first_step_is_undampened():
    """torch's SGD copies the first gradient into a new momentum buffer without dampening: the terms
    explain the whole first step; at the second step the dampened share applies."""
    lm = tiny()
    opt = torch.optim.SGD(lm.model.parameters(), lr=1e-2, momentum=0.9, dampening=0.5)
    dec = StepDecomposer(lm.tokenizer, PROBES)
    dec.before_step(1, lm.model, dpo_terms(lm.model, lm.tokenizer), opt)
    opt.step()
    dec.after_step(1, lm.model, opt)
    assert float(dec.last.other.abs().max()) <= 1e-4 * float(dec.last.predicted.abs().max())


def test_adamw_weight_decay_lands_in_other():
    _, res, _ = decomposed_step(1e-4, torch.optim.AdamW, weight_decay=10.0)
    assert float(res.other.abs().max()) > 1e-2 * float(res.predicted.abs().max())


def test_unknown_optimizer_is_one_clear_error():
    lm = tiny()
    opt = torch.optim.Adagrad(lm.model.parameters(), lr=1e-3)
    dec = StepDecomposer(lm.tokenizer, PROBES[:2])
    dec.before_step(0, lm.model, dpo_terms(lm.model, lm.tokenizer))
    opt.step()
    with pytest.raises(LldynError, match="Adagrad"):
        dec.after_step(0, lm.model, opt)


def test_every_skips_steps_and_bad_part_is_refused():
    lm = tiny()
    dec = StepDecomposer(lm.tokenizer, PROBES[:2], config=DecomposeConfig(every=2))
    opt = torch.optim.SGD(lm.model.parameters(), lr=1e-3)
    dec.before_step(1, lm.model, [UpdateTerm("e", "response", "hi", "yo", -1.0)])
    assert dec.after_step(1, lm.model, opt) == {}
    with pytest.raises(LldynError, match="part"):
        dec.before_step(2, lm.model, [UpdateTerm("e", "sideways", "hi", "yo", -1.0)])
    with pytest.raises(LldynError):
        DecomposeConfig(every=0)


def test_lora_only_trainable_parameters_take_part():
    lm, res, summary = decomposed_step(1e-1, lora_r=4)
    names = set(trainable_parameters(lm.model))
    assert names and all("lora_" in n for n in names)
    assert float(res.predicted.abs().max()) > 1e-6  # LoRA B starts at 0, so only B moves at step one
    assert float(res.other.abs().max()) <= 1e-4 * float(res.predicted.abs().max())
    assert summary["decompose/pearson"] >= 0.99
    delta = real_sgd_delta(lm.model, lm.tokenizer, lr=1e-1)
    fast = first_order_prediction(lm.model, lm.tokenizer, PROBES, delta).predicted[0]
    assert rel(fast, naive_first_order_prediction(lm.model, lm.tokenizer, PROBES, delta)) <= 1e-4


def test_last_layer_kernel_equals_autograd_ntk_of_the_unembedding(tmp_path):
    lm = tiny()
    probe, train = ("hi", "yes!"), ("name a colour", "red")
    tk = last_layer_kernel(lm.model, lm.tokenizer, probe, train)
    assert tk.kernel.shape == (5, 4)  # 4 and 3 bytes + EOS
    assert tk.probe_tokens[:4] == ("y", "e", "s", "!")
    head = lm.model.get_output_embeddings()
    W = head.weight.detach()
    enc = Encoder(lm.tokenizer, ScoreConfig())
    h_o, h_u = response_hidden_states(lm.model, [enc.pair(*probe), enc.pair(*train)], lm.tokenizer.pad_token_id)

    def logits(weight, h):
        return functional_call(head, {"weight": weight}, (h,))

    jac_o = jacrev(logits)(W, h_o).flatten(2)  # (T_o, V, V·H)
    jac_u = jacrev(logits)(W, h_u).flatten(2)
    ntk = torch.einsum("tip,sjp->tsij", jac_o, jac_u)  # (T_o, T_u, V, V)
    eye = torch.eye(W.shape[0], dtype=ntk.dtype)
    expected = tk.kernel[:, :, None, None] * eye
    assert torch.allclose(ntk, expected, rtol=1e-5, atol=1e-4)
    # These hidden states are the engine's: they reproduce its log π.
    enc = Encoder(lm.tokenizer, ScoreConfig())
    pair = enc.pair(*probe)
    with torch.no_grad():
        logp = torch.log_softmax(head(h_o), -1).gather(-1, torch.tensor(pair.response_ids)[:, None]).sum()
        engine = sequence_logps(lm.model, collate([pair], lm.tokenizer.pad_token_id)).logps[0]
    assert float(logp) == pytest.approx(float(engine), abs=1e-5)
    path = plot_token_kernel(tk, tmp_path / "kernel.png")
    assert path.stat().st_size > 1000


def test_bad_probe_is_one_clear_error():
    lm = tiny()
    with pytest.raises(LldynError, match="probe 0"):
        StepDecomposer(lm.tokenizer, [42])


def test_cli_kernel_writes_the_heatmap_and_the_matrix(tmp_path, monkeypatch):
    """lldyn kernel: two probes of a probe file → PNG + JSON whose matrix is last_layer_kernel's."""
    import json

    from lldyn.cli import main
    from lldyn.probes import ProbeSet

    monkeypatch.chdir(tmp_path)
    assert main(["probes", "build", "--data", "builtin", "--out", "probes.jsonl", "--limit", "2"]) == 0
    probes = ProbeSet.load("probes.jsonl")
    a, b = probes.prompt_ids[:2]
    assert main(["kernel", "--model", "tiny-random-llama", "--probes", "probes.jsonl", "--probe", f"{a}/chosen",
                 "--train", f"{b}/rejected", "--out", "k.png"]) == 0
    assert (tmp_path / "k.png").read_bytes().startswith(b"\x89PNG")
    saved = json.loads((tmp_path / "k.json").read_text())
    lm = tiny()
    p_o, p_u = probes.get(a, "chosen"), probes.get(b, "rejected")
    tk = last_layer_kernel(lm.model, lm.tokenizer, (p_o.prompt, p_o.response), (p_u.prompt, p_u.response))
    assert torch.allclose(torch.tensor(saved["kernel"]), tk.kernel, atol=1e-4)
    assert saved["train_tokens"] == list(tk.train_tokens) and len(saved["probe_tokens"]) == tk.kernel.shape[0]
