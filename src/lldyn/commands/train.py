"""``lldyn train``: SFT, DPO-family, extend, sft_dpo and GRPO runs with probe tracking and checkpoints.

Every :class:`lldyn.train.TrainConfig` field is a flag (``--batch-size``, ``--lr`` …); a TOML file
given with ``--config`` sets defaults that flags override. ``accelerate launch --num_processes N -m
lldyn.cli train ...`` trains on N processes (data parallelism, see :mod:`lldyn.train`).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

HELP = {
    "method": "sft | dpo | ipo | slic | simpo | extend (SFT on y+ and y−, then DPO) | sft_dpo (SFT on y+, then DPO)",
    "model": "alias (smollm2-135m-instruct, tiny-random-llama), .gguf file, directory or Hub id",
    "data": "preference data (.jsonl/.json/.parquet, builtin, builtin:train, hf:NAME); SFT data for --method sft",
    "probes": "probes.jsonl to track (lldyn probes build); none = no tracking",
    "out": "run directory",
    "ref": "reference model for DPO-family losses (default: the model at the start of the DPO phase)",
    "steps": "optimizer steps of the (last) phase (default: --epochs)",
    "optimizer": "adamw | rmsprop (the paper's) | sgd",
    "scheduler": "constant | linear | cosine (after --warmup-steps)",
    "max_grad_norm": "gradient clipping norm (0 = off)",
    "eval_every": "track probes every N optimizer steps (and at step 0)",
    "checkpoint_every": "checkpoint every N steps (always at the end of each phase)",
    "sft_steps": "steps of the SFT phase of extend / sft_dpo",
    "on_policy": "sample two responses per prompt from the current policy and label them with --preference-source",
    "preference_source": "hf:MODEL, openai:MODEL (with --base-url) or module:function (a reward function)",
    "decompose_every": "record the first-order decomposition every N steps (0 = off)",
    "generate_prompts": "the repeater: free-running greedy generations of the first N probe prompts at evaluations "
                        "(0 = off), with degeneration measures, in generations.jsonl",
    "generate_tokens": "the free-running generations' budget in new tokens",
    "generate_every": "generate at every K-th probe evaluation (the first included)",
    "nthr": "GRPO: NTHR (Deng et al. 2025) lowers the penalty on incorrect completions' tokens that drag the "
            "group's correct completions down (docs/grpo-nthr.md)",
    "nthr_threshold": "NTHR: flag a token whose influence on the correct completions exceeds this multiple of the "
                      "correct tokens' mean",
    "nthr_scale": "NTHR: share of the penalty a flagged token keeps (1 = plain GRPO)",
    "probe_samples": "grpo with --probes: the starting policy's own samples per probe prompt, split by the reward "
                     "into sample_correct / sample_incorrect (0 = none; docs/grpo.md)",
    "probe_samples_correct_at": "grpo: a probe sample with reward >= this is sample_correct",
    "probe_greedy": "grpo with --probes: the current greedy answer to each probe prompt at every evaluation, "
                    "and its accuracy against the gold answers",
    "lld_alarm": "grpo: the LLD alarm (reward up while the correct samples' log π is not)",
    "lld_reward_rise": "grpo: the LLD alarm needs the reward to rise by more than this since its first window",
    "lld_logp_rise": "grpo: the LLD alarm fires while the correct samples' log π rose less than this (nats) since step 0",
    "fsdp": "shard the model with FSDP2 (per decoder layer) over the processes torchrun / accelerate launch started",
    "report_to": "none | tensorboard (event files in RUN/tensorboard) | wandb (an offline run in RUN/wandb): the "
                 "scalars of metrics.jsonl",
    "dtype": "float32 | bfloat16 | float16: the weights' dtype (log-softmax and sums stay float32)",
}


def add_config_flags(p: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per dataclass field, all defaulting to None so a TOML file's values survive."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        help_text = HELP.get(f.name, "") + (f" (default: {f.default})" if f.default is not dataclasses.MISSING else "")
        if tp is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        base = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        p.add_argument(flag, dest=f.name, type=_parser(base[0], flag), default=None, metavar=f.name.upper(),
                       help=help_text)


def _parser(tp: type, flag: str):
    def parse(text: str):
        try:
            return tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects {tp.__name__}, got {text!r}") from None
    return parse


def register(sub: argparse._SubParsersAction) -> None:
    from lldyn.train import TrainConfig

    p = sub.add_parser("train", help="finetune with SFT / DPO / IPO / SLiC / SimPO / extend, tracking probes",
                       description="Run a finetuning job into a run directory (config.json, metrics.jsonl, probe table, "
                                   "checkpoints). Flags override --config FILE.toml.")
    p.add_argument("--config", default=None, help="TOML file with TrainConfig fields")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_config_flags(p, TrainConfig)
    p.set_defaults(run=run)


def overrides(args: argparse.Namespace, cls: type) -> dict[str, typing.Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


def run(args: argparse.Namespace) -> int:
    from lldyn.config import load_config
    from lldyn.distributed import leave_process_group
    from lldyn.train import TrainConfig, train

    cfg = load_config(TrainConfig, args.config, overrides(args, TrainConfig))
    check_before_writing(cfg)
    result = train(cfg, resume=args.resume)
    rank, world = leave_process_group()
    if rank != 0:  # under accelerate launch rank 0 reports
        return 0
    on = f" on {world} processes" if world > 1 else ""
    print(f"trained {result.steps} steps{on}; run directory {result.run.path}")
    if result.last_summary is not None:
        d = result.last_summary.family_delta
        print("change since step 0 (nats): " + ", ".join(
            f"{k} {v:+.2f}" for k, v in d.items()
            if k in ("chosen", "rejected", "argmax", "other_chosen", "sample_correct", "sample_incorrect")))
        from lldyn.summary import WHAT_MOVED, what_moved

        lines = what_moved([result.run.path])
        if lines:
            print(WHAT_MOVED)
            print("\n".join(lines))
    return 0


def check_before_writing(cfg) -> None:
    """Refuse a bad probe file, or decomposition without one, before train() opens the run directory."""
    from lldyn.errors import LldynError
    from lldyn.probes import ProbeSet

    if cfg.decompose_every > 0 and not cfg.probes:
        raise LldynError("decomposition needs probes", field="decompose_every", expected="--probes FILE")
    if cfg.probes and (cfg.eval_every > 0 or cfg.decompose_every > 0):
        ProbeSet.load(cfg.probes)
