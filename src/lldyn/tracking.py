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

**The repeater** (paper Sec. 4.2: long off-policy DPO makes greedy generations repeat themselves, as the squeeze
piles mass onto the argmax path). y* above is teacher-forced along y+, never what the model says. With a
:class:`FreeRunConfig` budget the tracker also lets the model speak: every ``every``-th evaluation (the first
one included) the first ``prompts`` probe prompts (in the probe set's order, so the same prompts at every
evaluation and in every run of the probe set) get a free-running greedy generation of at most
``max_new_tokens`` tokens; each is scored by the one engine (log π of exactly the generated tokens under the
current model) and measured by :mod:`lldyn.degeneration`. One :class:`~lldyn.rundir.GenerationRow` per prompt
goes to ``generations.jsonl`` and the evaluation's summary (:data:`GENERATION_KEYS`) into its metrics row.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from lldyn import __version__
from lldyn.config import check
from lldyn.degeneration import corpus_distinct_n, degeneration
from lldyn.distributed import Processes, equal_shares, is_sharded, refuse_zero3, score_encoded_equal_forwards
from lldyn.errors import LldynError
from lldyn.generation import GenerationConfig, generate, sample
from lldyn.policy_samples import POLICY_SAMPLE_FAMILIES
from lldyn.probes import FAMILIES, Probe, ProbeSet
from lldyn.reference_answer import Reference
from lldyn.rewards import states_gold_answer
from lldyn.rundir import GenerationRow, PolicySample, RunDir, TrackSummary
from lldyn.scoring import EncodedPair, Encoder, ScoreConfig, argmax_text, score_encoded

SIGNALS = ("logp_chosen", "logp_rejected", "logp_argmax", "top1_chosen", "top1_rejected", "entropy_chosen",
           "entropy_rejected")


TrackerCallback = Callable[[TrackSummary, list[TrackSummary]], "dict[str, Any] | None"]

# the summary of one evaluation's free-running generations (TrackSummary.generation, generation/<key> in metrics)
GENERATION_KEYS = ("distinct_1", "distinct_2", "repeated_4gram", "loop_share", "mean_length", "eos_share",
                   "mean_logp", "n")


@dataclass(frozen=True)
class FreeRunConfig:
    """The repeater's budget: free-running greedy generations at evaluations (module docstring).

    prompts: how many probe prompts (the first ones in the probe set's order); 0 = off.
    max_new_tokens: the generation budget T; a generation never has more tokens (EOS not counted).
    every: generate at every ``every``-th evaluation (evaluation 0, at step 0, included).
    """

    prompts: int = 0
    max_new_tokens: int = 48
    every: int = 1

    def __post_init__(self) -> None:
        check(self.prompts >= 0, "generate_prompts", f"must be >= 0, got {self.prompts}", "0 (off) or a number of prompts")
        check(self.max_new_tokens > 0, "generate_tokens", f"must be > 0, got {self.max_new_tokens}",
              "a positive number of tokens")
        check(self.every >= 1, "generate_every", f"must be >= 1, got {self.every}", "a positive number of evaluations")

    @property
    def enabled(self) -> bool:
        return self.prompts > 0


