"""The judged win rate (paper Sec. 5 / Appendix: "win rate judged by ChatGPT") on top of a preference source.

The win rate (:func:`judge_both_orders`, :func:`win_rate`) asks the judge (:mod:`lldyn.preferences`) about
every prompt in both orders (A shown first, then B shown first) to cancel position bias. Each judgement
gives A a score of 1 (A chosen), 0 (B chosen) or 0.5 (invalid or tie); a prompt's score is the mean of its
two orders, so a position-biased judge that picks whatever comes first scores 0.5 (a tie), and the win rate
is the mean prompt score with a seeded percentile-bootstrap confidence interval over prompts.

With gold answers (``lldyn judge --judge reference``) the prompts carry their
:class:`~lldyn.reference_answer.Reference` (:func:`load_prompts` with ``gold``), the judge is
:class:`~lldyn.preferences.ReferenceSource` (:func:`reference_table` gives it the answers) and each model
also gets an accuracy (:func:`answer_accuracy`): the share of prompts whose response states the gold answer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

from lldyn.data import Prompt
from lldyn.data import load_prompts as read_prompts
from lldyn.errors import LldynError, Where
from lldyn.preferences import Judgement, PreferenceSource, ReferenceSource, prompt_key
from lldyn.reference_answer import Reference


# --------------------------------------------------------------------------- win rate


@dataclass(frozen=True)
class PairJudgement:
    """A prompt judged in both orders: ``ab`` shows A first, ``ba`` shows B first."""

    ab: Judgement
    ba: Judgement

    @property
    def scores_a(self) -> tuple[float, float]:
        """A's score in each order: 1 chosen, 0 not chosen, 0.5 invalid/tie."""
        first = 0.5 if self.ab.choice is None else (1.0 if self.ab.choice == 0 else 0.0)
        second = 0.5 if self.ba.choice is None else (1.0 if self.ba.choice == 1 else 0.0)
        return first, second

    @property
    def score_a(self) -> float:
        """A's score for the prompt: mean of both orders (1 = A both times, 0.5 = tie/inconsistent)."""
        return sum(self.scores_a) / 2

    @property
    def preferred(self) -> int | None:
        """0 (A) or 1 (B) only when both orders agree; None otherwise (position bias, ties, invalid)."""
        return {1.0: 0, 0.0: 1}.get(self.score_a)


def judge_both_orders(source: PreferenceSource, items: Sequence[tuple[Prompt, str, str]],
                      progress: bool = False) -> list[PairJudgement]:
    """Judge every ``(prompt, a, b)`` as (a, b) and as (b, a), in one batch."""
    flat = [(p, a, b) for p, a, b in items] + [(p, b, a) for p, a, b in items]
    results = source.judge_batch(flat, progress=progress)
    n = len(items)
    return [PairJudgement(results[i], results[n + i]) for i in range(n)]


