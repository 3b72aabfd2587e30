"""Reward functions for GRPO, in TRL's shape: ``f(prompts, completions, **kwargs) -> list[float | None]``.

``lldyn train --method grpo --reward SPEC`` takes

``builtin``          :func:`gold_answer_reward`: 1.0 when the completion states the row's gold ``answer``
                     (or one of its ``answer_aliases``), 0.0 when it does not, by the documented matcher
                     :func:`lldyn.reference_answer.states_answer`. The answers live in the data, never here.
``module:function``  any function with TRL 1.16's reward signature (``GRPOTrainer._calculate_rewards``):
                     called once per generation batch with ``prompts`` (one per completion, as the data
                     holds them: text or chat messages), ``completions`` (text; for chat prompts
                     ``[{"role": "assistant", "content": text}]``), ``completion_ids`` (token ids, EOS
                     included when generated), ``trainer_state`` (:class:`TrainerState`: ``global_step``,
                     ``max_steps``) and every other field of the prompt's row as a keyword argument (a list,
                     one value per completion; None where a row lacks the field). It returns one number per
                     completion, or None for a completion it cannot score (TRL: NaN, left out of the group's
                     mean and std, advantage 0). TRL's ``log_extra`` / ``log_metric`` callbacks are not passed.

A function written for TRL (``def f(prompts, completions, **kwargs)``) works unchanged, and
:func:`gold_answer_reward` works in TRL (its ``answer``/``answer_aliases`` columns arrive as kwargs).
What a user's function does wrong (raises, returns the wrong number of values, something that is not a
number, infinity, nothing but None) is one :class:`~lldyn.errors.LldynError` naming the function.

Prompts that hold the answer. Some built-in prompts hold their gold number ("Divide 64 by 8.", gold 8;
"What is 121 / 11?", gold 11), so a completion that restates the question mentions it without answering:
"Dividing 64 by 8 gives 9." When the prompt mentions the gold answer n times and the completion repeats
another number of the prompt (it restates the question), the completion states the answer only with more
than n mentions, all affirmed: "Dividing 64 by 8 gives 8." (two mentions) states it, "Dividing 64 by 8
gives 9." and "64 / 8" (one) do not. A completion that repeats none of the prompt's other numbers needs one
affirmed mention, as usual: "8." and "It is eight." state it. (Counting only mentions beyond the prompt's,
as ``tests/test_builtin_data.py`` checks the built-in pairs, would refuse the bare "8.".) For a prompt
without the answer this is exactly :func:`~lldyn.reference_answer.states_answer`. Known limit: a prompt
that lists the answer among options ("ice or steam?", gold "ice") has no other number, so "Steam is colder
than ice" mentions "ice" and states it, as the matcher alone would.
"""
from __future__ import annotations

import importlib
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from lldyn.data import PromptExample
from lldyn.errors import LldynError
from lldyn.reference_answer import Reference, normalise, states_answer

BUILTIN = "builtin"
SPEC_HELP = "builtin (the row's gold answer) or module:function (TRL's f(prompts, completions, **kwargs))"
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# keyword arguments lldyn passes a reward function itself; row fields of these names are not passed again
RESERVED_REWARD_KWARGS = frozenset({"prompt", "prompts", "completion", "completions", "completion_ids",
                                    "trainer_state"})


class TrainerState(NamedTuple):
    """What a reward function gets as ``trainer_state`` (the fields of TRL's ``TrainerState`` lldyn knows):
    ``global_step`` = optimizer steps done before this generation batch, ``max_steps`` = steps of the run."""

    global_step: int
    max_steps: int


def _text(value: Any) -> str:
    """A prompt or completion as text: a string, or the contents of its chat messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence):
        return "\n".join(str(m.get("content", "")) for m in value if isinstance(m, Mapping))
    return str(value)


def states_gold_answer(prompt: Any, completion: Any, answer: str, aliases: Sequence[str] = ()) -> bool:
    """Whether ``completion`` states the gold answer, not only the prompt's own mentions of it (module docstring)."""
    match = states_answer(_text(completion), answer, aliases)
    if not match.matched:
        return False
    in_prompt = len(states_answer(_text(prompt), answer, aliases).mentions)
    if in_prompt == 0:
        return True
    gold = {normalise(a) for a in (answer, *aliases)}
    others = {w for w in normalise(_text(prompt)).split() if _NUMBER.fullmatch(w) and w not in gold}
    restates = bool(others & set(normalise(_text(completion)).split()))
    return len(match.mentions) > (in_prompt if restates else 0)


def gold_answer_reward(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str | None] | None = None,
                       answer_aliases: Sequence[Sequence[str] | None] | None = None, **kwargs: Any
                       ) -> list[float | None]:
    """1.0 when a completion states its row's gold ``answer`` (module docstring), 0.0 when not, None for a
    row without one. TRL's reward signature; ``answer``/``answer_aliases`` are the rows' fields."""
    n = len(completions)
    answers = list(answer) if answer is not None else [None] * n
    aliases = list(answer_aliases) if answer_aliases is not None else [None] * n
    out: list[float | None] = []
    for prompt, completion, gold, alias in zip(prompts, completions, answers, aliases):
        if gold is None:
            out.append(None)
            continue
        out.append(1.0 if states_gold_answer(prompt, completion, gold, alias or ()) else 0.0)
    return out


