"""The training loop: batch → loss → step → track, one phase after another (:func:`train`).

Every optimizer step: a :class:`~lldyn.rundir.TrainRow` in ``metrics.jsonl``, the decomposition hook
when due, the tracker (probes every ``eval_every`` steps), a checkpoint every ``checkpoint_every`` steps
and at the end of each phase. ``resume=True`` continues from the latest checkpoint and gives the same
numbers as an uninterrupted run on the CPU (data order is a pure function of seed, phase and epoch;
RNG, optimizer and scheduler states are restored; rows logged after the checkpoint are dropped).

Under ``accelerate launch --num_processes W`` the same loop does data parallelism
(:class:`lldyn.distributed.Processes`): every rank holds the whole model and takes rows ``rank::W`` of
each micro-batch (``batch_size`` stays the global micro-batch), gradients and logged statistics are
averaged over ranks, so the run gives the numbers of a one-process run; rank 0 alone writes.

With ``fsdp`` (``torchrun --nproc_per_node W -m lldyn.cli train --fsdp ...``) the model is sharded with FSDP2
(:func:`lldyn.distributed.shard_model`): each rank still takes rows ``rank::W`` and FSDP2 averages the
gradients while reducing them; every forward pass of the engine runs through the root
(:func:`lldyn.distributed.root_call`); probes and reference log-probs are scored with as many forward
passes on every rank; checkpoints are gathered whole (:func:`lldyn.checkpoint.gather_state`) and resume
on as many processes.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from lldyn.checkpoint import (check_resume_processes, gather_state, latest_checkpoint, load_checkpoint,
                              save_checkpoint)
from lldyn.config import check
from lldyn.distributed import Processes, is_sharded, root_call, shard_model
from lldyn.errors import LldynError
from lldyn.losses import PREFERENCE_LOSSES, UpdateTerm
from lldyn.models import check_model_name
from lldyn.report_to import check_report_to, open_sink
from lldyn.rundir import AlarmRow, RunDir, StoppedRow, TrackSummary, TrainRow
from lldyn.runs import is_run_dir, load_start_model
from lldyn.scoring import Encoder
from lldyn.train.batches import check_batch, encode_phase_data, load_training_data, micro_batch
from lldyn.train.config import RESUME_FREE, Phase, TrainConfig, phase_length, phases, run_config
from lldyn.train.grpo import Generation, encode_prompts, load_grpo_prompts, sample_generation, with_reference
from lldyn.train.on_policy import on_policy_examples
from lldyn.train.optim import make_optimizer, make_scheduler
from lldyn.train.reference import load_or_compute_reference, reference_logps, reference_model
from lldyn.train.steps import StepOutput, grpo_step, pair_step, sft_step


@dataclass
class TrainResult:
    run: RunDir
    model: Any
    tokenizer: Any
    steps: int
    last_summary: TrackSummary | None = None


@dataclass
class Job:
    """Everything one training run holds while it runs (built by :func:`start_job`)."""

    cfg: TrainConfig
    procs: Processes
    run: RunDir
    model: Any
    tokenizer: Any
    params: list[torch.nn.Parameter]
    encoder: Encoder
    pairs: list[Any]
    plan: list[Phase]
    phase_data: list[list[Any]]  # per phase: its Examples, or a GRPO phase's prompts
    source: Any = None
    reward: Any = None
    first_generation: Generation | None = None
    probe_prompts: list[Any] | None = None  # GRPO: the probe prompts' data rows (gold answers), None without probes
    policy_samples: list[Any] | None = None  # GRPO: the starting policy's samples of the probe prompts
    tracker: Any = None
    decomposer: Any = None
    sink: Any = None  # --report-to: lldyn.report_to's TensorBoard / W&B sink, a listener of run
    checkpoint: Path | None = None
    resume_phase: int = 0
    resume_step: int = 0
    global_step: int = 0
    last_summary: TrackSummary | None = None
    progress: bool = True


def train(cfg: TrainConfig, resume: bool = False, decomposer: Any = None,
          callbacks: Sequence[Callable] = (), progress: bool = True) -> TrainResult:
    """Run ``cfg`` into the run directory ``cfg.out`` (see the module docstring)."""
    job = start_job(cfg, resume, decomposer, callbacks, progress)
    for pi, phase in enumerate(job.plan):
        if pi < job.resume_phase:
            continue
        total = phase_length(phase, len(job.phase_data[pi]), cfg)
        optimizer = make_optimizer(job.params, cfg, phase.lr)
        scheduler = make_scheduler(optimizer, cfg, total)
        step = resume_point(job, pi, total, optimizer, scheduler)
        if step is None:  # the checkpoint closed this phase
            continue
        ref_model, ref_values = phase_reference(job, pi, phase, resumed=step > 0)
        if job.global_step == 0:
            track(job, 0)
        current, round_start, round_info = job.phase_data[pi], 0, {}
        bar = progress_bar(job, total, step, phase.name)
        job.model.train()
        while step < total:
            t0 = time.perf_counter()
            if cfg.on_policy and (step % cfg.on_policy_refresh == 0 or current is job.phase_data[pi]):
                current, round_start, round_info = on_policy_examples(
                    job.run, job.model, job.tokenizer, job.pairs, job.source, cfg, phase, job.encoder, step,
                    job.global_step)
                ref_values = reference_logps(ref_model, job.tokenizer, current, cfg)
                job.model.train()
            if phase.kind == "grpo":
                current = grpo_generation(job, pi, step, total, ref_model)
                round_start, round_info = step, current.stats
            optimizer.zero_grad(set_to_none=True)
            stats, terms = forward_backward(job, pi, phase, current, step - round_start, ref_values, optimizer,
                                            scheduler, step)
            grad_norm = clip_gradients(job, optimizer, scheduler, pi, step)
            lr = optimizer.param_groups[0]["lr"]  # this step's, before the scheduler moves it on
            stats.update(optimizer_step(job, optimizer, terms))
            scheduler.step()
            step += 1
            job.global_step += 1
            loss = stats.pop("loss")
            log(job, TrainRow(job.global_step, phase.name, step, loss, lr, grad_norm, time.perf_counter() - t0,
                              {**stats, **round_info}))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
            if job.tracker is not None and job.tracker.should_track(job.global_step):
                track(job, job.global_step)
            if step == total or (cfg.checkpoint_every and job.global_step % cfg.checkpoint_every == 0):
                checkpoint(job, optimizer, scheduler, pi, step, phase.name)
        if bar is not None:
            bar.close()
        track_phase_end(job)
        del ref_model
    job.procs.wait()  # no rank leaves (and tears down the process group) while rank 0 still writes
    if job.sink is not None:
        job.sink.close()
    last = job.last_summary or (job.tracker.history[-1] if job.tracker and job.tracker.history else None)
    return TrainResult(job.run, job.model, job.tokenizer, job.global_step, last)


# --------------------------------------------------------------------------- setting up


def launched_processes(cfg: TrainConfig, decomposer: Any = None) -> Processes:
    """The processes ``accelerate launch`` (or ``torchrun``) started; one otherwise. What a multi-process run
    refuses is refused here, before any rank waits on another or anything is written."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    check(not cfg.fsdp or world > 1, "fsdp", "--fsdp shards the model over processes, but this is one process "
          "(no process group)", "torchrun --nproc_per_node N (or accelerate launch --num_processes N) -m lldyn.cli "
          "train --fsdp ..., with N > 1")
    if world <= 1:
        return Processes()
    check(cfg.batch_size % world == 0, "batch_size",
          f"batch size {cfg.batch_size} does not split evenly over {world} processes",
          f"a multiple of {world} (--batch-size is the global micro-batch; each process takes batch_size / {world} rows)")
    check(not cfg.on_policy, "on_policy", f"on-policy sampling is single-process only, got {world} processes",
          "a run without accelerate launch for --on-policy")
    check(cfg.method != "grpo", "method", f"GRPO is single-process only, got {world} processes",
          "a run without accelerate launch for --method grpo")
    check(cfg.decompose_every == 0 and decomposer is None, "decompose_every",
          f"the step decomposition is single-process only, got {world} processes",
          "--decompose-every 0, or a run without accelerate launch")
    check(cfg.device in ("cpu", "cuda"), "device", f"device {cfg.device!r} would put every process on one device",
          "cpu, or cuda (each process then uses its own GPU)")
    return Processes.launched(cpu=cfg.device == "cpu")


