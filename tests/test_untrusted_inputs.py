"""Untrusted files and code: no pickle is ever unpickled, remote code runs only when asked,
API keys never leave the environment.

Every planted payload would leave a marker file if it ran; each test also shows the payload is live
(running it the unsafe way does create the marker), so a missing marker means lldyn refused it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from lldyn.cli import main
from lldyn.errors import LldynError
from lldyn.models import ModelConfig, build_tiny_model, build_tiny_tokenizer, load_model

KEY = "sk-PLANTED-3f9c1e7a-do-not-leak"


class Payload:
    """Unpickling this object opens (creates) ``marker``: stands for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def planted_pickle(path: Path, marker: Path) -> Path:
    torch.save({"state": {}, "param_groups": [], "payload": Payload(marker)}, path)
    return path


def test_payload_is_live_when_unpickled_unsafely(tmp_path):
    marker = tmp_path / "RAN"
    torch.load(planted_pickle(tmp_path / "x.pt", marker), weights_only=False)
    assert marker.exists()


# --------------------------------------------------------------------------- model weights


def test_pickle_only_model_directory_is_refused_and_never_unpickled(tmp_path):
    marker, model_dir = tmp_path / "RAN", tmp_path / "pickled"
    build_tiny_model(0).config.save_pretrained(model_dir)
    planted_pickle(model_dir / "pytorch_model.bin", marker)
    with pytest.raises(LldynError, match=r"only pickled weights \(pytorch_model.bin\)") as info:
        load_model(ModelConfig(name=str(model_dir)))
    assert "safetensors" in str(info.value)
    assert not marker.exists()


def test_safetensors_are_read_and_a_pickle_next_to_them_is_ignored(tmp_path):
    marker, model_dir = tmp_path / "RAN", tmp_path / "both"
    model = build_tiny_model(0)
    model.save_pretrained(model_dir)
    build_tiny_tokenizer().save_pretrained(model_dir)
    planted_pickle(model_dir / "pytorch_model.bin", marker)
    loaded = load_model(ModelConfig(name=str(model_dir)))
    assert torch.equal(loaded.model.lm_head.weight, model.lm_head.weight)
    assert not marker.exists()


