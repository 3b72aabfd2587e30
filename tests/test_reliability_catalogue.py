"""The bad-input catalogue: every command, every kind of user input, one clear line.

Each case builds its inputs in a fresh directory, runs the real CLI there and checks that

* the exit status is 2 and there is no traceback;
* stderr is exactly ONE line, ``lldyn <command>: error: ...``, naming the file (and line / field
  where there is one) and what was expected — the case's ``needles`` must all be in that line;
* nothing is half-written: the directory listing (with file contents) is the same before and
  after, except for the paths a case is explicitly allowed to leave.

Cases that load a model run as a subprocess (``python -m lldyn.cli``, the installed entry point,
so warnings and logging reach the real stderr); the others call :func:`lldyn.cli.main` in-process
(the same entry point, ~100x cheaper than starting Python with torch).
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from lldyn.cli import COMMANDS, main

SRC = Path(__file__).resolve().parents[1] / "src"
PAIRS = [{"id": f"p{i}", "prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.",
          "rejected": f"Maybe {i + 7}, or so."} for i in range(6)]


def jsonl(rows: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write(root: Path, name: str, content: str | bytes) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def tiny_model_dir(root: Path, name: str, *, pickled: bool = False, remote_code: bool = False) -> Path:
    """A tiny Llama as a model directory: pickled weights only, or a config that names its own code."""
    import torch

    from lldyn.models import build_tiny_model, build_tiny_tokenizer

    model = build_tiny_model(0)
    path = root / name
    if pickled:
        model.config.save_pretrained(path)
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    else:
        model.save_pretrained(path)
        build_tiny_tokenizer().save_pretrained(path)
    if remote_code:  # a model type transformers does not know, whose code would leave a marker file
        config = json.loads((path / "config.json").read_text())
        config["model_type"] = "evil-llama"
        config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                              "AutoModelForCausalLM": "configuration_evil.EvilModel"}
        (path / "config.json").write_text(json.dumps(config))
        (path / "configuration_evil.py").write_text(
            "import pathlib\n"
            f"pathlib.Path({str(root / 'REMOTE_CODE_RAN')!r}).touch()\n"
            "from transformers import LlamaConfig, LlamaForCausalLM\n\n\n"
            "class EvilConfig(LlamaConfig):\n    model_type = 'evil-llama'\n\n\n"
            "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A directory holding pairs.jsonl, probes.jsonl and run/: a tiny tracked SFT run with a checkpoint."""
    root = tmp_path_factory.mktemp("trained")
    write(root, "pairs.jsonl", jsonl(PAIRS))
    with contextlib.chdir(root):
        assert main(["probes", "build", "--data", "pairs.jsonl", "--out", "probes.jsonl", "--limit", "2"]) == 0
        assert main(TRAIN_RUN) == 0
    return root


TRAIN_RUN = ["train", "--method", "sft", "--model", "tiny-random-llama", "--data", "pairs.jsonl", "--steps", "1",
             "--batch-size", "2", "--probes", "probes.jsonl", "--eval-every", "1", "--no-initial-sample",
             "--max-length", "64", "--max-prompt-tokens", "32", "--out", "run"]
TINY_TRAIN = ["train", "--model", "tiny-random-llama", "--data", "pairs.jsonl", "--steps", "1", "--batch-size", "2",
              "--no-initial-sample", "--max-length", "64", "--max-prompt-tokens", "32"]


def copy_trained(trained: Path, root: Path) -> None:
    for item in trained.iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, root / item.name)


@dataclass(frozen=True)
class Case:
    """One bad input. ``setup(root, trained)`` writes the files; ``argv`` runs in ``root``."""

    id: str
    argv: tuple[str, ...]
    needles: tuple[str, ...]
    setup: Callable[[Path, Path], None] = lambda root, trained: None
    allowed: tuple[str, ...] = ()  # glob patterns of paths the case may create or change
    subprocess: bool = False  # loads a model: run as a real process
    env: tuple[tuple[str, str], ...] = ()  # environment variables for the run