def start_job(cfg: TrainConfig, resume: bool, decomposer: Any, callbacks: Sequence[Callable],
              progress: bool) -> Job:
    """Check and load everything (all refusals come before anything is written), then open the run directory,
    attach the decomposer and the tracker, and find where a resumed run continues."""
    if resume and (ckpt := latest_checkpoint(RunDir(cfg.out).checkpoints)) is not None:
        check_resume_processes(ckpt, int(os.environ.get("WORLD_SIZE", "1")))  # before anything is written
    procs = launched_processes(cfg, decomposer)
    prompts, reward = load_grpo_prompts(cfg) if cfg.method == "grpo" else ([], None)
    pairs, sft = load_training_data(cfg) if cfg.method != "grpo" else ([], [])
    plan = phases(cfg)
    source = None
    if cfg.on_policy:
        from lldyn.preferences import load_preference_source

        source = load_preference_source(cfg.preference_source, base_url=cfg.base_url,
                                        trust_remote_code=cfg.trust_remote_code)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    lm = load_start_model(cfg.model_config())
    encoder = Encoder(lm.tokenizer, cfg.scoring())
    phase_data = [encode_prompts(prompts, encoder) if phase.kind == "grpo" else
                  encode_phase_data(phase, pairs, sft, encoder, cfg.data) for phase in plan]
    for phase, examples in zip(plan, phase_data):
        check_batch(cfg, len(examples), phase, cfg.data)
    if cfg.ref is not None and not is_run_dir(cfg.ref):
        check_model_name(cfg.ref)  # a bad --ref is refused before anything is written
    params = [p for p in lm.model.parameters() if p.requires_grad]
    procs.same_start(params)
    if cfg.fsdp:
        shard_model(lm.model)
        params = [p for p in lm.model.parameters() if p.requires_grad]  # this rank's slices (FSDP2's DTensors)
    # GRPO: the first generation batch is sampled and scored now, so a reward function that fails on it is
    # refused before anything is written (the same seed gives the same batch later: nothing changes)
    first = sample_generation(lm.model, lm.tokenizer, prompts, reward, cfg, 0, 0, 0,
                              phase_length(plan[0], len(prompts), cfg)) if reward is not None and not resume else None
    check_report_to(cfg.report_to)
    rows = grpo_probe_prompts(cfg, prompts, reward) if reward is not None else None
    samples = grpo_policy_samples(cfg, lm.model, lm.tokenizer, rows, reward, resume)
    run = procs.from_main(lambda: RunDir.create(cfg.out, run_config(cfg), resume=resume, ignore_keys=RESUME_FREE))
    if samples is not None and procs.is_main and run.policy_samples() is None:
        run.write_policy_samples(samples)
    job = Job(cfg, procs, run, lm.model, lm.tokenizer, params, encoder, pairs, plan, phase_data, source, reward,
              first, rows, samples, progress=progress)
    if procs.is_main:
        job.sink = open_sink(cfg.report_to, run)
    job.decomposer = decomposer if decomposer is not None else make_decomposer(job)
    job.tracker = make_tracker(job, callbacks)
    find_resume_point(job, resume)
    return job


