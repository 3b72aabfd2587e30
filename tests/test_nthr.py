"""NTHR (lldyn.squeeze.nthr, Deng et al. arXiv 2505.18830): hand-worked weights, the kernel against autograd, the loss with
weights 1 is plain GRPO bit for bit, and a tiny GRPO run with --nthr."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lldyn.errors import LldynError
from lldyn.squeeze.nthr import NTHRConfig, TokenFeatures, nthr_weights, token_features, token_kernel
from lldyn.losses import grpo_loss
from lldyn.rundir import RunDir
from lldyn.scoring import EncodedPair
from lldyn.train import TrainConfig, train

from test_grpo_train import TINY


def feat(hidden, residual) -> TokenFeatures:
    return TokenFeatures(torch.tensor(hidden, dtype=torch.float64), torch.tensor(residual, dtype=torch.float64))


R0 = [0.5, -0.5]  # e_y − π for y = 0 under π = (0.5, 0.5)
R1 = [-0.5, 0.5]  # the same for y = 1


def test_nthr_weights_by_hand_on_a_two_group_toy():
    """Group A: a correct completion of two copies of one token (h = (1, 0), y = 0) and an incorrect completion
    whose first token is that token on a parallel hidden state (h = (2, 0)), whose second is another token on an
    orthogonal one. The correct tokens' tie to each other (self pairs left out): κ = ⟨R0, R0⟩·⟨h, h⟩ = 0.5·1 = 0.5
    each, so τ = 0.5; s(t1) = 2 × 0.5·2 = 2.0 > τ → scaled; s(t2) = 2 × (−0.5)·0 = 0 → kept.
    Group B: correct tokens on (1, 0) and (1, 1), one incorrect on (1, 0.5), all y = 0: s(c1) = s(c2) = 0.5·1 = 0.5,
    s(incorrect) = 0.5·1 + 0.5·1.5 = 1.25: flagged under threshold 2 (τ = 1.0), not under 3 (τ = 1.5)."""
    correct = feat([[1.0, 0.0], [1.0, 0.0]], [R0, R0])
    incorrect = feat([[2.0, 0.0], [0.0, 3.0]], [R0, R1])
    a = nthr_weights([correct, incorrect], [1.0, -1.0], NTHRConfig(threshold=1.0, scale=0.25))
    assert a.tau == pytest.approx(0.5)
    assert a.scores[1].tolist() == pytest.approx([2.0, 0.0])
    assert a.weights[0].tolist() == [1.0, 1.0] and a.weights[1].tolist() == [0.25, 1.0]

    c1, c2 = feat([[1.0, 0.0]], [R0]), feat([[1.0, 1.0]], [R0])
    bad = feat([[1.0, 0.5]], [R0])
    b = nthr_weights([c1, bad, c2], [0.5, -1.0, 0.5], NTHRConfig(threshold=2.0, scale=0.5))
    assert b.tau == pytest.approx(1.0) and b.scores[1].tolist() == pytest.approx([1.25])
    assert [w.tolist() for w in b.weights] == [[1.0], [0.5], [1.0]]
    b2 = nthr_weights([c1, bad, c2], [0.5, -1.0, 0.5], NTHRConfig(threshold=3.0, scale=0.5))
    assert b2.tau == pytest.approx(1.5) and [w.tolist() for w in b2.weights] == [[1.0], [1.0], [1.0]]


def test_a_group_without_correct_or_incorrect_completions_keeps_weights_one():
    f = feat([[1.0, 0.0]], [R0])
    for advantages in ([0.0, 0.0], [1.0, 1.0], [-1.0, -1.0]):
        out = nthr_weights([f, f], advantages)
        assert math.isnan(out.tau) and all(w.tolist() == [1.0] for w in out.weights)


def test_bad_nthr_settings_are_refused():
    with pytest.raises(LldynError, match="nthr_scale"):
        NTHRConfig(scale=1.5)
    with pytest.raises(LldynError, match="nthr_threshold"):
        NTHRConfig(threshold=0.0)


def test_kernel_is_the_inner_product_of_output_layer_gradients(tiny):
    """κ(t, u) against autograd: ∇_W log softmax(W h)[y] for two tokens of two real responses of the tiny model."""
    model, tok = tiny.model, tiny.tokenizer
    encoded = [EncodedPair(tuple(tok.encode("Hi there")), tuple(tok.encode("ab c")) + (tok.eos_token_id,)),
               EncodedPair(tuple(tok.encode("Question")), tuple(tok.encode("xyz")) + (tok.eos_token_id,))]
    fa, fb = token_features(model, encoded, tok.pad_token_id)
    assert fa.hidden.shape[0] == len(encoded[0].response_ids) and fb.hidden.shape[0] == len(encoded[1].response_ids)
    assert fa.residual.sum(-1).abs().max() < 1e-9  # e_y − π sums to 0
    W = model.get_output_embeddings().weight.detach().double().clone().requires_grad_(True)

    def grad(f: TokenFeatures, ids, t):
        W.grad = None
        torch.log_softmax(f.hidden[t] @ W.T, -1)[ids[t]].backward()
        return W.grad.clone()

    kernel = token_kernel(fa, fb)
    for t, u in ((0, 0), (1, 2), (3, 1)):
        expected = (grad(fa, encoded[0].response_ids, t) * grad(fb, encoded[1].response_ids, u)).sum()
        assert float(kernel[t, u]) == pytest.approx(float(expected), rel=1e-6, abs=1e-9)


def test_grpo_loss_with_weights_one_is_plain_grpo_bit_for_bit():
    torch.manual_seed(0)
    logps = (-torch.rand(4, 6)).requires_grad_(True)
    mask = torch.ones(4, 6)
    mask[1, 4:] = 0
    adv = torch.tensor([1.0, -0.5, -1.5, 1.0])
    ref = -torch.rand(4, 6)
    for kw in (dict(), dict(loss_type="grpo", beta=0.1, ref_token_logps=ref)):
        plain = grpo_loss(logps, adv, mask, **kw)
        ones = grpo_loss(logps, adv, mask, token_weights=torch.ones(4, 6), **kw)
        assert torch.equal(plain.loss, ones.loss) and torch.equal(plain.token_coef, ones.token_coef)
        assert torch.equal(plain.per_token_loss, ones.per_token_loss)
        g_plain, = torch.autograd.grad(plain.loss, logps)
        g_ones, = torch.autograd.grad(ones.loss, logps)
        assert torch.equal(g_plain, g_ones)
    # on-policy, β = 0: the weights multiply the residual coefficient token by token (and autograd agrees)
    w = torch.ones(4, 6)
    w[1, 2], w[2, 0] = 0.5, 0.0
    plain, weighted = grpo_loss(logps, adv, mask), grpo_loss(logps, adv, mask, token_weights=w)
    assert torch.allclose(weighted.token_coef, w * plain.token_coef, atol=0, rtol=1e-6)
    assert torch.allclose(torch.autograd.grad(weighted.loss, logps)[0], weighted.token_coef, atol=1e-7)
    with pytest.raises(LldynError, match="token_weights"):
        grpo_loss(logps, adv, mask, token_weights=torch.ones(4, 5))
    with pytest.raises(LldynError, match="token-level"):
        grpo_loss(logps, adv, mask, token_weights=w, importance_sampling_level="sequence")


def cfg_(tmp_path: Path, name: str, **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "out": str(tmp_path / name), "steps": 2, **kw})


def test_nthr_scale_one_trains_exactly_as_plain_grpo_and_nthr_logs_what_it_removed(tmp_path):
    """--nthr with scale 1 flags tokens but changes nothing: same losses and final weights as plain GRPO; with
    the default scale the logged share of the negative term removed is > 0 and the weights differ."""
    plain = train(cfg_(tmp_path, "plain"), progress=False)
    same = train(cfg_(tmp_path, "same", nthr=True, nthr_scale=1.0), progress=False)
    nthr = train(cfg_(tmp_path, "nthr", nthr=True, nthr_threshold=0.5), progress=False)
    rows = {k: [r.to_json() for r in RunDir(tmp_path / k).train_rows()] for k in ("plain", "same", "nthr")}
    assert [r["loss"] for r in rows["plain"]] == [r["loss"] for r in rows["same"]]
    assert all(r["nthr/negative_coef_removed"] == 0.0 for r in rows["same"])
    for a, b in zip(plain.model.parameters(), same.model.parameters()):
        assert torch.equal(a, b)
    assert rows["nthr"][0]["nthr/groups"] > 0 and rows["nthr"][0]["nthr/tokens_flagged"] > 0
    assert rows["nthr"][0]["nthr/negative_coef_removed"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(plain.model.parameters(), nthr.model.parameters()))
    assert "nthr" not in RunDir(tmp_path / "plain").config() and RunDir(tmp_path / "nthr").config()["nthr"] is True


@pytest.mark.parametrize("kw, needle", [
    (dict(nthr_scale=0.3), "applies with --nthr only"),
    (dict(nthr=True, nthr_scale=2.0), "nthr_scale"),
    (dict(method="dpo", nthr=True), "grpo only"),
])
def test_bad_nthr_flags_are_one_clear_error(tmp_path, kw, needle):
    base = {**TINY, "out": str(tmp_path / "x")}
    if kw.get("method") == "dpo":
        base = dict(method="dpo", model="tiny-random-llama", out=str(tmp_path / "x"))
    with pytest.raises(LldynError, match=needle):
        TrainConfig(**{**base, **kw})
    assert not (tmp_path / "x").exists()
