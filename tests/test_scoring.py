"""The one log-prob engine: against a naive reference, invariants, and a hand-worked toy vocabulary."""
from __future__ import annotations

import math

import pytest
import torch

from lldyn.scoring import (Encoder, EncodedPair, ScoreConfig, ScoreRequest, TokenBatch, collate, encode_response,
                           score, score_encoded, sequence_logps, truncate_pair)
from lldyn.testing import naive_logp

CHAT = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "what is 2+2?"}]
REQUESTS = [
    ScoreRequest("What is the capital of France?", "Paris."),
    ScoreRequest("What is the capital of France?", "The capital of France is Paris, a large city."),
    ScoreRequest("What is the capital of France?", "Madrid"),
    ScoreRequest("Name a colour.", "Blue is a colour."),
    ScoreRequest(CHAT, "It is four."),
    ScoreRequest("x", "y"),
]


def test_batched_equals_naive_reference(tiny):
    enc = Encoder(tiny.tokenizer, ScoreConfig())
    results = score(tiny.model, tiny.tokenizer, REQUESTS)
    for req, res in zip(REQUESTS, results):
        ref_logp, ref_star = naive_logp(tiny.model, enc.pair(req.prompt, req.response))
        assert res.logp == pytest.approx(ref_logp, abs=1e-4, rel=1e-5)
        assert res.argmax_logp == pytest.approx(ref_star, abs=1e-4, rel=1e-5)
        assert res.n_tokens == len(tiny.tokenizer(req.response, add_special_tokens=False)["input_ids"]) + 1


@pytest.mark.parametrize("config", [
    ScoreConfig(max_batch=1),
    ScoreConfig(max_batch=2, batch_tokens=64),
    ScoreConfig(prefix_sharing=False),
    ScoreConfig(prefix_sharing=False, max_batch=1),
    ScoreConfig(chunk_size=3),
])
def test_batch_size_prefix_sharing_and_chunking_do_not_change_logps(tiny, config):
    base = score(tiny.model, tiny.tokenizer, REQUESTS, ScoreConfig(), per_token=True)
    other = score(tiny.model, tiny.tokenizer, REQUESTS, config, per_token=True)
    for a, b in zip(base, other):
        assert abs(a.logp - b.logp) <= 1e-5 * max(1.0, abs(a.logp))
        assert abs(a.argmax_logp - b.argmax_logp) <= 1e-5 * max(1.0, abs(a.argmax_logp))
        assert a.argmax_ids == b.argmax_ids
        assert max(abs(x - y) for x, y in zip(a.token_logps, b.token_logps)) <= 1e-5


def test_padding_side_does_not_change_logps(tiny):
    enc = Encoder(tiny.tokenizer, ScoreConfig())
    pairs = [enc.pair(r.prompt, r.response) for r in REQUESTS]
    with torch.no_grad():
        right = sequence_logps(tiny.model, collate(pairs, tiny.tokenizer.pad_token_id, "right"), with_stats=True)
        left = sequence_logps(tiny.model, collate(pairs, tiny.tokenizer.pad_token_id, "left"), with_stats=True)
    assert torch.allclose(right.logps, left.logps, atol=1e-5, rtol=0)
    assert torch.equal(right.argmax_ids, left.argmax_ids)
    # The tokenizer's own padding_side setting is irrelevant: the engine pads explicitly.
    tiny.tokenizer.padding_side = "left"
    try:
        again = score(tiny.model, tiny.tokenizer, REQUESTS)
    finally:
        tiny.tokenizer.padding_side = "right"
    assert [r.logp for r in again] == pytest.approx(right.logps.tolist(), abs=1e-5)


def test_differentiable_path_matches_scoring_and_has_gradients(tiny_fresh):
    model, tok = tiny_fresh.model, tiny_fresh.tokenizer
    enc = Encoder(tok, ScoreConfig())
    pairs = [enc.pair(r.prompt, r.response) for r in REQUESTS]
    grad_plain = None  # the gradient without head checkpointing, from the first pass
    for ckpt in (False, True):
        stats = sequence_logps(model, collate(pairs, tok.pad_token_id), checkpoint_head=ckpt)
        stats.logps.sum().backward()
        grad = model.lm_head.weight.grad.clone()
        model.zero_grad()
        assert grad.abs().sum() > 0
        if ckpt:
            assert torch.allclose(grad, grad_plain, atol=1e-6)
        grad_plain = grad
    scored = score(model, tok, REQUESTS)
    assert stats.logps.detach().tolist() == pytest.approx([r.logp for r in scored], abs=1e-5)