def grpo_probe_prompts(cfg: TrainConfig, prompts: Sequence[Any], reward: Any) -> list[Any] | None:
    """GRPO with probes: the probe prompts' data rows (their gold answers; a probe's ``prompt_id`` is its row's
    id), looked up in the training prompts, then in the whole data. With ``probe_samples`` every probe prompt
    needs its row (and a gold answer under ``--reward builtin``), refused here before anything is written;
    without, the rows found serve the greedy y*'s accuracy only."""
    if not cfg.probes or cfg.eval_every <= 0:
        return None
    from lldyn.data import load_prompts
    from lldyn.policy_samples import probe_prompts
    from lldyn.probes import ProbeSet

    ids = ProbeSet.load(cfg.probes).prompt_ids
    known = {p.id for p in prompts}
    pool = list(prompts)
    if not set(ids) <= known:
        pool += [p for p in load_prompts(cfg.data, cfg.split, None, skip_invalid=True) if p.id not in known]
    if cfg.probe_samples == 0:
        return [p for p in pool if p.id in set(ids)]
    return probe_prompts(ids, pool, reward, where=cfg.probes)


def grpo_policy_samples(cfg: TrainConfig, model: Any, tokenizer: Any, rows: list[Any] | None, reward: Any,
                        resume: bool) -> list[Any] | None:
    """GRPO with probes and ``probe_samples``: the starting policy's samples of the probe prompts, read back from
    the run being resumed, or drawn now from the starting model (before anything is written: a reward that fails
    on them is refused first). None when not wanted."""
    if rows is None or cfg.probe_samples == 0:
        return None
    from lldyn.policy_samples import PolicySampleConfig, policy_samples

    config = PolicySampleConfig(n=cfg.probe_samples, max_new_tokens=cfg.max_completion_length,
                                temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
                                correct_at=cfg.probe_samples_correct_at, template=cfg.template,
                                max_prompt_tokens=cfg.max_prompt_tokens or None, batch_size=cfg.batch_size)
    return policy_samples(RunDir(cfg.out) if resume else None, model, tokenizer, rows, reward, config, write=False)


