"""Sampling responses from a model (probes' initial samples, on-policy DPO, GRPO, the judge).

Prompts are encoded by the log-prob engine's encoder (same chat template, same truncation), left
padded, and generated in batches. :func:`sample` returns each completion's token ids (EOS included
when it was generated) and whether it reached EOS, so the engine can score exactly the tokens that
were sampled (a truncated completion has no EOS); :func:`generate` returns the text only, stopped at
EOS, special tokens removed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import torch

from lldyn.config import check
from lldyn.data import Prompt
from lldyn.scoring import Encoder, ScoreConfig


@dataclass(frozen=True)
class GenerationConfig:
    """max_new_tokens: response budget; do_sample False = greedy; seed makes sampling repeatable."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    template: bool = True
    batch_size: int = 8
    max_prompt_tokens: int | None = 512

    def __post_init__(self) -> None:
        check(self.max_new_tokens > 0, "max_new_tokens", f"must be > 0, got {self.max_new_tokens}", "a positive integer")
        check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}", "a positive number")
        check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}", "a number in (0, 1]")
        check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}", "a positive integer")


class Sample(NamedTuple):
    """One sampled completion.

    prompt_ids: the prompt's tokens as the model saw them (chat template, cut to ``max_prompt_tokens``).
    completion_ids: the new tokens up to and including the first EOS; all ``max_new_tokens`` of them when
        no EOS came (TRL's completion mask keeps the same tokens).
    eos: whether the completion ended with EOS (False: cut at ``max_new_tokens``).
    text: the completion decoded without special tokens (not stripped).
    """

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    eos: bool
    text: str


def generate(model: Any, tokenizer: Any, prompts: Sequence[Prompt], config: GenerationConfig = GenerationConfig(),
             progress: bool = False) -> list[str]:
    """One response per prompt, in order, as stripped text. Greedy unless ``config.do_sample``."""
    return [s.text.strip() for s in sample(model, tokenizer, prompts, config, progress)]


def sample(model: Any, tokenizer: Any, prompts: Sequence[Prompt], config: GenerationConfig = GenerationConfig(),
           progress: bool = False) -> list[Sample]:
    """One :class:`Sample` per prompt, in order. Greedy unless ``config.do_sample``; sampling is seeded by
    ``config.seed`` alone (the global RNG is left as it was), so the same model, prompts and config give
    the same samples."""
    score_cfg = ScoreConfig(template=config.template, max_length=max(2, (config.max_prompt_tokens or 4096) + 1),
                            max_prompt_tokens=config.max_prompt_tokens)
    encoder = Encoder(tokenizer, score_cfg)
    ids = []
    for p in prompts:
        full = encoder.prompt(p)
        limit = config.max_prompt_tokens
        ids.append(full[-limit:] if limit else full)
    device = next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[Sample | None] = [None] * len(ids)
    starts = range(0, len(order), config.batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="generating", unit="batch")
    was_training = model.training
    model.eval()
    try:
        # the global RNG (CPU, and every GPU: manual_seed seeds them all) is left as it was, so a tracker or
        # callback that samples does not change what the trainer samples next
        gpus = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
        with torch.random.fork_rng(devices=gpus), torch.no_grad():
            torch.manual_seed(config.seed)
            for start in starts:
                rows = order[start:start + config.batch_size]
                L = max(len(ids[i]) for i in rows)
                input_ids = torch.full((len(rows), L), tokenizer.pad_token_id, dtype=torch.long)
                attention = torch.zeros((len(rows), L), dtype=torch.long)
                for r, i in enumerate(rows):
                    input_ids[r, L - len(ids[i]):] = torch.tensor(ids[i])
                    attention[r, L - len(ids[i]):] = 1
                kwargs: dict[str, Any] = dict(max_new_tokens=config.max_new_tokens, do_sample=config.do_sample,
                                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
                if config.do_sample:
                    kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=0)
                else:
                    kwargs.update(temperature=None, top_p=None, top_k=None)
                gen = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
                for r, i in enumerate(rows):
                    new = gen[r, L:].tolist()
                    eos = tokenizer.eos_token_id in new
                    if eos:  # what follows the first EOS is padding
                        new = new[:new.index(tokenizer.eos_token_id) + 1]
                    text = tokenizer.decode(new[:-1] if eos else new, skip_special_tokens=True)
                    out[i] = Sample(tuple(ids[i]), tuple(new), eos, text)
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]