def summarise_generations(rows: Sequence[GenerationRow], tokens: Sequence[Sequence[int]]) -> dict[str, float]:
    """One evaluation's summary (:data:`GENERATION_KEYS`): corpus distinct-1/2 over all generations' token ids
    (Li et al. 2016, n-grams never cross a generation), and over generations the mean repeated-4-gram rate,
    the share caught in a loop, the mean length in tokens, the share that reached EOS and the mean log π.

    rows: the generations of the evaluation; tokens: their token ids without EOS, in the same order.
    """
    if not rows:
        return {}
    n = len(rows)
    return {"distinct_1": corpus_distinct_n(tokens, 1), "distinct_2": corpus_distinct_n(tokens, 2),
            "repeated_4gram": sum(r.repeated_4gram for r in rows) / n,
            "loop_share": sum(r.in_loop for r in rows) / n, "mean_length": sum(r.n_tokens for r in rows) / n,
            "eos_share": sum(r.eos for r in rows) / n, "mean_logp": sum(r.logp for r in rows) / n, "n": n}


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
        free_run: the repeater's budget (:class:`FreeRunConfig`); None or 0 prompts = no free-running generations.
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
                 free_run: FreeRunConfig | None = None,
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
        self.free_run = free_run if free_run is not None and free_run.enabled else None
        self.probes = ProbeSet.coerce(probes)
        self.policy_samples = list(policy_samples)
        self.gold = dict(gold or {})
        self.greedy = None if greedy is None else dataclasses.replace(greedy, do_sample=False)
        if is_sharded(model) and (self.greedy is not None or self.policy_samples):
            # the greedy answers' generate calls are not yet made equal across ranks (FSDP2 would hang)
            raise LldynError("greedy answers and policy samples are not tracked on a sharded model", field="fsdp",
                             expected="no --fsdp with --probe-greedy / --probe-samples (GRPO runs in one process)")
        if is_sharded(model) and self.free_run is not None:
            # one rank's share of the generation prompts may be larger than another's: unequal generate calls
            raise LldynError("free-running generations are not made on a sharded model", field="fsdp",
                             expected="no --fsdp with --generate-prompts (run the repeater in one process)")
        self.run = RunDir(run) if isinstance(run, (str, Path)) else run
        self.history: list[TrackSummary] = []
        self.last_rows: list[dict[str, Any]] = []
        self.last_generations: list[GenerationRow] = []
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
            described = {"kind": "tracker", "lldyn_version": __version__, "every": self.every,
                         "initial_sample": self.want_initial_sample, "probes_sha256": static.fingerprint(),
                         "score": dataclasses.asdict(self.score_config)}
            if self.free_run is not None:
                described["free_run"] = dataclasses.asdict(self.free_run)
            self.run.describe(described)
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

    # ------------------------------------------------------------------ the repeater
    @property
    def generation_prompt_ids(self) -> list[str]:
        """The probe prompts that get free-running generations: the first ``free_run.prompts`` in the probe
        set's order (none without a budget)."""
        if self.free_run is None:
            return []
        with_chosen = {p.prompt_id for p in self.probes if p.family == "chosen"}
        return [pid for pid in self.probes.prompt_ids if pid in with_chosen][:self.free_run.prompts]

    def should_generate(self) -> bool:
        """Whether the next evaluation generates: every ``free_run.every``-th, counting from the first."""
        return self.free_run is not None and len(self.history) % self.free_run.every == 0

    def free_run_generations(self, step: int) -> list[dict[str, Any]]:
        """This rank's free-running generations: ``{"row": GenerationRow JSON, "tokens": ids without EOS}`` for
        its share of :attr:`generation_prompt_ids`; greedy, scored by the engine on exactly the generated tokens
        (a cut generation has no EOS, which the text path would append)."""
        assert self.free_run is not None
        budget = self.free_run.max_new_tokens
        local = set(self.local_prompt_ids)
        chosen = {p.prompt_id: p for p in self.probes if p.family == "chosen"}
        ids = [pid for pid in self.generation_prompt_ids if pid in local]
        if not ids:
            return []
        cfg = GenerationConfig(max_new_tokens=budget, template=self.score_config.template,
                               max_prompt_tokens=self.score_config.max_prompt_tokens or GenerationConfig.max_prompt_tokens)
        samples = sample(self.model, self.tokenizer, [chosen[pid].prompt for pid in ids], cfg)
        scored = score_encoded(self.model, [EncodedPair(s.prompt_ids, s.completion_ids) for s in samples],
                               self.tokenizer.pad_token_id, self.score_config)
        out = []
        for pid, s, res in zip(ids, samples, scored):
            tokens = list(s.completion_ids[:-1] if s.eos else s.completion_ids)
            d = degeneration(tokens, s.eos, budget)
            row = GenerationRow(step, pid, s.text, d.length, budget, d.eos_reached, res.logp, d.distinct_1,
                                d.distinct_2, d.repeated_ngram_rate, d.in_loop, d.loop_period)
            out.append({"row": row.to_json(), "tokens": tokens})
        return out

    def track(self, step: int, signals: Mapping[str, float] | None = None) -> TrackSummary:
        """Evaluate all probes now (and, when due, the free-running generations), write the rows and the
        summary, run the callbacks. ``signals``: the caller's own (GRPO's ``reward``), added to the summary's
        before the callbacks see it."""
        start = time.perf_counter()
        self._ensure_initial_samples()
        generated: list[dict[str, Any]] = []
        generate_seconds = 0.0
        if self.should_generate():
            t0 = time.perf_counter()
            generated = [g for part in self.processes.gather(self.free_run_generations(step)) for g in part]
            order = {pid: i for i, pid in enumerate(self.generation_prompt_ids)}
            generated.sort(key=lambda g: order[g["row"]["prompt_id"]])
            generate_seconds = time.perf_counter() - t0
        generation_rows = [GenerationRow.from_json(g["row"]) for g in generated]
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
        generation = summarise_generations(generation_rows, [g["tokens"] for g in generated])
        summary = TrackSummary(summary.step, summary.family_mean, summary.family_delta, summary.signals,
                               {**extra, "probe_seconds": self.last_seconds,
                                **({"generate_seconds": generate_seconds} if generated else {})}, generation)
        self.history.append(summary)
        self.last_rows = rows
        self.last_generations = generation_rows
        if self.is_writer:
            if generation_rows:
                self.run.append_generations(generation_rows)  # type: ignore[union-attr]
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