def test_argmax_response_dominates_along_the_same_prefix(tiny):
    """log π(y*) ≥ log π of the reference and of any other token choice along the same teacher-forced prefix."""
    results = score(tiny.model, tiny.tokenizer, REQUESTS, per_token=True)
    for res in results:
        assert res.argmax_logp >= res.logp - 1e-6
        per_pos_max = [math.log(p) for p in res.top1_probs]
        assert all(m >= t - 1e-6 for m, t in zip(per_pos_max, res.token_logps))
    # Along its own prefix, y* of a greedy continuation is that continuation itself.
    enc = Encoder(tiny.tokenizer, ScoreConfig())
    prompt_ids = enc.prompt("What is the capital of France?")
    seq = list(prompt_ids)
    with torch.no_grad():
        for _ in range(6):
            seq.append(int(tiny.model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    greedy = tuple(seq[len(prompt_ids):])
    res = score_encoded(tiny.model, [EncodedPair(tuple(prompt_ids), greedy)], tiny.tokenizer.pad_token_id)[0]
    assert res.argmax_ids == greedy
    assert res.argmax_logp == pytest.approx(res.logp, abs=1e-5)


class _MarkovLM(torch.nn.Module):
    """A 2-token toy language model: π(next | previous token) is a fixed table; hand-computable."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.config = type("C", (), {})()
        self.embed = torch.nn.Embedding(2, 2)
        self.embed.weight.data = torch.eye(2)
        self.head = torch.nn.Linear(2, 2, bias=False)
        self.head.weight.data = table.log().T.contiguous()  # logits = log table[prev]

    def get_decoder(self):
        embed = self.embed

        class _Body(torch.nn.Module):
            def forward(self, input_ids, **_):
                return type("O", (), {"last_hidden_state": embed(input_ids)})()

        return _Body()

    def get_output_embeddings(self):
        return self.head


def test_two_token_vocabulary_hand_worked():
    table = torch.tensor([[0.75, 0.25], [0.4, 0.6]])  # π(next | prev)
    model = _MarkovLM(table)
    # prompt [0], response [1, 1, 0] (the last 0 plays EOS): log .25 + log .6 + log .4
    pair = EncodedPair((0,), (1, 1, 0))
    res = score_encoded(model, [pair], pad_id=0, config=ScoreConfig(prefix_sharing=False), per_token=True)[0]
    assert res.logp == pytest.approx(math.log(0.25) + math.log(0.6) + math.log(0.4), abs=1e-6)
    assert res.argmax_logp == pytest.approx(math.log(0.75) + math.log(0.6) + math.log(0.6), abs=1e-6)
    assert res.argmax_ids == (0, 1, 1)
    assert res.n_tokens == 3
    h = lambda p: -sum(x * math.log(x) for x in p)  # noqa: E731
    assert res.mean_entropy == pytest.approx((h([.75, .25]) + 2 * h([.4, .6])) / 3, abs=1e-6)
    assert res.mean_top1_prob == pytest.approx((0.75 + 0.6 + 0.6) / 3, abs=1e-6)


def test_eos_appended_and_counted(tiny):
    ids = encode_response(tiny.tokenizer, "ab")
    assert ids[-1] == tiny.tokenizer.eos_token_id and len(ids) == 3


def test_truncation_policy_is_counted_and_prompt_overflow_is_an_error():
    cfg = ScoreConfig(max_length=8, max_prompt_tokens=4)
    pair = truncate_pair(list(range(6)), list(range(10, 20)), cfg)
    assert pair.prompt_ids == (2, 3, 4, 5) and pair.prompt_cut == 2  # keep the prompt's end
    assert pair.response_ids == (10, 11, 12, 13) and pair.response_cut == 6  # keep the response's start
    assert pair.truncated
    from lldyn.errors import LldynError, Where

    with pytest.raises(LldynError, match="prompt alone has 9 tokens") as err:
        truncate_pair(list(range(9)), [1], ScoreConfig(max_length=8), Where("data.jsonl", 7))
    assert "data.jsonl:7" in str(err.value) and "prompt" in str(err.value)


def test_raw_mode_uses_text_verbatim(tiny):
    raw = Encoder(tiny.tokenizer, ScoreConfig(template=False))
    assert raw.prompt("Q: hi\nA:") == tiny.tokenizer("Q: hi\nA:")["input_ids"]
    templ = Encoder(tiny.tokenizer, ScoreConfig())
    assert templ.prompt("hi") == tiny.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=True, add_generation_prompt=True)["input_ids"]


def test_collate_positions_skip_padding(tiny):
    pairs = [EncodedPair((1, 2), (3,)), EncodedPair((1,), (2, 3, 4))]
    tb: TokenBatch = collate(pairs, pad_id=0, padding_side="left")
    assert tb.input_ids.tolist() == [[0, 1, 2, 3], [1, 2, 3, 4]]
    assert tb.position_ids.tolist() == [[0, 0, 1, 2], [0, 1, 2, 3]]
    assert tb.response_start.tolist() == [3, 1] and tb.response_len.tolist() == [1, 3]
