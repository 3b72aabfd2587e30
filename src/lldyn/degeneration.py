"""How degenerate a free-running generation is: n-gram diversity, repetition, and repetition loops.

"The repeater" of Ren & Sutherland (ICLR 2025, *Learning Dynamics of LLM Finetuning*, Sec. 4.2;
the squeeze effect, Sec. 3.3 and App. C): a large negative gradient on an already unlikely y-
squeezes probability mass into the argmax token of every context, so after long off-policy DPO
greedy generations start to repeat phrases and finally run into a loop until the
token budget is spent. The tracker measures that at every evaluation, for free, on the greedy
generations it already makes; these pure functions do the arithmetic.

What a response is here:
    ``tokens`` are the response's token ids *without* the EOS token (as :mod:`lldyn.generation`
    returns them), ``eos_reached`` says whether generation stopped at EOS, and ``budget`` is the
    response budget (``max_new_tokens``). A response that used the whole budget has
    ``len(tokens) == budget``; more tokens than the budget is a bug of the caller (``ValueError``).
    The n-gram functions take any sequence of hashable items, so words of a text
    (``text.split()``) work as well as token ids; the tracker passes token ids, since the budget
    and the loop rule are counted in tokens.

Measures (all in [0, 1]):
    * ``distinct_n`` (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
      Conversation Models"): distinct n-grams / total n-grams of one response; the corpus version
      ``corpus_distinct_n`` counts distinct n-grams over all responses / all n-grams (n-grams never
      cross a response boundary). Li et al. scale the distinct count by the number of generated
      *tokens*; we divide by the number of *n-grams* (L - n + 1 per response) so that a response
      without any repeated n-gram scores exactly 1 for every n.
    * ``repeated_ngram_rate`` (Welleck et al. 2019, "Neural Text Generation with Unlikelihood
      Training", seq-rep-n): the share of n-gram occurrences whose n-gram already occurred earlier
      in the same response. Every occurrence after the first of its kind is such a repeat, so the
      rate is exactly ``1 - distinct_n`` (Welleck's ``1 - |unique n-grams| / |n-grams|``). The
      default n = 4 follows Welleck et al.'s seq-rep-4: unigrams and bigrams repeat in any fluent
      text ("the", "of the"), a repeated 4-gram is rarely an accident and mostly a copied phrase.
    * ``loop``: caught in a repetition loop, by the rule documented on :func:`loop`.

Responses without any n-gram (fewer than n tokens, e.g. the empty response of a model that emits
EOS at once) have nothing repeated: ``distinct_n = 1.0`` and ``repeated_ngram_rate = 0.0``
(0/0 is defined this way on purpose, so means over responses stay finite); they are never in a
loop. :class:`DegenerationSummary` counts them (``n_empty``) so that a mean near 1 made of empty
responses can be told apart from a diverse one.
"""
from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_REPEAT_N",
    "DEFAULT_MAX_PERIOD",
    "DEFAULT_MIN_REPEATS",
    "DEFAULT_MIN_LOOP_TOKENS",
    "Loop",
    "Degeneration",
    "DegenerationSummary",
    "ngrams",
    "periodic_suffix",
    "distinct_n",
    "corpus_distinct_n",
    "repeated_ngram_rate",
    "loop",
    "degeneration",
    "summarise",
]

DEFAULT_REPEAT_N = 4        # seq-rep-4 of Welleck et al. (2019)
DEFAULT_MAX_PERIOD = 32     # longest loop unit looked for, in tokens (about one sentence)
DEFAULT_MIN_REPEATS = 3     # the unit must be seen at least 3 times in the tail...
DEFAULT_MIN_LOOP_TOKENS = 8  # ...and the loop must cover at least 8 tokens ("! ! !" is not yet a loop)


