"""Model loading: tiny model determinism, embedded GGUF alias, LoRA, and safety defaults."""
from __future__ import annotations

import pytest
import torch

from conftest import requires_smollm2
from lldyn.errors import LldynError
from lldyn.models import ModelConfig, build_tiny_model, build_tiny_tokenizer, load_model


def test_tiny_model_is_deterministic_and_seeded():
    a, b, c = build_tiny_model(0), build_tiny_model(0), build_tiny_model(1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_tiny_tokenizer_roundtrip_and_eos(tiny):
    tok = tiny.tokenizer
    assert tok.decode(tok("héllo, wörld")["input_ids"]) == "héllo, wörld"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == tok.eos_token_id


def test_lora_wraps_and_trains_only_adapters():
    """Three AdamW steps (weight decay on, every parameter handed to the optimizer): each base weight stays
    bit-identical, each adapter matrix moves."""
    lm = load_model(ModelConfig(name="tiny-random-llama", lora_r=2))
    trainable = [n for n, p in lm.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    optimizer = torch.optim.AdamW(lm.model.parameters(), lr=1e-2, weight_decay=0.1)
    ids = torch.tensor([[5, 17, 42, 9, 3, 28]])
    for _ in range(3):
        optimizer.zero_grad()
        lm.model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    after = dict(lm.model.named_parameters())
    base = [n for n in before if "lora" not in n]
    assert base and all(torch.equal(after[n], before[n]) for n in base)
    assert [n for n in trainable if torch.equal(after[n], before[n])] == []


def test_bad_model_specs(tmp_path):
    with pytest.raises(LldynError, match="unknown model"):
        load_model(ModelConfig(name="definitely-not-a-model"))
    (tmp_path / "d").mkdir()
    with pytest.raises(LldynError, match="no config.json"):
        load_model(ModelConfig(name=str(tmp_path / "d")))
    with pytest.raises(LldynError, match="unknown dtype"):
        ModelConfig(dtype="float8")


def test_hub_id_without_owner_loads_from_the_cache_offline(tmp_path):
    """``gpt2``-style ids (no owner) load from the local Hugging Face cache offline; an unknown word is
    still an unknown alias."""
    import os
    import subprocess
    import sys

    snapshot = tmp_path / "cache" / "models--tinyllm" / "snapshots" / "0123abcd"
    build_tiny_model(0).save_pretrained(snapshot)
    build_tiny_tokenizer().save_pretrained(snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0123abcd")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    code = ("from lldyn.models import ModelConfig, load_model\n"
            "lm = load_model(ModelConfig(name='tinyllm'))\n"
            "print(type(lm.model).__name__, lm.source)\n"
            "try:\n    load_model(ModelConfig(name='tinyllm2'))\n"
            "except Exception as err:\n    print(type(err).__name__, err)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.strip().splitlines()
    assert first == "LlamaForCausalLM tinyllm"
    assert second.startswith("LldynError") and "unknown model 'tinyllm2'" in second


def test_trust_remote_code_is_off_by_default():
    assert ModelConfig().trust_remote_code is False


@requires_smollm2
@pytest.mark.slow
def test_embedded_smollm2_loads_offline_as_float32_llama(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    assert model.dtype == torch.float32 and type(model).__name__ == "LlamaForCausalLM"
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    assert tok.eos_token == "<|im_end|>" and tok.bos_token_id not in tok("hi", add_special_tokens=True)["input_ids"]


def test_pickle_weights_are_never_loaded(tmp_path):
    """A model directory holding only pickled weights (pytorch_model.bin) is refused: safetensors/GGUF only."""
    model = build_tiny_model(0)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle: could run code when loaded
    with pytest.raises(LldynError, match="cannot load model"):
        load_model(ModelConfig(name=str(tmp_path)))
    model.save_pretrained(tmp_path / "safe")
    build_tiny_tokenizer().save_pretrained(tmp_path / "safe")
    loaded = load_model(ModelConfig(name=str(tmp_path / "safe")))
    assert torch.equal(loaded.model.lm_head.weight, model.lm_head.weight)


def test_bfloat16_on_a_gpu_without_it_is_one_clear_line_and_nothing_written(tmp_path, monkeypatch, capsys):
    from lldyn.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    out = tmp_path / "run"
    code = main(["train", "--model", "tiny-random-llama", "--data", "builtin:train", "--limit", "4", "--steps", "1",
                 "--dtype", "bfloat16", "--device", "cuda", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "bfloat16 is not supported on cuda (Tesla V100-SXM2-16GB)" in err[0] and "'dtype'" in err[0]
    assert "--dtype float32" in err[0]
    assert not out.exists()
    # the same GPU with float32, and bfloat16 on the CPU, are fine
    ModelConfig(name="tiny-random-llama", dtype="float32", device="cuda")
    ModelConfig(name="tiny-random-llama", dtype="bfloat16", device="cpu")
    with pytest.raises(LldynError, match="bfloat16 is not supported"):
        ModelConfig(name="tiny-random-llama", dtype="bfloat16", device="cuda:1")


def test_bfloat16_scoring_is_within_the_documented_tolerance_of_float32(tiny):
    """docs/benchmarks.md (bf16 vs float32): the engine turns bf16 logits into float32 before the log-softmax
    and sums in float32, so a bf16 model's log π is off by its forward's rounding only. On the tiny model that is
    ≤ 5e-3 nats per token (measured 1.5e-3); a bf16 log-softmax alone would round log π ≈ −5.4 to steps of 0.03."""
    from lldyn.scoring import Encoder, ScoreConfig, ScoreRequest, collate, score, sequence_logps

    reqs = [ScoreRequest("What is the capital of France?", "Paris, a large city on the Seine."),
            ScoreRequest("Name a colour.", "Blue, " * 12), ScoreRequest("x", "y")]
    bf16 = load_model(ModelConfig(name="tiny-random-llama", dtype="bfloat16"))
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    full = score(tiny.model, tiny.tokenizer, reqs, per_token=True)
    half = score(bf16.model, bf16.tokenizer, reqs, per_token=True)
    for a, b in zip(full, half):
        assert a.n_tokens == b.n_tokens
        assert max(abs(x - y) for x, y in zip(a.token_logps, b.token_logps)) <= 5e-3
        assert abs(a.logp - b.logp) <= 5e-3 * a.n_tokens
    pairs = [Encoder(bf16.tokenizer, ScoreConfig()).pair(r.prompt, r.response) for r in reqs]
    with torch.no_grad():
        stats = sequence_logps(bf16.model, collate(pairs, bf16.tokenizer.pad_token_id), with_stats=True)
    assert stats.token_logps.dtype == torch.float32 and stats.entropies.dtype == torch.float32