@dataclass(frozen=True)
class RewardFunction:
    """A reward for GRPO: ``name`` (its spec), ``fn`` (TRL's signature) and whether every prompt needs a gold
    answer (``builtin``)."""

    name: str
    fn: Callable[..., Any]
    needs_answer: bool = False

    def check_prompts(self, prompts: Sequence[PromptExample], skip_invalid: bool = False,
                      warn: Callable[[str], None] | None = None) -> list[PromptExample]:
        """The prompts this reward can score: under ``builtin`` a row without a gold ``answer`` is refused
        (one line naming it), or skipped and counted with ``skip_invalid``; a malformed answer is refused."""
        if not self.needs_answer:
            return list(prompts)
        kept = []
        for p in prompts:
            if Reference.from_row(p.fields, p.where.file, p.where.line) is not None:
                kept.append(p)
            elif not skip_invalid:
                raise p.where.error(f"prompt {p.id!r} has no gold answer for --reward builtin", field="answer",
                                    expected="an 'answer' on every row (and optional 'answer_aliases'), "
                                             "--skip-invalid to train on the rows that have one, or --reward "
                                             "module:function")
        if not kept:
            raise LldynError(f"none of the {len(prompts)} prompts has a gold answer for --reward builtin",
                             file=prompts[0].where.file if prompts else None, field="answer",
                             expected="rows with an 'answer' field, or --reward module:function")
        if len(kept) < len(prompts) and warn is not None:
            warn(f"{len(prompts) - len(kept)} of {len(prompts)} prompts skipped: no gold answer for --reward builtin")
        return kept

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        """The rewards of ``completions`` as floats (NaN = unscorable), checked (module docstring)."""
        n = len(completions)
        try:
            values = self.fn(prompts=list(prompts), completions=list(completions), **kwargs)
        except LldynError:
            raise
        except Exception as err:  # the user's function failed: one line naming it, not a traceback
            detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise LldynError(f"reward function raised {type(err).__name__}" + (f": {detail}" if detail else ""),
                             file=self.name, field="reward") from None
        if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):
            values = values.tolist()  # a tensor or an array
        if not isinstance(values, (list, tuple)):
            raise LldynError(f"reward function returned {type(values).__name__}", file=self.name, field="reward",
                             expected=f"a list of {n} numbers (None for a completion it cannot score)")
        if len(values) != n:
            raise LldynError(f"reward function returned {len(values)} rewards for {n} completions", file=self.name,
                             field="reward", expected="one reward per completion")
        out = []
        for i, v in enumerate(values):
            if v is None:
                out.append(math.nan)
                continue
            if isinstance(v, (str, bytes)) or not hasattr(v, "__float__"):
                raise LldynError(f"reward function returned {type(v).__name__} {v!r:.40} for completion {i}",
                                 file=self.name, field="reward", expected="a number, or None for a completion it "
                                                                          "cannot score")
            value = float(v)
            if math.isinf(value):
                raise LldynError(f"reward function returned {value} for completion {i}", file=self.name,
                                 field="reward", expected="a finite number, or None for a completion it cannot score")
            out.append(value)
        if n and all(math.isnan(v) for v in out):
            raise LldynError(f"reward function scored none of the {n} completions (all None or NaN)", file=self.name,
                             field="reward", expected="a number for at least one completion of the batch")
        return out


def reward_inputs(batch: Sequence[PromptExample], samples: Sequence[Any], state: TrainerState
                  ) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """``prompts``, ``completions`` and keyword arguments for a reward function, as TRL 1.16 passes them
    (module docstring): one entry per completion; chat prompts get their completion as an assistant message.
    ``samples``: one per prompt of ``batch``, each with ``text`` and ``completion_ids`` (:class:`lldyn.generation.Sample`)."""
    prompts = [p.prompt for p in batch]
    completions = [s.text if isinstance(p.prompt, str) else [{"role": "assistant", "content": s.text}]
                   for p, s in zip(batch, samples)]
    keys = dict.fromkeys(k for p in batch for k in p.fields if k not in RESERVED_REWARD_KWARGS)
    kwargs: dict[str, Any] = {k: [p.fields.get(k) for p in batch] for k in keys}
    kwargs["completion_ids"] = [list(s.completion_ids) for s in samples]
    kwargs["trainer_state"] = state
    return prompts, completions, kwargs


def import_function(module: str, function: str, *, field: str, signature: str) -> Callable[..., Any]:
    """A user's ``module:function``, imported from the Python path or the working directory; a module that
    cannot be imported (or whose own code fails) or a missing function is one :class:`LldynError` on ``field``."""
    if os.getcwd() not in sys.path:  # a console script does not put the working directory on sys.path
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(module)
    except Exception as err:  # ImportError, or the module's own code failing
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise LldynError(f"cannot import reward module {module!r}: {type(err).__name__}: {detail}", field=field,
                         expected="module:function with the module importable (on PYTHONPATH or here)") from None
    fn = getattr(mod, function, None)
    if not callable(fn):
        raise LldynError(f"module {module!r} has no function {function!r}", field=field,
                         expected=f"module:function naming {signature}")
    return fn


def load_reward(spec: str) -> RewardFunction:
    """``builtin`` | ``module:function`` → :class:`RewardFunction` (module docstring). The module is imported
    from the Python path or the working directory."""
    spec = (spec or "").strip()
    if spec == BUILTIN:
        return RewardFunction(BUILTIN, gold_answer_reward, needs_answer=True)
    module, sep, function = spec.partition(":")
    if not (sep and function.isidentifier() and module and all(p.isidentifier() for p in module.split("."))):
        raise LldynError(f"unknown reward {spec!r}", field="reward", expected=SPEC_HELP)
    fn = import_function(module, function, field="reward",
                         signature="f(prompts, completions, **kwargs) -> list[float | None]")
    return RewardFunction(spec, fn)