def make_decomposer(job: Job) -> Any:
    """The decomposition hook of ``--decompose-every`` (None when off)."""
    cfg = job.cfg
    if cfg.decompose_every <= 0:
        return None
    if not cfg.probes:
        raise LldynError("decomposition needs probes", field="decompose_every", expected="--probes FILE")
    from lldyn.decompose.llm import DecomposeConfig, StepDecomposer
    from lldyn.probes import ProbeSet

    samples = job.policy_samples or ()  # GRPO: the starting policy's samples are decomposed too
    return StepDecomposer(job.tokenizer, ProbeSet.coerce(cfg.probes), job.run,
                          DecomposeConfig(score=cfg.scoring(), every=cfg.decompose_every), samples=samples)


def make_tracker(job: Job, callbacks: Sequence[Callable]) -> Any:
    """The probe tracker (None without probes), with the squeeze alarm for runs that have a preference phase,
    measured from the start of that phase (after SFT in sft_dpo / extend)."""
    cfg = job.cfg
    if not cfg.probes or cfg.eval_every <= 0:
        return None
    from lldyn.squeeze import squeeze_alarm
    from lldyn.tracking import Tracker

    all_callbacks = list(callbacks)
    if cfg.squeeze_alarm and any(p.kind in PREFERENCE_LOSSES for p in job.plan):
        first = next(i for i, p in enumerate(job.plan) if p.kind in PREFERENCE_LOSSES)
        start = sum(phase_length(p, len(d), cfg) for p, d in zip(job.plan[:first], job.phase_data[:first]))
        all_callbacks.append(squeeze_alarm(from_step=start))
    gold, greedy = None, None
    if job.probe_prompts is not None:  # GRPO: greedy answers and their accuracy; the LLD alarm with samples
        from lldyn.generation import GenerationConfig
        from lldyn.policy_samples import gold_answers
        from lldyn.squeeze import LLDAlarmConfig, lld_alarm

        gold = gold_answers(job.probe_prompts)
        if cfg.probe_greedy:
            greedy = GenerationConfig(max_new_tokens=cfg.max_completion_length, template=cfg.template,
                                      batch_size=cfg.batch_size, max_prompt_tokens=cfg.max_prompt_tokens or None)
        if job.policy_samples is not None and cfg.lld_alarm:
            all_callbacks.append(lld_alarm(LLDAlarmConfig(cfg.lld_reward_rise, cfg.lld_logp_rise)))
    return Tracker(job.model, job.tokenizer, cfg.probes, job.run, every=cfg.eval_every, score_config=cfg.scoring(),
                   callbacks=all_callbacks, initial_sample=cfg.initial_sample, progress=False,
                   processes=job.procs, free_run=cfg.free_run(), policy_samples=job.policy_samples or (), gold=gold,
                   greedy=greedy)