def data(name: str, content: str | bytes) -> Callable[[Path, Path], None]:
    return lambda root, trained: write(root, name, content) and None


def both(*setups: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    def setup(root: Path, trained: Path) -> None:
        for s in setups:
            s(root, trained)
    return setup


def with_run(root: Path, trained: Path) -> None:
    copy_trained(trained, root)


def parquet(root: Path, trained: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"question": ["a?", "b?"], "answer": ["x", "y"]}), root / "data.parquet")


GOOD = jsonl(PAIRS[:2])
PROBE = {"id": "a/chosen", "prompt_id": "a", "family": "chosen", "prompt": "Hi?", "response": "Hello."}
RUN_NEEDS = ("--a", "tiny-random-llama", "--b", "tiny-random-llama", "--judge", "hf:tiny-random-llama")

CASES = [
    # ---------------------------------------------------------------- data files
    Case("data-bad-json-line-3", ("score", "--model", "tiny-random-llama", "--data", "data.jsonl", "--out", "o.jsonl"),
         ("data.jsonl:3", "malformed JSON", "expected one JSON object per line"),
         data("data.jsonl", GOOD + '{"prompt": "p", "chosen": "c",\n')),
    Case("data-missing-field", ("train", "--method", "dpo", "--model", "tiny-random-llama", "--data", "data.jsonl",
                                "--out", "run"),
         ("data.jsonl:2", "field 'rejected'", "missing field", "expected"),
         data("data.jsonl", jsonl([PAIRS[0], {"prompt": "p", "chosen": "c"}]))),
    Case("data-wrong-type", ("squeeze-risk", "--model", "tiny-random-llama", "--data", "data.jsonl", "--out", "r.jsonl"),
         ("data.jsonl:2", "field 'chosen'", "got int", "expected"),
         data("data.jsonl", jsonl([PAIRS[0], {"prompt": "p", "chosen": 5, "rejected": "r"}]))),
    Case("data-empty-file", ("probes", "build", "--data", "data.jsonl", "--out", "probes.jsonl"),
         ("data.jsonl", "no preference pairs", "expected"), data("data.jsonl", "")),
    Case("data-duplicate-id", ("score", "--model", "tiny-random-llama", "--data", "data.jsonl", "--out", "o.jsonl"),
         ("data.jsonl:3", "field 'id'", "duplicate id 'p1'", "expected unique ids"),
         data("data.jsonl", GOOD + jsonl([PAIRS[1]]))),
    Case("data-parquet-wrong-columns", ("train", "--method", "dpo", "--model", "tiny-random-llama",
                                        "--data", "data.parquet", "--out", "run"),
         ("data.parquet row 0", "field 'chosen'", "missing field", "expected"), parquet),
    Case("data-json-not-a-list", ("score", "--model", "tiny-random-llama", "--data", "data.json", "--out", "o.jsonl"),
         ("data.json", "list of objects", "expected"), data("data.json", '{"rows": 3}')),
    Case("data-unknown-format", ("judge", *RUN_NEEDS, "--prompts", "prompts.csv", "--out", "judged"),
         ("prompts.csv", "unknown data file format", "expected a .jsonl"), data("prompts.csv", "prompt\nhi\n")),
    Case("data-bad-chat-message", ("train", "--method", "dpo", "--model", "tiny-random-llama", "--data", "data.jsonl",
                                   "--out", "run"),
         ("data.jsonl:1", "field 'prompt[0]'", "bad chat message", "expected"),
         data("data.jsonl", jsonl([{"prompt": [{"role": "user"}], "chosen": "c", "rejected": "r"}]))),
    Case("data-not-gzip", ("score", "--model", "tiny-random-llama", "--data", "data.jsonl.gz", "--out", "o.jsonl"),
         ("data.jsonl.gz", "cannot read file", "gzip"), data("data.jsonl.gz", GOOD)),
    Case("data-not-utf8", ("score", "--model", "tiny-random-llama", "--data", "data.jsonl", "--out", "o.jsonl"),
         ("data.jsonl:2", "not UTF-8", "expected UTF-8"),
         data("data.jsonl", GOOD.splitlines()[0].encode() + b'\n{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')),
    Case("data-file-not-found", ("squeeze-risk", "--model", "tiny-random-llama", "--data", "absent.jsonl",
                                 "--out", "r.jsonl"), ("absent.jsonl", "data file not found", "expected a .jsonl")),
    Case("data-too-many-rows", ("score", "--model", "tiny-random-llama", "--data", "big.jsonl", "--out", "o.jsonl"),
         ("big.jsonl", "more than 5 rows", "LLDYN_MAX_ROWS=5", "expected --limit N"),
         data("big.jsonl", jsonl(PAIRS)), env=(("LLDYN_MAX_ROWS", "5"),)),
    Case("data-json-too-large", ("squeeze-risk", "--model", "tiny-random-llama", "--data", "data.json",
                                 "--out", "r.jsonl"),
         ("data.json", "too large to parse as one JSON document", "LLDYN_MAX_JSON_BYTES=100", "expected a .jsonl"),
         data("data.json", json.dumps(PAIRS)), env=(("LLDYN_MAX_JSON_BYTES", "100"),)),
    Case("prompts-missing-field", ("judge", *RUN_NEEDS, "--prompts", "prompts.jsonl", "--out", "judged"),
         ("prompts.jsonl:2", "field 'prompt'", "missing field", "expected"),
         data("prompts.jsonl", jsonl([{"prompt": "hi"}, {"question": "hello?"}]))),
    Case("sft-data-missing-response", ("train", "--method", "sft", "--model", "tiny-random-llama",
                                       "--data", "sft.jsonl", "--out", "run"),
         ("sft.jsonl:1", "field 'response'", "missing field", "expected"),
         data("sft.jsonl", jsonl([{"prompt": "p", "answer": "a"}]))),
    Case("data-gzip-bomb", ("score", "--model", "tiny-random-llama", "--data", "data.json.gz", "--out", "o.jsonl"),
         ("data.json.gz", "(decompressed) bytes is too large", "LLDYN_MAX_JSON_BYTES=1000", "expected a .jsonl"),
         data("data.json.gz", __import__("gzip").compress(json.dumps(PAIRS + [{"prompt": "p", "chosen": "x" * 50_000,
                                                                               "rejected": "y"}]).encode())),
         env=(("LLDYN_MAX_JSON_BYTES", "1000"),)),
    Case("data-hh-empty-turn", ("squeeze-risk", "--model", "tiny-random-llama", "--data", "hh.jsonl", "--out", "r.jsonl"),
         ("hh.jsonl:1", "field 'chosen'", "empty Human turn", "expected non-empty turns"),
         data("hh.jsonl", jsonl([{"chosen": "\n\nHuman: \n\nAssistant: A", "rejected": "\n\nHuman: \n\nAssistant: B"}]))),
    # ---------------------------------------------------------------- probe files
    Case("probes-unknown-family", (*TINY_TRAIN, "--probes", "probes.jsonl", "--out", "run"),
         ("probes.jsonl:2", "field 'family'", "unknown probe family 'argmax'", "expected one of"),
         both(data("pairs.jsonl", jsonl(PAIRS)),
              data("probes.jsonl", jsonl([PROBE, {**PROBE, "id": "a/argmax", "family": "argmax"}])))),
    Case("probes-file-not-found", (*TINY_TRAIN, "--probes", "absent.jsonl", "--out", "run"),
         ("absent.jsonl", "probe file not found", "expected"), data("pairs.jsonl", jsonl(PAIRS))),
    Case("probes-missing-for-decomposition", (*TINY_TRAIN, "--decompose-every", "1", "--out", "run"),
         ("field 'decompose_every'", "decomposition needs probes", "expected --probes FILE"),
         data("pairs.jsonl", jsonl(PAIRS))),
    Case("probes-missing-response", ("probes", "check", "probes.jsonl"),
         ("probes.jsonl:1", "field 'response'", "missing field", "expected"),
         data("probes.jsonl", jsonl([{k: v for k, v in PROBE.items() if k != "response"}]))),
    Case("probes-duplicate-id", ("probes", "check", "probes.jsonl"),
         ("probes.jsonl:3", "field 'id'", "duplicate probe id 'a/chosen'", "first on line 1", "expected"),
         data("probes.jsonl", jsonl([PROBE, {**PROBE, "id": "a/rejected", "family": "rejected"}, PROBE]))),
    Case("probes-truncated-last-line", ("probes", "check", "probes.jsonl"),
         ("probes.jsonl:2", "malformed JSON", "expected one JSON object per line"),
         data("probes.jsonl", jsonl([PROBE]) + '{"prompt_id": "b", "family": "cho')),
    Case("probes-too-many", ("probes", "check", "probes.jsonl"),
         ("probes.jsonl", "more than 1 probes", "LLDYN_MAX_ROWS=1", "expected --limit N"),
         data("probes.jsonl", jsonl([PROBE, {**PROBE, "id": "a/rejected", "family": "rejected"}])),
         env=(("LLDYN_MAX_ROWS", "1"),)),
    Case("probes-no-chosen", ("probes", "check", "probes.jsonl"),
         ("probes.jsonl", "field 'family'", "prompt 'a' has no 'chosen' probe", "expected"),
         data("probes.jsonl", jsonl([{**PROBE, "id": "a/rejected", "family": "rejected"}]))),
    # ---------------------------------------------------------------- TOML configs
    Case("toml-syntax-error", ("train", "--config", "c.toml", "--out", "run"), ("c.toml:3", "invalid TOML", "expected"),
         data("c.toml", 'method = "sft"\nlr = 1e-3\nsteps = = 2\n')),
    Case("toml-unknown-key", ("train", "--config", "c.toml", "--out", "run"),
         ("c.toml:2", "field 'learning_rate'", "unknown setting", "expected one of"),
         data("c.toml", 'method = "sft"\nlearning_rate = 1e-3\n')),
    Case("toml-wrong-type", ("mnist", "--config", "m.toml", "--out", "mnist"),
         ("m.toml:1", "field 'epochs'", "bad value 'many'", "expected an integer"), data("m.toml", 'epochs = "many"\n')),
    Case("toml-bad-value", ("train", "--config", "c.toml", "--out", "run"),
         ("c.toml:1", "field 'method'", "unknown method 'ppo'", "expected one of"), data("c.toml", 'method = "ppo"\n')),
    Case("toml-demo-bad-section-key", ("demo", "--config", "d.toml", "--out", "demo", "--model", "tiny-random-llama"),
         ("d.toml:4", "field 'sft.lrr'", "unknown setting", "expected one of"),
         data("d.toml", '[demo]\nprobe_prompts = 2\n[sft]\nlrr = 1e-3\n')),
    Case("toml-reproduce-wrong-sections", ("reproduce", "dpo", "--config", "r.toml", "--out", "rep"),
         ("r.toml", "do not fit experiment 'dpo'", "expected [experiment] and [train]"),
         data("r.toml", '[experiment]\npairs = 8\n[baseline]\nmethod = "sft"\n')),
    Case("toml-reproduce-unknown-shipped", ("reproduce", "sft", "--config", "gpt-5-sft", "--out", "rep"),
         ("field 'config'", "no shipped config 'gpt-5-sft'", "expected one of")),
    Case("toml-train-section-bad-value", ("reproduce", "sft", "--config", "r.toml", "--out", "rep"),
         ("r.toml:6", "field 'train.lr'", "learning rate must be > 0", "expected a positive number"),
         both(data("pairs.jsonl", jsonl(PAIRS)),
              data("r.toml", '[experiment]\npairs = 8\ndata = "pairs.jsonl"\n[train]\nmethod = "sft"\nlr = -1.0\n'))),
    Case("toml-not-found", ("mnist", "--config", "absent.toml", "--out", "mnist"), ("absent.toml", "config file not found", "expected a TOML file")),
    # ---------------------------------------------------------------- CLI flags
    Case("flag-not-a-number", ("train", "--lr", "abc"), ("lldyn train: error:", "--lr expects float", "'abc'")),
    Case("flag-unknown-command", ("bogus",), ("lldyn: error:", "invalid choice: 'bogus'", "lldyn --help")),
    Case("flag-missing-required", ("probes", "build", "--data", "builtin"), ("--out", "required")),
    Case("flag-limit-zero", ("score", "--model", "tiny-random-llama", "--data", "builtin", "--out", "o.jsonl",
                             "--limit", "0"), ("field 'limit'", "limit must be >= 1", "expected a positive")),
    Case("flag-steps-zero", ("train", "--steps", "0", "--out", "run"),
         ("field 'steps'", "must be > 0, got 0", "expected a positive integer")),
    Case("flag-predict-steps-beyond-epochs",
         ("predict", "--model", "tiny-random-llama", "--data", "pairs.jsonl", "--pairs", "pairs.jsonl", "--steps", "4",
          "--epochs", "1", "--batch-size", "2", "--max-length", "64", "--max-prompt-tokens", "32", "--out", "t.jsonl"),
         ("pairs.jsonl", "field 'steps'", "the plan says 4 steps and 1 epoch,", "hold only 3 steps",
          "expected --steps <= 3"), data("pairs.jsonl", jsonl(PAIRS)), subprocess=True),
    Case("flag-lld-risk-group-of-one",
         ("lld-risk", "--model", "tiny-random-llama", "--data", "builtin:test", "--skip-invalid", "--num-generations",
          "1", "--out", "r.jsonl"),
         ("field 'num_generations'", "must be >= 2, got 1", "expected at least 2 completions per prompt")),
    Case("flag-predict-later-phase-without-start",
         ("predict", "--method", "sft_dpo", "--phase", "dpo", "--pairs", "pairs.jsonl", "--out", "t.jsonl"),
         ("field 'start'", "starts where phase 'sft' ends", "expected --start MODEL"), data("pairs.jsonl", jsonl(PAIRS))),
    Case("flag-batch-size-zero", ("judge", *RUN_NEEDS, "--prompts", "builtin:test", "--batch-size", "0",
                                  "--out", "judged"), ("field 'batch-size'", "must be >= 1", "expected")),
    Case("flag-port-out-of-range", ("serve", "--model", "tiny-random-llama", "--port", "70000"),
         ("field 'port'", "0..65535", "expected a TCP port")),
    Case("flag-unknown-rephraser", ("probes", "build", "--data", "builtin", "--out", "probes.jsonl",
                                    "--rephraser", "magic"),
         ("field 'rephraser'", "unknown rephraser 'magic'", "expected rule")),
    Case("flag-unknown-judge", ("judge", "--a", "x", "--b", "y", "--judge", "oracle", "--prompts", "builtin:test",
                                "--out", "judged"), ("field 'judge'", "unknown judge 'oracle'", "expected")),
    Case("flag-env-limit-not-a-number", ("score", "--model", "tiny-random-llama", "--data", "builtin",
                                         "--out", "o.jsonl"), ("field 'LLDYN_MAX_ROWS'", "bad value 'lots'",
                                                            "expected a positive integer"),
         env=(("LLDYN_MAX_ROWS", "lots"),)),
    # ---------------------------------------------------------------- model specs (through transformers: real processes)
    Case("model-path-not-found", ("score", "--model", "models/absent/", "--data", "data.jsonl", "--out", "o.jsonl"),
         ("models/absent/", "model path not found", "expected"), data("data.jsonl", GOOD)),
    Case("model-pickle-only", ("score", "--model", "pickled", "--data", "data.jsonl", "--out", "o.jsonl"),
         ("pickled", "only pickled weights (pytorch_model.bin)", "expected *.safetensors"),
         both(data("data.jsonl", GOOD), lambda root, trained: tiny_model_dir(root, "pickled", pickled=True) and None),
         subprocess=True),
    Case("model-unknown-alias", ("train", "--model", "tiny-llama", *TINY_TRAIN[3:], "--out", "run"),
         ("field 'model'", "unknown model 'tiny-llama'", "expected one of"), data("pairs.jsonl", jsonl(PAIRS))),
    Case("model-dir-without-config", ("squeeze-risk", "--model", "weights", "--data", "data.jsonl", "--out", "r.jsonl"),
         ("weights", "not a model directory (no config.json)", "expected"),
         both(data("data.jsonl", GOOD), data("weights/model.safetensors", b""))),
    Case("model-remote-code-not-trusted", ("serve", "--model", "custom", "--port", "0"),
         ("custom", "field 'trust_remote_code'", "its own Python code", "expected --trust-remote-code"),
         lambda root, trained: tiny_model_dir(root, "custom", remote_code=True) and None, subprocess=True),
    Case("model-hub-id-offline", ("score", "--model", "lldyn-test/not-cached", "--data", "data.jsonl",
                                  "--out", "o.jsonl"),
         ("lldyn-test/not-cached", "cannot load model (offline", "expected"), data("data.jsonl", GOOD),
         subprocess=True),
    Case("model-bad-gguf", ("judge", "--a", "m.gguf", "--b", "tiny-random-llama", "--judge", "tests_judge:length",
                            "--prompts", "builtin:test", "--limit", "1", "--out", "judged"),
         ("m.gguf", "cannot read GGUF", "expected"),
         both(data("m.gguf", b"GGUF\x03\x00garbage"), data("tests_judge.py", "def length(p, r):\n    return len(r)\n")),
         subprocess=True),
    # ---------------------------------------------------------------- run directories
    Case("run-decompose-not-a-run", ("decompose", "--run", "absent"),
         ("absent", "not a run directory (no config.json)", "expected a directory written by lldyn train")),
    Case("run-ref-not-found", (*TINY_TRAIN, "--method", "dpo", "--ref", "models/absent", "--out", "run"),
         ("models/absent", "not in the local Hugging Face cache", "expected"), data("pairs.jsonl", jsonl(PAIRS))),
    Case("run-decompose-into-itself", ("decompose", "--run", "run", "--every", "1", "--out", "run"),
         ("run", "--out must be a new directory"), with_run),
    Case("run-report-not-a-run", ("report", "empty"), ("empty", "no probe table", "expected a run tracked"),
         lambda root, trained: (root / "empty").mkdir()),
    Case("run-report-missing", ("report", "absent"), ("absent", "run directory not found", "expected")),
    Case("run-report-out-is-file", ("report", "run", "--out", "out.txt"),
         ("out.txt", "field 'out'", "output path is a file", "expected a directory"),
         both(with_run, data("out.txt", "keep me"))),
    Case("run-report-corrupt-probe-table", ("report", "run"),
         ("probe_table.jsonl:2", "malformed JSON", "expected one JSON object per line"),
         both(with_run, lambda root, trained: write(root, "run/probe_table.jsonl", (root / "run/probe_table.jsonl")
                                                    .read_text().replace("\n", "\n{oops\n", 1)) and None)),
    Case("run-report-corrupt-config", ("report", "run"), ("config.json:1", "corrupt config.json", "expected"),
         both(with_run, data("run/config.json", "{not json"))),
    Case("run-resume-other-config", (*TRAIN_RUN, "--lr", "0.5", "--resume"),
         ("run/config.json", "different config", "lr: 0.5 (this run)", "expected a new --out directory"), with_run),
    Case("run-rerun-without-resume", tuple(TRAIN_RUN), ("run", "already holds a run", "expected --resume"), with_run),
    Case("run-resume-nothing", (*TINY_TRAIN, "--out", "fresh", "--resume"),
         ("fresh", "nothing to resume", "expected a run directory"), data("pairs.jsonl", jsonl(PAIRS))),
    Case("run-out-is-a-file", (*TINY_TRAIN, "--out", "out.txt"),
         ("out.txt", "run directory path is a file", "expected a directory"),
         both(data("pairs.jsonl", jsonl(PAIRS)), data("out.txt", "keep me"))),
    Case("run-judge-out-is-a-file", ("judge", *RUN_NEEDS, "--prompts", "builtin:test", "--out", "out.txt"),
         ("out.txt", "field 'out'", "not a directory", "expected a directory"), data("out.txt", "keep me")),
    Case("run-squeeze-toy-out-is-a-file", ("squeeze-toy", "--out", "out.txt"),
         ("out.txt", "field '--out'", "not a directory", "expected"), data("out.txt", "keep me")),
    Case("run-score-out-is-a-dir", ("score", "--model", "tiny-random-llama", "--data", "data.jsonl", "--out", "outdir"),
         ("outdir", "output is a directory", "expected a file path"),
         both(data("data.jsonl", GOOD), lambda root, trained: (root / "outdir").mkdir())),
    Case("probes-kernel-unknown-probe", ("kernel", "--model", "tiny-random-llama", "--probes", "probes.jsonl",
                                          "--probe", "nope/chosen", "--train", "q0/rejected", "--out", "k.png"),
         ("probes.jsonl", "field 'probe'", "no probe 'nope/chosen'", "expected PROMPT_ID/FAMILY"),
         data("probes.jsonl", jsonl([{"id": f"q0/{f}", "prompt_id": "q0", "family": f, "prompt": "Hi?",
                                      "response": "Hello."} for f in ("chosen", "rejected")]))),
    Case("run-mnist-data-dir-missing", ("mnist", "--data", "nodata", "--out", "mnist", "--quick"),
         ("nodata", "expected")),
]

