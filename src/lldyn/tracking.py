"""Live tracking: log π of every probe at step 0 and every N steps, with the one log-prob engine.

Each evaluation makes **one** :func:`lldyn.scoring.score` call for all probes (so the prompt forward
pass is shared by a prompt's ~12 responses) and derives the evaluation-time families from it:

* ``argmax`` — y*, the teacher-forced argmax along y+ (paper Sec. 4, "y*"): log π(y*) is
  Σ_t max_v log π(v | x, y+_<t), which the engine returns with y+'s own score, so it costs nothing;
* ``initial_sample`` — the starting model's greedy response, generated once when tracking starts
  (``initial_samples.jsonl`` in the run directory) and scored like any other probe;
* ``sample_correct`` / ``sample_incorrect`` (GRPO) — the starting policy's own samples of the probe prompts,
  split by the reward (:mod:`lldyn.policy_samples`; several per prompt, told apart by the row's ``sample``
  index); the exact sampled tokens are scored in the same engine call;
* ``greedy`` (with ``greedy``, a generation config) — the current model's free-running greedy answer to
  each probe prompt, generated at every evaluation and scored in the same engine call (its ``text`` is in
  the row; its log π is of the current answer, so its change compares different answers).

With gold answers (``gold``), the summary's signals also hold ``accuracy_argmax``: the share of probe
prompts whose y* text states the gold answer (:func:`lldyn.rewards.states_gold_answer`). y* is the
teacher-forced argmax along y+ (free of any generation), so it is the answer the model would put at
y+'s positions; it misses an answer that y+ opens with (y* predicts its first token before seeing it).
With ``greedy`` they also hold ``accuracy_greedy``: the same share for the greedy answers. With policy
samples they hold ``logp_sample_correct`` and ``logp_sample_incorrect`` (family means);
``track(step, signals)`` adds the caller's own (GRPO: ``reward``, the mean training reward since the
previous evaluation), before the callbacks see the summary.

Per evaluation the tracker writes one row per (step, prompt_id, family[, sample]) to the run's probe table
(``step, prompt_id, family, logp, n_tokens, mean_logp, top1, entropy``; argmax rows also carry
the y* ``text``) and one :class:`~lldyn.rundir.TrackSummary` to its metrics: per-family means, mean
changes since the first evaluation, the squeeze signals and the keys returned by callbacks.

The *squeeze signals* (paper Sec. 3.3 / 4.2: a large negative gradient on an unlikely y− squeezes
mass into the argmax) are the mean top-1 probability and entropy along the y+ and y− positions and
log π of y+, y−, y*. A tracker callback ``fn(summary, history) -> dict | None`` sees every summary
(the squeeze alarm plugs in here); the keys it returns are merged into that step's metrics row.

Under ``accelerate`` / ``torchrun`` every rank scores the probes of its share of the prompts
(:func:`lldyn.distributed.equal_shares`) and :meth:`lldyn.distributed.Processes.gather` brings all rows to
every rank; only rank 0 writes. Of a sharded (FSDP2) model every rank runs the same number of forward passes
(:func:`lldyn.distributed.score_equal_forwards`; the initial samples are generated with dummy prompts on the
short ranks, dropped, and ``synced_gpus``), or the ranks' all-gathers would wait on each other forever.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from lldyn import __version__
from lldyn.distributed import Processes, equal_shares, is_sharded, refuse_zero3, score_encoded_equal_forwards
from lldyn.errors import LldynError
from lldyn.generation import GenerationConfig, generate
from lldyn.policy_samples import POLICY_SAMPLE_FAMILIES
from lldyn.probes import FAMILIES, Probe, ProbeSet
from lldyn.reference_answer import Reference
from lldyn.rewards import states_gold_answer
from lldyn.rundir import PolicySample, RunDir, TrackSummary
from lldyn.scoring import EncodedPair, Encoder, ScoreConfig, argmax_text

SIGNALS = ("logp_chosen", "logp_rejected", "logp_argmax", "top1_chosen", "top1_rejected", "entropy_chosen",
           "entropy_rejected")


TrackerCallback = Callable[[TrackSummary, list[TrackSummary]], "dict[str, Any] | None"]


def _mean(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


class Tracker:
    """Evaluates ``probes`` with ``model`` at step 0 and every ``every`` steps.

    Args:
        model, tokenizer: read at every evaluation, so training may update ``model`` in place or
            assign ``tracker.model`` a new object.
        probes: a :class:`~lldyn.probes.ProbeSet` or a path to ``probes.jsonl``.
        run: a :class:`~lldyn.rundir.RunDir` (or a directory path) to write to; None keeps results in
            memory only (``tracker.history``, ``tracker.last_rows``).
        every: evaluation period in optimizer steps.
        score_config: how the engine tokenises and scores.
        callbacks: ``fn(summary, history) -> dict | None`` (see module docstring).
        initial_sample: generate the ``initial_sample`` family when tracking starts.
        generation_config: for the initial samples (default: greedy, 64 new tokens).
        processes: distributed evaluation — this rank scores prompts ``prompt_ids[rank::world]`` and
            :meth:`~lldyn.distributed.Processes.gather` returns every rank's rows.
        progress: show a progress bar while scoring.
        policy_samples: the starting policy's samples of the probe prompts (``sample_correct`` /
            ``sample_incorrect``, :func:`lldyn.policy_samples.policy_samples`), scored at every evaluation.
        gold: ``prompt_id → Reference`` (gold answers) for the ``accuracy_argmax`` / ``accuracy_greedy`` signals.
        greedy: a :class:`~lldyn.generation.GenerationConfig` for the ``greedy`` family (always greedy: its
            ``do_sample`` is ignored); None = no greedy answers.
    """

    def __init__(self, model: Any, tokenizer: Any, probes: ProbeSet | str | Path, run: RunDir | str | Path | None = None,
                 every: int = 20, score_config: ScoreConfig = ScoreConfig(),
                 callbacks: Sequence[TrackerCallback] = (), *, initial_sample: bool = True,
                 generation_config: Any = None, processes: Processes = Processes(), progress: bool = False,
                 policy_samples: Sequence[PolicySample] = (), gold: Mapping[str, Reference] | None = None,
                 greedy: GenerationConfig | None = None) -> None:
        if every < 1:
            raise LldynError(f"every must be >= 1, got {every}", field="every", expected="a positive number of steps")
        refuse_zero3(model)
        self.model = model
        self.tokenizer = tokenizer
        self.every = int(every)
        self.score_config = score_config
        self.callbacks = list(callbacks)
        self.processes = processes
        self.progress = progress
        self.want_initial_sample = initial_sample
        self.generation_config = generation_config
        self.probes = ProbeSet.coerce(probes)
        self.policy_samples = list(policy_samples)
        self.gold = dict(gold or {})
        self.greedy = None if greedy is None else dataclasses.replace(greedy, do_sample=False)
        if is_sharded(model) and (self.greedy is not None or self.policy_samples):
            # the greedy answers' generate calls are not yet made equal across ranks (FSDP2 would hang)
            raise LldynError("greedy answers and policy samples are not tracked on a sharded model", field="fsdp",
                             expected="no --fsdp with --probe-greedy / --probe-samples (GRPO runs in one process)")
        self.run = RunDir(run) if isinstance(run, (str, Path)) else run
        self.history: list[TrackSummary] = []
        self.last_rows: list[dict[str, Any]] = []
        self.last_seconds = 0.0
        # baseline log π of each (prompt_id, family, sample) at the first evaluation (sample -1: not a policy sample)
        self._base: dict[tuple[str, str, int], float] = {}
        order = self.probes.prompt_ids
        unknown = sorted({s.prompt_id for s in self.policy_samples} - set(order))
        if unknown:
            raise LldynError(f"policy samples of prompt {unknown[0]!r}, which the probe set does not have",
                             field="policy_samples", expected="samples of the probe set's own prompts")
        self._prompt_rank = {pid: i for i, pid in enumerate(order)}
        self._family_rank = {f: i for i, f in enumerate(FAMILIES + ("greedy",) + POLICY_SAMPLE_FAMILIES)}
        self.shared_prompt_ids = equal_shares(order, processes.rank, processes.world)  # None: a dummy
        self.local_prompt_ids = [pid for pid in self.shared_prompt_ids if pid is not None]
        if self.run is not None:
            self._attach_run()

    # ------------------------------------------------------------------ run directory
    @property
    def is_writer(self) -> bool:
        return self.processes.is_main and self.run is not None

    def _attach_run(self) -> None:
        """Refuse a run directory that tracks another probe set; pick up history when resuming."""
        assert self.run is not None
        static = self.probes.without_families(["initial_sample"])
        if self.run.probes_path.is_file():
            existing = ProbeSet.load(self.run.probes_path).without_families(["initial_sample"])
            if existing.fingerprint() != static.fingerprint():
                raise LldynError("the run directory tracks a different probe set", file=str(self.run.probes_path),
                                 expected="the same probes as the run being resumed, or a new run directory")
        elif self.processes.is_main:
            self.run.path.mkdir(parents=True, exist_ok=True)
            static.save(self.run.probes_path)
        if self.processes.is_main:
            # a directory handed over as a bare path still describes itself (lldyn train and the TRL callback
            # write their own, fuller config.json first)
            self.run.describe({"kind": "tracker", "lldyn_version": __version__, "every": self.every,
                               "initial_sample": self.want_initial_sample, "probes_sha256": static.fingerprint(),
                               "score": dataclasses.asdict(self.score_config)})
        samples = self.run.initial_samples()
        if samples is not None and not any(p.family == "initial_sample" for p in self.probes):
            self.probes = self.probes.with_probes(_initial_sample(r) for r in samples)
        self.history = self.run.probe_summaries()
        if self.history:
            first = min(s.step for s in self.history)
            for r in self.run.iter_probe_table():
                if r.get("step") == first:
                    self._base[_key(r)] = r["logp"]

    def _ensure_initial_samples(self) -> None:
        if not self.want_initial_sample or any(p.family == "initial_sample" for p in self.probes):
            return
        cfg = self.generation_config or GenerationConfig(max_new_tokens=64, template=self.score_config.template)
        chosen = {p.prompt_id: p for p in self.probes if p.family == "chosen"}
        local = [chosen[pid] for pid in self.local_prompt_ids]
        sharded = is_sharded(self.model)
        if sharded:  # as many prompts on every rank (a short rank's dummy is a copy of the first, dropped)
            first = chosen[self.probes.prompt_ids[0]]
            prompts = [chosen[pid].prompt if pid is not None else first.prompt for pid in self.shared_prompt_ids]
            cfg = dataclasses.replace(cfg, synced_gpus=True)
        else:
            prompts = [p.prompt for p in local]
        texts = generate(self.model, self.tokenizer, prompts, cfg, progress=self.progress) if prompts else []
        if sharded:
            self.model.reshard()
        mine = [Probe(p.prompt_id, "initial_sample", p.prompt, t, (p.prompt_id,),
                      f"greedy(max_new_tokens={cfg.max_new_tokens})").to_json() for p, t in zip(local, texts)]
        rows = [r for part in self.processes.gather(mine) for r in part]
        rows.sort(key=lambda r: self._prompt_rank[r["prompt_id"]])
        if self.is_writer:
            self.run.write_initial_samples(rows)  # type: ignore[union-attr]
        self.probes = self.probes.with_probes(_initial_sample(r) for r in rows)

    def rewind(self, step: int) -> None:
        """Forget evaluations after ``step`` (resuming from a checkpoint at ``step``; pair it with
        ``RunDir.truncate_after(step)``). Rewinding before the first evaluation also forgets the step-0
        baseline, so the next evaluation becomes the new baseline."""
        self.history = [s for s in self.history if s.step <= step]
        if not self.history:
            self._base = {}

    # ------------------------------------------------------------------ evaluation
    def should_track(self, step: int) -> bool:
        return step % self.every == 0 and not any(s.step == step for s in self.history)

    def maybe_track(self, step: int) -> TrackSummary | None:
        """Track at step 0 and every ``every`` steps (a step already tracked, e.g. before a resume, is skipped)."""
        return self.track(step) if self.should_track(step) else None

    def evaluate(self) -> list[dict[str, Any]]:
        """This rank's probe rows (no ``step``): one engine call for all its probes, policy samples and greedy
        answers, plus the argmax rows."""
        local_ids = set(self.local_prompt_ids)
        probes = [p for p in self.probes if p.prompt_id in local_ids]
        samples = [s for s in self.policy_samples if s.prompt_id in local_ids]
        if not probes and not samples and not is_sharded(self.model):
            return []
        chosen = [p for p in probes if p.family == "chosen"]
        answers = generate(self.model, self.tokenizer, [p.prompt for p in chosen], self.greedy) \
            if self.greedy is not None and chosen else []
        encoder = Encoder(self.tokenizer, self.score_config)
        encoded = [encoder.pair(p.prompt, p.response) for p in probes]
        encoded += [EncodedPair(s.prompt_ids, s.completion_ids) for s in samples]  # the exact tokens sampled
        encoded += [encoder.pair(p.prompt, text) for p, text in zip(chosen, answers)]
        results = score_encoded_equal_forwards(self.processes, self.model, encoded, self.tokenizer.pad_token_id,
                                               self.score_config, progress=self.progress)
        rows = []
        for p, res in zip(probes, results):
            rows.append(_row(p.prompt_id, p.family, res.logp, res.n_tokens, res.mean_top1_prob, res.mean_entropy))
            if p.family == "chosen":  # y* along y+: same positions, its log-prob is Σ top-1 log-probs
                row = _row(p.prompt_id, "argmax", res.argmax_logp, res.n_tokens, res.mean_top1_prob, res.mean_entropy)
                row["text"] = argmax_text(self.tokenizer, res)
                rows.append(row)
        for s, res in zip(samples, results[len(probes):]):
            row = _row(s.prompt_id, s.family, res.logp, res.n_tokens, res.mean_top1_prob, res.mean_entropy)
            row["sample"] = s.sample
            rows.append(row)
        for p, text, res in zip(chosen, answers, results[len(probes) + len(samples):]):
            row = _row(p.prompt_id, "greedy", res.logp, res.n_tokens, res.mean_top1_prob, res.mean_entropy)
            row["text"] = text
            rows.append(row)
        return rows

    def track(self, step: int, signals: Mapping[str, float] | None = None) -> TrackSummary:
        """Evaluate all probes now, write the rows and the summary, run the callbacks. ``signals``: the caller's
        own (GRPO's ``reward``), added to the summary's before the callbacks see it."""
        start = time.perf_counter()
        self._ensure_initial_samples()
        rows = [r for part in self.processes.gather(self.evaluate()) for r in part]
        rows.sort(key=lambda r: (self._prompt_rank[r["prompt_id"]], self._family_rank[r["family"]],
                                 r.get("sample", -1)))
        for r in rows:
            r["step"] = step
        if not self._base:
            self._base = {_key(r): r["logp"] for r in rows}
        summary = self._summarise(step, rows)
        if signals:
            summary = dataclasses.replace(summary, signals={**summary.signals, **signals})
        extra: dict[str, Any] = {}
        for fn in self.callbacks:
            out = fn(summary, self.history + [summary])
            if out:
                extra.update(out)
        self.last_seconds = time.perf_counter() - start
        summary = TrackSummary(summary.step, summary.family_mean, summary.family_delta, summary.signals,
                               {**extra, "probe_seconds": self.last_seconds})
        self.history.append(summary)
        self.last_rows = rows
        if self.is_writer:
            self.run.append_probe_rows(rows)  # type: ignore[union-attr]
            self.run.log(summary)  # type: ignore[union-attr]
        return summary

    def _summarise(self, step: int, rows: list[dict[str, Any]]) -> TrackSummary:
        by_family: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_family.setdefault(r["family"], []).append(r)
        family_mean = {f: _mean(r["logp"] for r in rs) for f, rs in by_family.items()}
        family_delta = {f: _mean(r["logp"] - self._base[_key(r)] for r in rs if _key(r) in self._base)
                        for f, rs in by_family.items()}
        fam = lambda f, key: _mean(r[key] for r in by_family.get(f, []))  # noqa: E731
        signals = {"logp_chosen": fam("chosen", "logp"), "logp_rejected": fam("rejected", "logp"),
                   "logp_argmax": fam("argmax", "logp"), "top1_chosen": fam("chosen", "top1"),
                   "top1_rejected": fam("rejected", "top1"), "entropy_chosen": fam("chosen", "entropy"),
                   "entropy_rejected": fam("rejected", "entropy")}
        if self.policy_samples:
            signals.update({f"logp_{f}": family_mean.get(f, float("nan")) for f in POLICY_SAMPLE_FAMILIES})
        if self.gold:
            for family in ("argmax", "greedy"):
                if family in by_family:
                    signals[f"accuracy_{family}"] = _mean(float(self._states_gold(r)) for r in by_family[family]
                                                          if r["prompt_id"] in self.gold)
        return TrackSummary(step, family_mean, family_delta, signals)

    def _states_gold(self, row: dict[str, Any]) -> bool:
        """Whether an argmax or greedy row's text states its prompt's gold answer."""
        ref = self.gold[row["prompt_id"]]
        probe = self.probes.get(row["prompt_id"], "chosen")
        return states_gold_answer(probe.prompt if probe else "", row.get("text", ""), ref.answer, ref.aliases)


def _initial_sample(row: dict[str, Any]) -> Probe:
    return Probe(str(row["prompt_id"]), "initial_sample", row["prompt"], row["response"],
                 tuple(row.get("source_ids", ())), row.get("method", "initial_sample"))


def _key(row: Mapping[str, Any]) -> tuple[str, str, int]:
    """A probe-table row's identity across evaluations: (prompt_id, family, sample index or -1)."""
    return str(row["prompt_id"]), row["family"], int(row.get("sample", -1) if row.get("sample") is not None else -1)


def _row(prompt_id: str, family: str, logp: float, n_tokens: int, top1: float, entropy: float) -> dict[str, Any]:
    return {"prompt_id": prompt_id, "family": family, "logp": logp, "n_tokens": n_tokens,
            "mean_logp": logp / max(n_tokens, 1), "top1": top1, "entropy": entropy}
