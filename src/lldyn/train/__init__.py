"""Finetuning that can be watched: SFT, off-/on-policy DPO, IPO, SLiC, SimPO, the paper's *extend*, and GRPO.

A method is a list of **phases** (:mod:`lldyn.train.config`); one flat loop (:func:`lldyn.train.loop.train`)
runs them: batch → loss → step → track. Each phase is either SFT-like (one response per example, loss
:func:`lldyn.losses.sft_loss`), pairwise (chosen and rejected, a preference loss from :mod:`lldyn.losses`)
or GRPO (groups of completions sampled from the policy each step, :func:`lldyn.losses.grpo_loss`).

====================  ======================================================================
``config``            :class:`TrainConfig`, the phases of a method, the run's ``config.json``
``batches``           encoded examples and their order (a pure function of seed, phase, epoch)
``steps``             the loss of one micro-batch per method family, with the gradient's terms
``grpo``              GRPO's generation batch of a step: prompts, samples, rewards, advantages
``reference``         the DPO / GRPO reference model and its log-probs
``on_policy``         on-policy rounds: sampled from the policy, labelled by a preference source
``optim``             optimizers and schedules
``loop``              :func:`train`
====================  ======================================================================

Log-probabilities come from the one engine (:func:`lldyn.scoring.sequence_logps` for the
differentiable training forward; :func:`lldyn.scoring.score` for the reference).
"""
from lldyn.train.config import METHODS, Phase, TrainConfig, phases, run_config, run_train_config
from lldyn.train.loop import TrainResult, train

__all__ = ["METHODS", "Phase", "TrainConfig", "TrainResult", "phases", "run_config", "run_train_config", "train"]