def find_resume_point(job: Job, resume: bool) -> None:
    """Where a resumed run continues: the latest checkpoint (rows logged after it are dropped); a run killed
    before its first checkpoint starts over cleanly."""
    ckpt = latest_checkpoint(job.run.checkpoints) if resume else None
    restart = resume and ckpt is None and job.run.has_metrics()
    job.procs.wait()  # every rank has read the run directory (tracker history, checkpoints) before rank 0 rewrites it
    if restart:
        if job.procs.is_main:
            job.run.truncate_after(-1)
        if job.tracker is not None:
            job.tracker.rewind(-1)
    if ckpt is not None:
        state = load_checkpoint(ckpt, job.model, restore_rng=False)
        job.checkpoint = ckpt
        job.resume_phase, job.resume_step, job.global_step = state["phase"], state["phase_step"], state["step"]
        if job.procs.is_main:
            job.run.truncate_after(job.global_step)
        if job.tracker is not None:
            job.tracker.rewind(job.global_step)


def resume_point(job: Job, phase_index: int, total: int, optimizer: Any, scheduler: Any) -> int | None:
    """The step a phase starts at: 0, or the resumed checkpoint's step (its optimizer, scheduler and RNG state
    restored); None when that checkpoint closed the phase (its last evaluation is redone if a kill came first)."""
    if job.checkpoint is None or phase_index != job.resume_phase:
        return 0
    if job.resume_step >= total:
        track_phase_end(job)
        return None
    load_checkpoint(job.checkpoint, job.model, optimizer, scheduler, restore_rng=True)
    return job.resume_step


def phase_reference(job: Job, phase_index: int, phase: Phase, resumed: bool) -> tuple[Any, Any]:
    """(reference model, reference log-probs) of a pairwise phase; off-policy the log-probs are computed once
    (rank 0 reads or computes and writes them; every rank gets the same values). GRPO: the frozen reference
    model of its KL term (None with β = 0)."""
    cfg = job.cfg
    if phase.kind in ("sft", "simpo") or (phase.kind == "grpo" and cfg.beta == 0.0):
        return None, None
    if phase.kind == "grpo":
        return reference_model(cfg, job.model, resumed=resumed), None
    ref_model = reference_model(cfg, job.model, resumed=resumed)
    if cfg.on_policy:
        return ref_model, None
    if is_sharded(ref_model):  # the sharded policy itself: every rank scores its share
        values = load_or_compute_reference(job.run, phase_index, ref_model, job.tokenizer,
                                           job.phase_data[phase_index], cfg, job.procs)
    else:
        values = job.procs.from_main(lambda: load_or_compute_reference(
            job.run, phase_index, ref_model, job.tokenizer, job.phase_data[phase_index], cfg))
    return (None if ref_model is not job.model and cfg.ref is not None else ref_model), values


# --------------------------------------------------------------------------- one step


def forward_backward(job: Job, phase_index: int, phase: Phase, examples: Any, index: int,
                     ref_values: Any, optimizer: Any, scheduler: Any, step: int) -> tuple[dict[str, float], list[UpdateTerm]]:
    """Loss and backward over ``grad_accum`` micro-batches (micro-batch ``index·grad_accum + k`` of the phase, or
    of the on-policy round; for GRPO the k-th of the step's generation batch); returns the statistics averaged
    over them and ranks, and the gradient's terms."""
    cfg = job.cfg
    stats: dict[str, float] = {}
    terms: list[UpdateTerm] = []
    for k in range(cfg.grad_accum):
        out = micro_step(job, phase_index, phase, examples, index * cfg.grad_accum + k, k, ref_values)
        if not job.procs.all_finite(out.loss):
            stop_non_finite(job, optimizer, scheduler, phase_index, step, job.global_step, job.procs.mean(out.stats))
        out.loss.backward()
        terms += out.terms
        for key, v in out.stats.items():
            stats[key] = stats.get(key, 0.0) + v / cfg.grad_accum
    if not is_sharded(job.model):  # FSDP2 averaged them over ranks while reducing them
        job.procs.average_gradients(job.params)
    return job.procs.mean(stats), terms