def _check_n(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")


def ngrams(tokens: Sequence[Hashable], n: int) -> list[tuple[Hashable, ...]]:
    """The ``len(tokens) - n + 1`` contiguous n-grams of ``tokens``, in order (none if shorter than n)."""
    _check_n(n)
    seq = list(tokens)
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(tokens: Sequence[Hashable], n: int) -> float:
    """Distinct n-grams / total n-grams of one response (1.0 when it has no n-gram).

    ``distinct_n([a, b, c, a, b, c], 1) == 3 / 6``; ``distinct_n([a, b, c, a, b, c], 2) == 3 / 5``.
    """
    grams = ngrams(tokens, n)
    if not grams:
        return 1.0
    return len(set(grams)) / len(grams)


def corpus_distinct_n(responses: Iterable[Sequence[Hashable]], n: int) -> float:
    """Distinct n-grams over all responses / all n-grams of all responses (1.0 when there is none).

    An n-gram repeated in two different responses counts once in the numerator: this is the corpus
    measure of Li et al. (2016), which sees a model that says the same thing to every prompt.
    """
    seen: set[tuple[Hashable, ...]] = set()
    total = 0
    for response in responses:
        grams = ngrams(response, n)
        seen.update(grams)
        total += len(grams)
    if total == 0:
        return 1.0
    return len(seen) / total


def repeated_ngram_rate(tokens: Sequence[Hashable], n: int = DEFAULT_REPEAT_N) -> float:
    """Share of n-gram occurrences already seen earlier in the same response (0.0 with no n-gram).

    Welleck et al. (2019)'s seq-rep-n; equal to ``1 - distinct_n(tokens, n)``. Default n = 4 (see
    the module docstring). ``repeated_ngram_rate([a, b, c, a, b, c, a], 3) == 2 / 5``.
    """
    grams = ngrams(tokens, n)
    if not grams:
        return 0.0
    return (len(grams) - len(set(grams))) / len(grams)


@dataclass(frozen=True)
class Loop:
    """Whether a response is caught in a repetition loop (rule: :func:`loop`).

    ``period``: length of the repeated unit in tokens (None when not in a loop); ``covered``: how
    many tokens at the end of the response are periodic with that period (0 when not in a loop);
    ``start``: index of the first looping token, ``len(tokens) - covered``.
    """

    in_loop: bool
    period: int | None = None
    covered: int = 0
    start: int | None = None

    @property
    def repeats(self) -> float:
        """How many times the unit is seen in the loop (``covered / period``; may end in a partial unit)."""
        return self.covered / self.period if self.period else 0.0


NOT_IN_LOOP = Loop(in_loop=False)


def _check_budget(tokens: Sequence[Hashable], budget: int) -> None:
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise ValueError(f"budget must be a positive integer, got {budget!r}")
    if len(tokens) > budget:
        raise ValueError(f"a response of {len(tokens)} tokens cannot fit a budget of {budget} tokens "
                         "(pass the response without EOS and the generation's max_new_tokens)")


def periodic_suffix(tokens: Sequence[Hashable], period: int) -> int:
    """Length of the longest suffix of ``tokens`` that is periodic with ``period``.

    A suffix ``s`` is periodic with period p when ``s[i] == s[i + p]`` for every i; a suffix of p
    tokens or fewer always is. So the answer is ``min(p, len)`` plus one for every further token,
    going back from the end, that equals the token p places after it.
    """
    _check_n(period)
    seq = list(tokens)
    if len(seq) <= period:
        return len(seq)
    j = len(seq) - period - 1
    while j >= 0 and seq[j] == seq[j + period]:
        j -= 1
    return len(seq) - (j + 1)


def loop(tokens: Sequence[Hashable], budget: int, eos_reached: bool, *, max_period: int = DEFAULT_MAX_PERIOD,
         min_repeats: int = DEFAULT_MIN_REPEATS, min_tokens: int = DEFAULT_MIN_LOOP_TOKENS) -> Loop:
    """Whether the response is caught in a loop, its period and how many tokens the loop covers.

    The rule: a response is in a loop iff
      1. it did not reach EOS (``eos_reached`` is False),
      2. it used the whole budget (``len(tokens) == budget``), and
      3. for some period ``1 <= p <= max_period`` its last ``k`` tokens are periodic with period p
         (``tokens[i] == tokens[i + p]`` for every i in the tail but its last p), where ``k`` is
         the longest such tail and ``k >= max(min_repeats * p, min_tokens)``.
    With the defaults: the unit is seen at least 3 times and the loop covers at least 8 tokens
    (so a period-1 loop needs 8 equal tokens, a period-2 loop 4 repeats), units up to 32 tokens.
    When several periods qualify, the one whose tail covers the most tokens wins, then the
    shortest (a loop of "a b c" is also periodic with 6, 9, ...: it is reported as period 3, and a
    unit "a b x x x x" is period 6, not the period-1 run "x x x x" at its end).
    ``covered`` may end in a partial unit at its start ("c a b c a b c" is 7 tokens of period 3)
    and is never more than ``len(tokens) <= budget``.
    """
    _check_budget(tokens, budget)
    for name, value in (("max_period", max_period), ("min_repeats", min_repeats), ("min_tokens", min_tokens)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if eos_reached or len(tokens) < budget:
        return NOT_IN_LOOP
    best_period, best_covered = None, 0
    for p in range(1, min(max_period, len(tokens)) + 1):
        covered = periodic_suffix(tokens, p)
        if covered >= max(min_repeats * p, min_tokens) and covered > best_covered:
            best_period, best_covered = p, covered
    if best_period is None:
        return NOT_IN_LOOP
    return Loop(in_loop=True, period=best_period, covered=best_covered, start=len(tokens) - best_covered)


@dataclass(frozen=True)
class Degeneration:
    """The degeneration measures of one generated response (see the module docstring).

    ``repeated_ngram_rate`` is for ``repeat_n``-grams (4 by default); ``loop_tokens`` is the
    number of tokens the loop covers (0 when not in a loop).
    """

    length: int
    budget: int
    eos_reached: bool
    distinct_1: float
    distinct_2: float
    repeated_ngram_rate: float
    repeat_n: int
    in_loop: bool
    loop_period: int | None
    loop_tokens: int


def degeneration(tokens: Sequence[Hashable], eos_reached: bool, budget: int, *, repeat_n: int = DEFAULT_REPEAT_N,
                 max_period: int = DEFAULT_MAX_PERIOD, min_repeats: int = DEFAULT_MIN_REPEATS,
                 min_tokens: int = DEFAULT_MIN_LOOP_TOKENS) -> Degeneration:
    """All measures of one response: length, EOS, distinct-1/2, repeated n-gram rate, loop."""
    caught = loop(tokens, budget, eos_reached, max_period=max_period, min_repeats=min_repeats, min_tokens=min_tokens)
    return Degeneration(
        length=len(tokens),
        budget=budget,
        eos_reached=bool(eos_reached),
        distinct_1=distinct_n(tokens, 1),
        distinct_2=distinct_n(tokens, 2),
        repeated_ngram_rate=repeated_ngram_rate(tokens, repeat_n),
        repeat_n=repeat_n,
        in_loop=caught.in_loop,
        loop_period=caught.period,
        loop_tokens=caught.covered,
    )


@dataclass(frozen=True)
class DegenerationSummary:
    """Means over responses (each response weighs the same) and shares of responses.

    ``mean_loop_period`` is over the responses in a loop (None when none is); ``n_empty`` counts
    responses of length 0, whose distinct-n of 1.0 and repeated rate of 0.0 are conventions.
    """

    n: int
    mean_length: float
    share_eos: float
    share_full_budget: float
    mean_distinct_1: float
    mean_distinct_2: float
    mean_repeated_ngram_rate: float
    share_in_loop: float
    mean_loop_period: float | None
    n_empty: int


def summarise(results: Sequence[Degeneration]) -> DegenerationSummary:
    """Summarise the measures of many responses (one evaluation of the tracker)."""
    rows = list(results)
    if not rows:
        raise ValueError("summarise needs at least one Degeneration result")
    if len({r.repeat_n for r in rows}) > 1:
        raise ValueError("cannot average repeated-n-gram rates of different n: "
                         f"{sorted({r.repeat_n for r in rows})}")
    n = len(rows)
    looping = [r.loop_period for r in rows if r.in_loop and r.loop_period is not None]
    return DegenerationSummary(
        n=n,
        mean_length=sum(r.length for r in rows) / n,
        share_eos=sum(r.eos_reached for r in rows) / n,
        share_full_budget=sum(r.length == r.budget for r in rows) / n,
        mean_distinct_1=sum(r.distinct_1 for r in rows) / n,
        mean_distinct_2=sum(r.distinct_2 for r in rows) / n,
        mean_repeated_ngram_rate=sum(r.repeated_ngram_rate for r in rows) / n,
        share_in_loop=sum(r.in_loop for r in rows) / n,
        mean_loop_period=sum(looping) / len(looping) if looping else None,
        n_empty=sum(r.length == 0 for r in rows),
    )