def snapshot(root: Path) -> dict[str, str | None]:
    """Every path under ``root`` with the sha256 of its content (None for directories)."""
    return {p.relative_to(root).as_posix(): None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if "__pycache__" not in p.parts}


def run_case(case: Case, root: Path, capsys, monkeypatch) -> tuple[int, str, str]:
    env = dict(case.env)
    if case.subprocess:
        proc = subprocess.run([sys.executable, "-m", "lldyn.cli", *case.argv], cwd=root, capture_output=True,
                              text=True, timeout=300,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                                   # this checkout's lldyn, not whichever one the environment has installed
                                   "PYTHONPATH": os.pathsep.join([str(root), str(SRC)]), **env})
        return proc.returncode, proc.stdout, proc.stderr
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        code = main(list(case.argv))
    except SystemExit as exc:  # argparse usage errors exit from inside the parser
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_catalogue_covers_every_command_and_kind():
    commands = {c.argv[0] for c in CASES}
    assert {name.replace("_", "-") for name in COMMANDS} <= commands | {"bogus"}
    kinds = {c.id.split("-")[0] for c in CASES}
    assert {"data", "probes", "toml", "flag", "model", "run"} <= kinds
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_line_exit_2_and_writes_nothing(case, tmp_path, trained, capsys, monkeypatch):
    case.setup(tmp_path, trained)
    before = snapshot(tmp_path)
    code, out, err = run_case(case, tmp_path, capsys, monkeypatch)
    assert "Traceback" not in err, err
    assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err}"
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, f"stderr is not one line:\n{err}"
    line = lines[0]
    assert line.startswith("lldyn") and ": error: " in line, line
    for needle in case.needles:
        assert needle in line, f"{needle!r} not in: {line}"
    after = snapshot(tmp_path)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k, "absent") != after.get(k, "absent"))
    unexpected = [k for k in changed if not any(fnmatch.fnmatch(k, pat) for pat in case.allowed)]
    assert not unexpected, f"half-written or changed: {unexpected}"
    assert not (tmp_path / "REMOTE_CODE_RAN").exists()