def micro_step(job: Job, phase_index: int, phase: Phase, examples: Any, index: int, k: int,
               ref_values: Any) -> StepOutput:
    """The loss of one micro-batch: micro-batch ``index`` of the phase's examples (this rank's share), or the
    ``k``-th micro-batch of a GRPO step's :class:`~lldyn.train.grpo.Generation`."""
    cfg, pad_id = job.cfg, job.tokenizer.pad_token_id
    if phase.kind == "grpo":
        return grpo_step(job.model, examples.micro_batch(k, cfg.batch_size), pad_id, cfg, examples.num_items)
    batch = job.procs.shard(micro_batch(examples, cfg, phase_index, index))

    def step(model: Any) -> tuple[torch.Tensor, StepOutput]:
        out = (sft_step(model, batch, pad_id, cfg, 1.0 / cfg.grad_accum) if phase.kind == "sft" else
               pair_step(model, batch, pad_id, cfg, phase.kind, ref_values, 1.0 / cfg.grad_accum))
        return out.loss, out  # the loss in a tuple: where a sharded root's backward hooks attach

    loss, out = root_call(job.model, step)
    out.loss = loss
    return out


def grpo_generation(job: Job, phase_index: int, step: int, total: int, ref_model: Any) -> Generation:
    """GRPO: the generation batch of phase step ``step`` (sampled from the current policy, or the first one,
    sampled by :func:`start_job`), with the reference's log-probs when β > 0, saved in the run directory."""
    first, job.first_generation = job.first_generation, None
    if first is not None and first.phase_step == step:
        generation = first
    else:
        generation = sample_generation(job.model, job.tokenizer, job.phase_data[phase_index], job.reward, job.cfg,
                                       phase_index, step, job.global_step, total)
    generation = with_reference(generation, ref_model, job.tokenizer.pad_token_id, job.cfg)
    if job.procs.is_main:
        job.run.write_grpo_step(job.global_step + 1, generation.rows)
    job.model.train()
    return generation


def clip_gradients(job: Job, optimizer: Any, scheduler: Any, phase_index: int, step: int) -> float:
    """Clip to ``max_grad_norm`` (0: off) and return the norm before clipping; a non-finite norm stops the run."""
    if is_sharded(job.model):  # DTensor gradients: torch reduces the norm over ranks (inf: only measured)
        total = torch.nn.utils.clip_grad_norm_(job.params, job.cfg.max_grad_norm or math.inf)
        norm = float(total.full_tensor() if hasattr(total, "full_tensor") else total)
    elif job.cfg.max_grad_norm > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(job.params, job.cfg.max_grad_norm))
    else:
        norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in job.params if p.grad is not None])))
    if not math.isfinite(norm):
        stop_non_finite(job, optimizer, scheduler, phase_index, step, job.global_step, {"grad_norm": norm})
    return norm


def optimizer_step(job: Job, optimizer: Any, terms: Sequence[UpdateTerm]) -> dict[str, float]:
    """``optimizer.step()``, with the decomposition hook around it when due; returns its summary."""
    step = job.global_step + 1
    due = job.decomposer is not None and step % (job.cfg.decompose_every or 1) == 0
    if due:
        job.decomposer.before_step(step, job.model, terms, optimizer)
    optimizer.step()
    # before the scheduler moves the learning rate on: the decomposer reads this step's lr
    return (job.decomposer.after_step(step, job.model, optimizer) or {}) if due else {}


# --------------------------------------------------------------------------- writing


def log(job: Job, row: Any) -> None:
    if job.procs.is_main:
        job.run.log(row)


def track(job: Job, step: int) -> None:
    """Evaluate the probes at ``step`` (with dropout off) when a tracker is attached and it is due."""
    if job.tracker is None or not job.tracker.should_track(step):
        return
    was_training = job.model.training
    job.model.eval()
    evaluate(job, step)
    job.model.train(was_training)


def track_phase_end(job: Job) -> None:
    """Evaluate the probes at the end of a phase unless that step was evaluated already."""
    if job.tracker is not None and not any(h.step == job.global_step for h in job.tracker.history):
        job.model.eval()
        evaluate(job, job.global_step)
    job.model.eval()