def bootstrap_ci(scores: Sequence[float], n_resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``scores`` (N,), resampling with replacement, seeded."""
    import numpy as np

    x = np.asarray(scores, dtype=float)
    if x.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // x.size)  # bounded memory for long prompt lists
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        means[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


@dataclass(frozen=True)
class WinRate:
    """The win rate of A over B and how it was made.

    win_rate: mean prompt score of A in [0, 1] (0.5 = no difference); ci_low/ci_high: bootstrap interval;
    a_wins/b_wins: prompts won by A/B in both orders; split: the other prompts (ties, position bias,
    invalid answers); invalid: judgements (of 2·n_prompts) the parser could not read;
    first_position_rate: share of valid judgements that chose the response shown first (0.5 = no bias).
    """

    win_rate: float
    ci_low: float
    ci_high: float
    level: float
    n_prompts: int
    n_judgements: int
    a_wins: int
    b_wins: int
    split: int
    invalid: int
    first_position_rate: float | None

    def line(self) -> str:
        return (f"{self._head()}; A won {self.a_wins}, B won {self.b_wins}, split {self.split}; "
                f"{self.invalid}/{self.n_judgements} judgements invalid")

    def reference_line(self) -> str:
        """The line of a reference judge, whose undecided prompts are ties (it always answers, in both orders alike)."""
        return (f"{self._head()}; A won {self.a_wins}, B won {self.b_wins}, tied {self.split} "
                "(both or neither state the gold answer)")

    def _head(self) -> str:
        return (f"win rate of A: {self.win_rate:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}] "
                f"({self.level:.0%} bootstrap) over {self.n_prompts} prompts")


def win_rate(pairs: Sequence[PairJudgement], n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> WinRate:
    """Aggregate both-order judgements into a :class:`WinRate` (see the module docstring for the scoring)."""
    scores = [p.score_a for p in pairs]
    low, high = bootstrap_ci(scores, n_resamples, level, seed)
    valid = [j.choice for p in pairs for j in (p.ab, p.ba) if j.choice is not None]
    return WinRate(
        win_rate=sum(scores) / len(scores) if scores else math.nan, ci_low=low, ci_high=high, level=level,
        n_prompts=len(pairs), n_judgements=2 * len(pairs),
        a_wins=sum(p.preferred == 0 for p in pairs), b_wins=sum(p.preferred == 1 for p in pairs),
        split=sum(p.preferred is None for p in pairs),
        invalid=sum(j.choice is None for p in pairs for j in (p.ab, p.ba)),
        first_position_rate=(sum(c == 0 for c in valid) / len(valid)) if valid else None,
    )


# --------------------------------------------------------------------------- prompts and models


class HeldOutPrompt(NamedTuple):
    """A prompt to judge on; ``reference``: its gold answer (read only when asked, see :func:`load_prompts`);
    ``where``: its file and line."""

    id: str
    prompt: Prompt
    reference: Reference | None = None
    where: Where = Where()


# What load_prompts does with gold answers: not read; read, and every prompt must have one; only the prompts
# that have one are kept (``--answered-only``).
GOLD_MODES = ("ignore", "require", "only")
NO_GOLD = ("an 'answer' field (and optional 'answer_aliases') on every prompt judged with --judge reference, "
           "or --answered-only to judge only the prompts that have one")


def load_prompts(source: str, split: str = "test", limit: int | None = None, gold: str = "ignore"
                 ) -> list[HeldOutPrompt]:
    """Prompts to judge on: preference data (its prompts) or ``{"prompt": ...}`` rows (optional ``id``), read by
    :func:`lldyn.data.load_prompts` (``builtin:test``, files and ``hf:NAME`` as in :func:`lldyn.data.load_preferences`).

    ``gold`` (:data:`GOLD_MODES`): ``ignore`` reads no gold answers; ``require`` reads each row's ``answer``
    and ``answer_aliases`` into ``reference`` and refuses the first prompt without one (its file and
    line); ``only`` keeps just the prompts that have one (``limit`` then counts those). A malformed answer
    is an error naming its row either way.
    """
    if limit is not None and limit < 1:
        raise LldynError(f"--limit must be >= 1, got {limit}", field="limit", expected="a positive integer")
    if gold not in GOLD_MODES:
        raise LldynError(f"unknown gold mode {gold!r}", field="gold", expected=" or ".join(GOLD_MODES))
    read_limit = None if gold == "only" else limit
    rows: list[tuple[str, Prompt, Mapping[str, Any], Where]] = [
        (p.id, p.prompt, p.fields, p.where) for p in read_prompts(str(source), split, read_limit)]
    out: list[HeldOutPrompt] = []
    for pid, prompt, fields, where in rows:
        reference = None if gold == "ignore" else Reference.from_row(fields, where.file, where.line)
        if reference is None and gold == "require":
            raise LldynError(f"prompt {pid!r} has no gold answer", file=where.file, line=where.line, field="answer",
                             expected=NO_GOLD)
        if reference is not None or gold != "only":
            out.append(HeldOutPrompt(pid, prompt, reference, where))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise LldynError("no prompt carries a gold answer", file=str(source), field="answer",
                         expected="prompts with an 'answer' field (and optional 'answer_aliases')")
    return out


def reference_table(prompts: Sequence[HeldOutPrompt]) -> dict[str, Reference]:
    """The gold answers of ``prompts`` keyed for :class:`~lldyn.preferences.ReferenceSource`; the same prompt
    twice with different answers is refused (the second row named)."""
    table: dict[str, Reference] = {}
    for p in prompts:
        if p.reference is None:
            raise LldynError(f"prompt {p.id!r} has no gold answer", file=p.where.file, line=p.where.line,
                             field="answer", expected=NO_GOLD)
        key = prompt_key(p.prompt)
        if table.setdefault(key, p.reference) != p.reference:
            raise LldynError(f"prompt {p.id!r} repeats an earlier prompt with another gold answer", file=p.where.file,
                             line=p.where.line, field="answer", expected="one gold answer per prompt text")
    return table


@dataclass(frozen=True)
class Accuracy:
    """The share of prompts whose response states the gold answer, with a bootstrap interval over prompts."""

    accuracy: float
    ci_low: float
    ci_high: float
    level: float
    stated: int
    n_prompts: int

    def line(self) -> str:
        return (f"{self.accuracy:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}] "
                f"({self.stated}/{self.n_prompts} state the gold answer)")


def answer_accuracy(source: ReferenceSource, prompts: Sequence[Prompt], responses: Sequence[str],
                    n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Accuracy:
    """How many ``responses`` (one per prompt) state their prompt's gold answer (:meth:`ReferenceSource.states`)."""
    stated = [float(source.states(p, r).matched) for p, r in zip(prompts, responses, strict=True)]
    low, high = bootstrap_ci(stated, n_resamples, level, seed)
    return Accuracy(sum(stated) / len(stated) if stated else math.nan, low, high, level, int(sum(stated)),
                    len(stated))
