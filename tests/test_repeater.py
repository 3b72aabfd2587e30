"""The repeater: free-running greedy generations at evaluations, their budget, their rows, resume, report, words."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from lldyn.data import load_preferences
from lldyn.degeneration import degeneration
from lldyn.errors import LldynError
from lldyn.generation import GenerationConfig, sample
from lldyn.probes import ProbeSet, build_probes
from lldyn.rephrase import RuleRephraser
from lldyn.report import write_report
from lldyn.rundir import GenerationRow, RunDir, TrackSummary, TrainRow
from lldyn.scoring import EncodedPair, ScoreConfig
from lldyn.summary import RepetitionChange, what_moved
from lldyn.testing import naive_logp
from lldyn.tracking import FreeRunConfig, Tracker, summarise_generations
from lldyn.train import TrainConfig, train

GEN = GenerationConfig(max_new_tokens=4)  # short initial samples keep the tiny tests fast


@pytest.fixture(scope="module")
def probes() -> ProbeSet:
    pairs = load_preferences("builtin")
    train_pairs = [p for p in pairs if p.extra.get("split") != "test"]
    test = [p for p in pairs if p.extra.get("split") == "test"]
    return build_probes(train_pairs, test, RuleRephraser(train_pairs), limit=3, seed=0)


def _row(tokens: list[int], eos: bool, budget: int, logp: float, step: int = 0, pid: str = "p") -> GenerationRow:
    d = degeneration(tokens, eos, budget)
    return GenerationRow(step, pid, " ".join(map(str, tokens)), d.length, budget, eos, logp, d.distinct_1,
                         d.distinct_2, d.repeated_ngram_rate, d.in_loop, d.loop_period)


def test_summary_of_crafted_generations_is_the_hand_computed_one():
    """A loop (8 × token 7, budget 8, no EOS), no loop (1 2 3 4 5, EOS) and EOS at once (no token)."""
    looped, plain, empty = [7] * 8, [1, 2, 3, 4, 5], []
    rows = [_row(looped, False, 8, -1.0), _row(plain, True, 8, -5.0), _row(empty, True, 8, -0.5)]
    assert [(r.in_loop, r.loop_period) for r in rows] == [(True, 1), (False, None), (False, None)]
    assert [r.repeated_4gram for r in rows] == [4 / 5, 0.0, 0.0]  # five 4-grams (7,7,7,7), four are repeats
    got = summarise_generations(rows, [looped, plain, empty])
    # corpus distinct-1: {7, 1, 2, 3, 4, 5} over 8 + 5 tokens; distinct-2: (7,7) and four bigrams over 7 + 4
    assert got == pytest.approx({"distinct_1": 6 / 13, "distinct_2": 5 / 11, "repeated_4gram": (4 / 5) / 3,
                                 "loop_share": 1 / 3, "mean_length": 13 / 3, "eos_share": 2 / 3,
                                 "mean_logp": -6.5 / 3, "n": 3})
    assert summarise_generations([], []) == {}


def test_budget_prompts_and_schedule_are_respected(tiny_fresh, probes, tmp_path):
    """Only the first N prompts, never more than T tokens, only every K-th evaluation (the first included)."""
    lm = tiny_fresh
    tracker = Tracker(lm.model, lm.tokenizer, probes, run=tmp_path / "run", every=1, generation_config=GEN,
                      free_run=FreeRunConfig(prompts=2, max_new_tokens=5, every=2))
    for step in range(5):
        tracker.track(step)
    run = RunDir(tmp_path / "run")
    rows = run.generations()
    assert sorted({r.step for r in rows}) == [0, 2, 4]
    assert {r.prompt_id for r in rows} == set(probes.prompt_ids[:2])
    assert all(r.n_tokens <= 5 and r.budget == 5 for r in rows)
    assert all(r.n_tokens == 5 for r in rows if not r.eos)  # a generation cut by the budget used all of it
    summaries = {s.step: s for s in run.probe_summaries()}
    assert [s for s in summaries if summaries[s].generation] == [0, 2, 4]
    assert summaries[2].generation["n"] == 2 and "generate_seconds" in summaries[2].extra
    assert "generate_seconds" not in summaries[1].extra
    assert json.loads(run.config_path.read_text())["free_run"] == {"prompts": 2, "max_new_tokens": 5, "every": 2}


def test_rows_are_typed_and_logp_is_the_naive_logp_of_the_generated_tokens(tiny_fresh, probes, tmp_path):
    lm = tiny_fresh
    cfg = ScoreConfig(max_prompt_tokens=64)
    tracker = Tracker(lm.model, lm.tokenizer, probes, run=tmp_path / "run", score_config=cfg,
                      initial_sample=False, free_run=FreeRunConfig(prompts=3, max_new_tokens=6))
    summary = tracker.track(0)
    rows = RunDir(tmp_path / "run").generations()
    assert rows == tracker.last_generations and all(isinstance(r, GenerationRow) for r in rows)
    assert [r.prompt_id for r in rows] == probes.prompt_ids[:3]
    prompts = [probes.get(pid, "chosen").prompt for pid in probes.prompt_ids[:3]]
    samples = sample(lm.model, lm.tokenizer, prompts, GenerationConfig(max_new_tokens=6, max_prompt_tokens=64))
    tokens = []
    for r, s in zip(rows, samples):
        ids = list(s.completion_ids[:-1] if s.eos else s.completion_ids)
        tokens.append(ids)
        assert (r.text, r.eos, r.n_tokens) == (s.text, s.eos, len(ids))
        assert r.logp == pytest.approx(naive_logp(lm.model, EncodedPair(s.prompt_ids, s.completion_ids))[0],
                                       abs=1e-4)
        assert r == dataclasses.replace(_row(ids, s.eos, 6, r.logp, 0, r.prompt_id), text=r.text)
    assert summary.generation == pytest.approx(summarise_generations(rows, tokens))
    back = RunDir(tmp_path / "run").probe_summaries()[0]
    assert back.generation == pytest.approx(summary.generation)  # generation/<key> in metrics.jsonl, read back typed
    assert TrackSummary.from_json(back.to_json()) == back


def test_an_evaluation_redone_replaces_its_rows_and_truncation_drops_later_ones(tmp_path):
    run = RunDir.create(tmp_path / "run", {"kind": "test"})
    run.append_generations([_row([1, 2], True, 4, -1.0, step=0, pid="a"), _row([3], True, 4, -1.0, step=0, pid="b")])
    run.append_generations([_row([5, 6], True, 4, -2.0, step=2, pid="a")])
    run.append_generations([_row([5, 6, 7], True, 4, -3.0, step=2, pid="a")])  # step 2 again (a kill, a rerun)
    assert [(r.step, r.prompt_id, r.n_tokens) for r in run.generations()] == [(0, "a", 2), (0, "b", 1), (2, "a", 3)]
    run.truncate_after(0)
    assert [(r.step, r.prompt_id) for r in run.generations()] == [(0, "a"), (0, "b")]


def test_kill_and_resume_does_not_duplicate_generations(tmp_path, monkeypatch, builtin_probes):
    """Killed inside the step-4 evaluation, after its generations were written and before its metrics row, then
    resumed: the same generation rows as an uninterrupted run, none twice, and the every-K schedule goes on."""
    base = dict(model="tiny-random-llama", data="builtin:train", limit=12, batch_size=4, max_length=96,
                max_prompt_tokens=48, initial_sample=False, method="dpo", steps=6, lr=1e-3, eval_every=2,
                checkpoint_every=2, probes=str(builtin_probes), generate_prompts=2, generate_tokens=4,
                generate_every=2)
    full = train(TrainConfig(**base, out=str(tmp_path / "full")), progress=False)

    class Kill(Exception):
        pass

    real_append = RunDir.append_probe_rows

    def append_probe_rows(self, rows):
        rows = list(rows)
        if rows and rows[0]["step"] == 4:
            raise Kill
        return real_append(self, rows)

    cut = TrainConfig(**base, out=str(tmp_path / "cut"))
    monkeypatch.setattr(RunDir, "append_probe_rows", append_probe_rows)
    with pytest.raises(Kill):
        train(cut, progress=False)
    monkeypatch.setattr(RunDir, "append_probe_rows", real_append)
    assert {r.step for r in RunDir(cut.out).generations()} == {0, 4}  # the killed evaluation's rows are there
    resumed = train(cut, resume=True, progress=False)
    a = [(r.step, r.prompt_id, r.n_tokens, r.text) for r in full.run.generations()]
    b = [(r.step, r.prompt_id, r.n_tokens, r.text) for r in resumed.run.generations()]
    first_two = ProbeSet.load(builtin_probes).prompt_ids[:2]
    assert [x[:2] for x in a] == [(s, pid) for s in (0, 4) for pid in first_two]  # evaluations 0, 2 of 0, 2, 4, 6
    assert b == a
    assert [s.step for s in resumed.run.probe_summaries() if s.generation] == [0, 4]
    assert json.loads(Path(cut.out, "config.json").read_text())["generate_prompts"] == 2


def test_train_config_refuses_a_bad_budget_and_writes_nothing_when_off(tmp_path):
    with pytest.raises(LldynError, match="generate_tokens"):
        TrainConfig(probes="p.jsonl", generate_prompts=2, generate_tokens=0)
    with pytest.raises(LldynError, match="generate_every"):
        TrainConfig(probes="p.jsonl", generate_prompts=2, generate_every=0)
    with pytest.raises(LldynError, match="generate_prompts"):
        TrainConfig(generate_prompts=2)  # no probes: no evaluations to generate at
    from lldyn.train.config import run_config

    assert "generate_prompts" not in run_config(TrainConfig())  # runs without it keep their config.json
    assert run_config(TrainConfig(probes="p.jsonl", generate_prompts=2))["generate_tokens"] == 48


def _run_with_generations(path: Path, texts: dict[int, str], loops: dict[int, float]) -> RunDir:
    """A hand-written DPO run: evaluations at steps 0 and 2 with generation summaries and one generation each."""
    run = RunDir.create(path, {"method": "dpo", "lr": 1e-3})
    run.append_probe_rows([{"step": s, "prompt_id": "p", "family": "chosen", "logp": -1.0 - s, "n_tokens": 3}
                           for s in (0, 2)])
    for step in (0, 2):
        if step:
            for k in (1, 2):
                run.log(TrainRow(k, "dpo", k, 1.0, 1e-3, 0.0, 0.0))
        gen = {"distinct_1": 0.9, "distinct_2": 0.8 - 0.3 * step, "repeated_4gram": 0.1 + 0.2 * step,
               "loop_share": loops[step], "mean_length": 20 + 10 * step, "eos_share": 1 - loops[step],
               "mean_logp": -10.0, "n": 4}
        run.log(TrackSummary(step, {"chosen": -1.0 - step}, {"chosen": -step}, {"top1_chosen": 0.5}, {}, gen))
        run.append_generations([GenerationRow(step, "p", texts[step], 3, 4, False, -2.0, 1.0, 1.0, 0.0, False, None)])
    return run


def test_report_shows_curves_and_first_vs_last_generation_escaped(tmp_path):
    run = _run_with_generations(tmp_path / "run", {0: "a fine answer", 2: "<script>alert(1)</script> & again"},
                                {0: 0.0, 2: 0.5})
    page = write_report([run.path], tmp_path / "out").read_text()
    assert "Greedy generations over training (the repeater)" in page
    assert (tmp_path / "out" / "figures" / "repeater.png").is_file()
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; again" in page
    assert "a fine answer" in page and "step 0" in page and "step 2" in page


def test_what_moved_says_when_repetition_rose_and_only_then(tmp_path):
    rose = _run_with_generations(tmp_path / "rose", {0: "x", 2: "y"}, {0: 0.0, 2: 0.5})
    lines = what_moved([rose.path])
    assert len(lines) == 2 and lines[0].startswith("DPO (steps 0→2)")
    assert lines[1] == ("DPO (steps 0→2): greedy generations more repetitive — repeated 4-grams 0.10→0.50, in a loop "
                        "0/4→2/4, distinct-2 0.80→0.20, mean length 20→40 tokens, EOS reached 4/4→2/4 "
                        "(the repeater, paper Sec. 4.2)")
    assert RepetitionChange("dpo", 0, 2, {"loop_share": 0.25, "repeated_4gram": 0.3},
                            {"loop_share": 0.25, "repeated_4gram": 0.34}).rose() is False
    flat = RunDir.create(tmp_path / "flat", {"method": "dpo"})
    for step in (0, 2):
        for k in range(1, step + 1):
            flat.log(TrainRow(k, "dpo", k, 1.0, 1e-3, 0.0, 0.0))
        gen = {"distinct_2": 0.8, "repeated_4gram": 0.1, "loop_share": 0.25, "mean_length": 30.0, "eos_share": 0.5,
               "n": 4}
        flat.log(TrackSummary(step, {"chosen": -1.0}, {}, {}, {}, gen))
    assert len(what_moved([flat.path])) == 1  # no line when repetition did not rise