def evaluate(job: Job, step: int) -> None:
    """One probe evaluation; GRPO adds the mean training reward since the previous evaluation to its signals, and
    an alarm that fires is logged as an :class:`~lldyn.rundir.AlarmRow`."""
    signals = {}
    if job.reward is not None:
        before = max((h.step for h in job.tracker.history if h.step < step), default=-1)
        window = [r.stats["reward"] for r in job.run.train_rows() if before < r.step <= step and "reward" in r.stats]
        if window:
            signals["reward"] = sum(window) / len(window)
    job.last_summary = job.tracker.track(step, signals)
    extra = job.last_summary.extra
    if extra.get("lld/alarm"):
        log(job, AlarmRow(step, "lld", extra.get("lld/since_step"),
                          {k: v for k, v in extra.items() if k.startswith("lld/d_")}))


def checkpoint(job: Job, optimizer: Any, scheduler: Any, phase_index: int, step: int, phase_name: str) -> None:
    """Save a checkpoint (rank 0); weights a step overflowed (with a finite loss) are never saved."""
    if not weights_finite(job.params, job.procs):
        stop_non_finite(job, optimizer, scheduler, phase_index, step - 1, job.global_step - 1, {"weights": math.nan})
    gathered = gather_state(job.model, optimizer) if is_sharded(job.model) else None  # every rank takes part
    job.procs.from_main(lambda: save_checkpoint(job.run.checkpoints, job.global_step, job.model, optimizer, scheduler,
                                                {"phase": phase_index, "phase_step": step, "phase_name": phase_name,
                                                 **sharding_state(job)},
                                                keep=job.cfg.keep_checkpoints, gathered=gathered))


def sharding_state(job: Job) -> dict[str, int]:
    """What a sharded run's checkpoint records: the number of processes that may resume it."""
    return {"fsdp_processes": job.procs.world} if is_sharded(job.model) else {}


def weights_finite(params: Sequence[torch.nn.Parameter], procs: Processes = Processes()) -> bool:
    """Whether every parameter is finite: the same answer on every rank (the weights are in sync, or sharded:
    each rank checks its slices and the ranks agree)."""
    local = all(bool(torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all()) for p in params)
    if not any(hasattr(p, "to_local") for p in params):
        return local
    return procs.all_finite(torch.tensor(0.0 if local else math.nan, device=procs.device))


def stop_non_finite(job: Job, optimizer: Any, scheduler: Any, phase_index: int, phase_step: int, global_step: int,
                    stats: dict[str, float]) -> None:
    """Keep the last good weights (this step has not been applied) and stop with a clear message (all ranks
    stop here together; rank 0 writes)."""
    optimizer.zero_grad(set_to_none=True)
    # The weights themselves may already be non-finite (an earlier step overflowed them without a
    # non-finite loss): those are never saved; the last checkpoint stays the last good one.
    finite = weights_finite(job.params, job.procs)
    gathered = gather_state(job.model, optimizer) if finite and is_sharded(job.model) else None

    def keep_last_good() -> Path | None:
        last = latest_checkpoint(job.run.checkpoints)
        if finite and (last is None or int(last.name.split("-")[-1]) != global_step):
            last = save_checkpoint(job.run.checkpoints, global_step, job.model, optimizer, scheduler,
                                   {"phase": phase_index, "phase_step": phase_step, "stopped": "non-finite",
                                    **sharding_state(job)},
                                   keep=job.cfg.keep_checkpoints + 1, gathered=gathered)
        job.run.log(StoppedRow(global_step + 1, "non-finite loss, gradient or weights", finite,
                               {k: (v if math.isfinite(v) else str(v)) for k, v in stats.items()}))
        return last

    last = job.procs.from_main(keep_last_good)
    kept = f"last good weights kept in {last}" if last is not None else \
        "the weights are already non-finite and no earlier checkpoint exists, so none was kept"
    raise LldynError(f"non-finite loss, gradient or weights at step {global_step + 1} "
                     f"({', '.join(f'{k}={v}' for k, v in stats.items())}); training stopped, {kept}", field="lr",
                     expected="a smaller learning rate, gradient clipping, or clean data")


def progress_bar(job: Job, total: int, done: int, desc: str) -> Any:
    if not (job.progress and job.procs.is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=desc, unit="step", dynamic_ncols=True)