def remote_code_model(root: Path, marker: Path) -> Path:
    """A model whose config names its own code (a model type transformers does not know)."""
    path = root / "custom"
    build_tiny_model(0).save_pretrained(path)
    build_tiny_tokenizer().save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="evil-llama", auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                                                     "AutoModelForCausalLM": "configuration_evil.EvilModel"})
    (path / "config.json").write_text(json.dumps(config))
    (path / "configuration_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil-llama'\n\n\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    return path


def test_remote_code_runs_only_with_the_flag(tmp_path):
    marker = tmp_path / "RAN"
    model_dir = remote_code_model(tmp_path, marker)
    with pytest.raises(LldynError, match="--trust-remote-code") as info:
        load_model(ModelConfig(name=str(model_dir)))
    assert info.value.field == "trust_remote_code"
    assert not marker.exists()
    assert ModelConfig().trust_remote_code is False
    from lldyn.train import TrainConfig

    assert TrainConfig().trust_remote_code is False
    # With the flag the model's code does run (in a subprocess: transformers copies it into its module cache).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "lldyn.cli", "score", "--model", str(model_dir), "--trust-remote-code",
                           "--data", "builtin", "--limit", "1", "--out", str(tmp_path / "o.jsonl")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert marker.exists()


def test_a_run_directory_cannot_turn_remote_code_on(tmp_path):
    """A run's config.json saying trust_remote_code = true (a run someone else made) runs nothing unasked."""
    from lldyn.io import atomic_write_json
    from lldyn.runs import load_model_or_run
    from lldyn.train import TrainConfig, run_config, run_train_config

    marker = tmp_path / "RAN"
    model_dir = remote_code_model(tmp_path, marker)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    atomic_write_json(run / "config.json", run_config(TrainConfig(model=str(model_dir), trust_remote_code=True,
                                                                  out=str(run))))
    # every reader of a run's config (model loading, decompose's replay, reproduce) goes through this
    assert run_train_config(run).trust_remote_code is False and run_train_config(run, True).trust_remote_code
    for spec in (run, model_dir):
        with pytest.raises(LldynError, match="--trust-remote-code") as info:
            load_model_or_run(spec)
        assert info.value.field == "trust_remote_code"
    assert main(["score", "--model", str(run), "--data", "builtin", "--limit", "1", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert not marker.exists() and not (tmp_path / "o.jsonl").exists()


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng.pt"])
def test_planted_pickle_in_a_checkpoint_is_refused_on_resume(tmp_path, monkeypatch, capsys, name):
    from lldyn.checkpoint import list_checkpoints

    monkeypatch.chdir(tmp_path)
    argv = ["train", "--model", "tiny-random-llama", "--method", "sft", "--data", "builtin:train", "--limit", "4",
            "--batch-size", "2", "--steps", "2", "--checkpoint-every", "1", "--max-length", "64",
            "--max-prompt-tokens", "32", "--no-initial-sample", "--out", "run"]
    assert main(argv) == 0
    first, last = list_checkpoints(tmp_path / "run" / "checkpoints")
    shutil.rmtree(last)  # resume from step 1, which must restore optimizer, scheduler and RNG
    marker = tmp_path / "RAN"
    planted_pickle(first / name, marker)
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{name}: refused to load" in err[0] and "it calls io.open" in err[0], err
    assert not marker.exists()


# --------------------------------------------------------------------------- API keys


class Endpoint(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that records the Authorization header it gets; in ``fail`` mode it
    answers HTTP 500 with that header echoed in the body (a careless server's error page)."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        auth = self.headers.get("Authorization", "")
        self.server.seen.append(auth)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.server.mode == "fail":
            payload, status = f"internal error for request with {auth}".encode(), 500
        else:
            text = body["messages"][-1]["content"]
            reply = "Comparison: A is clearer.\nMore helpful: A" if "more helpful" in text else "A fresh rewrite."
            payload, status = json.dumps({"choices": [{"message": {"content": reply}}]}).encode(), 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    server.seen, server.mode = [], "ok"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def leaks(root: Path, *texts: str) -> list[str]:
    """Files under ``root`` (any format) and texts that contain the planted key."""
    found = [str(p) for p in root.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    return found + [f"output {i}" for i, t in enumerate(texts) if KEY in t]


def url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_api_key_reaches_the_endpoint_and_nothing_else(tmp_path, monkeypatch, capsys, endpoint):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.chdir(tmp_path)
    # probes with a model rephraser, a judged win rate, and on-policy DPO labelled by the endpoint
    commands = [
        ["probes", "build", "--data", "builtin", "--limit", "2", "--out", "probes.jsonl", "--rephraser", "openai:m",
         "--base-url", url(endpoint)],
        ["judge", "--a", "tiny-random-llama", "--b", "tiny-random-llama", "--prompts", "builtin:test", "--limit", "2",
         "--max-new-tokens", "4", "--bootstrap", "10", "--judge", "openai:m", "--base-url", url(endpoint),
         "--out", "judged"],
        ["train", "--model", "tiny-random-llama", "--method", "dpo", "--on-policy", "--preference-source", "openai:m",
         "--base-url", url(endpoint), "--on-policy-max-new-tokens", "6", "--data", "builtin:train", "--limit", "4",
         "--batch-size", "2", "--steps", "1", "--probes", "probes.jsonl", "--eval-every", "1",
         "--no-initial-sample", "--max-length", "64", "--max-prompt-tokens", "32", "--out", "run"]]
    calls = []
    for argv in commands:
        assert main(argv) == 0
        calls.append(len(endpoint.seen) - sum(calls))
    out, err = capsys.readouterr()
    assert min(calls) > 0 and set(endpoint.seen) == {f"Bearer {KEY}"}  # each command sent the key
    assert (tmp_path / "run" / "config.json").is_file() and (tmp_path / "judged" / "summary.json").is_file()
    assert json.loads((tmp_path / "judged" / "summary.json").read_text())["api_key_env"] == "OPENAI_API_KEY"
    assert not leaks(tmp_path, out, err)


@pytest.mark.parametrize("mode", ["fail", "unreachable", "key_in_url"])
def test_api_key_is_not_in_error_messages(tmp_path, monkeypatch, capsys, endpoint, mode):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.chdir(tmp_path)
    endpoint.mode = "fail"
    base = {"fail": url(endpoint), "unreachable": "http://127.0.0.1:9",
            "key_in_url": f"http://user:{KEY}@127.0.0.1:9/v1?token={KEY}"}[mode]
    for argv in (["probes", "build", "--data", "builtin", "--limit", "2", "--out", "probes.jsonl",
                  "--rephraser", "openai:m", "--base-url", base],
                 ["judge", "--a", "tiny-random-llama", "--b", "tiny-random-llama", "--prompts", "builtin:test",
                  "--limit", "1", "--max-new-tokens", "2", "--judge", "openai:m", "--base-url", base, "--out", "j"]):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert "error:" in err.strip().splitlines()[-1] and not leaks(tmp_path, out, err), err
    assert (mode == "fail") == (f"Bearer {KEY}" in endpoint.seen)  # in fail mode the key did reach the server
    assert not list(tmp_path.iterdir())


def test_a_key_pasted_into_the_base_url_is_not_written_into_the_run(tmp_path):
    from lldyn.train import TrainConfig, run_config

    cfg = TrainConfig(method="dpo", on_policy=True, preference_source="openai:m",
                      base_url=f"https://user:{KEY}@judge.example/v1?key={KEY}")
    written = json.dumps(run_config(cfg))
    assert KEY not in written and "https://judge.example/v1" in written
