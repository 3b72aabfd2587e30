"""Degeneration measures against hand-counted n-grams on crafted token sequences."""
from __future__ import annotations

import dataclasses
import random

import pytest

from lldyn.degeneration import (
    Degeneration,
    Loop,
    corpus_distinct_n,
    degeneration,
    distinct_n,
    loop,
    ngrams,
    periodic_suffix,
    repeated_ngram_rate,
    summarise,
)

A, B, C, X = 1, 2, 3, 9
ABC4 = [A, B, C] * 4  # a b c a b c a b c a b c  (12 tokens)


def _naive_repeated_rate(tokens, n):
    """Walk the response and count n-grams seen before: the definition, spelled out."""
    seen, repeats, total = [], 0, 0
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i:i + n])
        repeats += gram in seen
        seen.append(gram)
        total += 1
    return repeats / total if total else 0.0


# --------------------------------------------------------------------------- n-grams and distinct-n


def test_ngrams_are_contiguous_and_none_when_too_short():
    assert ngrams([A, B, C], 2) == [(A, B), (B, C)]
    assert ngrams([A, B, C], 3) == [(A, B, C)]
    assert ngrams([A, B], 3) == []
    assert ngrams([], 1) == []
    with pytest.raises(ValueError):
        ngrams([A], 0)


def test_distinct_n_of_a_loop_by_hand():
    # unigrams: 3 kinds over 12; bigrams ab bc ca: 3 kinds over 11
    assert distinct_n(ABC4, 1) == 3 / 12
    assert distinct_n(ABC4, 2) == 3 / 11


def test_distinct_n_of_a_short_repeat_by_hand():
    tokens = [A, B, A, A]  # unigrams {a, b} / 4; bigrams ab ba aa: 3 / 3
    assert distinct_n(tokens, 1) == 2 / 4
    assert distinct_n(tokens, 2) == 3 / 3


def test_distinct_n_all_distinct_is_one():
    tokens = list(range(10))
    assert distinct_n(tokens, 1) == 1.0
    assert distinct_n(tokens, 2) == 1.0


def test_distinct_n_without_ngrams_is_one_by_convention():
    assert distinct_n([], 1) == 1.0
    assert distinct_n([], 2) == 1.0
    assert distinct_n([A], 2) == 1.0


def test_distinct_n_works_on_words_too():
    assert distinct_n("the cat saw the dog".split(), 1) == 4 / 5


def test_corpus_distinct_counts_across_responses_but_not_across_boundaries():
    responses = [[A, B], [A, B], [C]]
    assert corpus_distinct_n(responses, 1) == 3 / 5      # {a, b, c} over 5 tokens
    assert corpus_distinct_n(responses, 2) == 1 / 2      # (a, b) twice; no (b, a) across responses
    # each response alone is fully distinct: only the corpus view sees the model repeat itself
    assert [distinct_n(r, 2) for r in responses] == [1.0, 1.0, 1.0]
    assert corpus_distinct_n([], 1) == 1.0
    assert corpus_distinct_n([[], [A]], 2) == 1.0


# --------------------------------------------------------------------------- repeated n-gram rate


def test_repeated_ngram_rate_by_hand():
    # 3-grams of a b c a b c a: abc bca cab abc bca -> the last two were seen before: 2 / 5
    assert repeated_ngram_rate([A, B, C, A, B, C, A], 3) == 2 / 5
    # 4-grams of the 12-token loop: 9 of them, 3 kinds -> 6 repeats
    assert repeated_ngram_rate(ABC4, 4) == 6 / 9
    assert repeated_ngram_rate(ABC4) == 6 / 9  # default n = 4 (Welleck et al.'s seq-rep-4)


def test_repeated_ngram_rate_edges():
    assert repeated_ngram_rate(list(range(10)), 4) == 0.0
    assert repeated_ngram_rate([], 4) == 0.0
    assert repeated_ngram_rate([A, A, A], 4) == 0.0        # no 4-gram at all
    assert repeated_ngram_rate([X] * 5, 1) == 4 / 5


def test_repeated_ngram_rate_matches_naive_and_is_one_minus_distinct():
    rng = random.Random(0)
    for _ in range(200):
        tokens = [rng.randrange(4) for _ in range(rng.randrange(0, 20))]
        for n in (1, 2, 3, 4):
            rate = repeated_ngram_rate(tokens, n)
            assert rate == pytest.approx(_naive_repeated_rate(tokens, n), abs=1e-12)
            assert rate == pytest.approx(1.0 - distinct_n(tokens, n), abs=1e-12)


# --------------------------------------------------------------------------- loops


def test_periodic_suffix_by_hand():
    assert periodic_suffix([A, B, A, B, A], 2) == 5
    assert periodic_suffix([A, B, A, B, A], 1) == 1
    assert periodic_suffix([C, A, B, C, A, B, C], 3) == 7
    assert periodic_suffix([A], 3) == 1
    assert periodic_suffix([], 1) == 0


def test_loop_abc_to_the_budget_without_eos():
    result = loop(ABC4, budget=12, eos_reached=False)
    assert result == Loop(in_loop=True, period=3, covered=12, start=0)
    assert result.repeats == 4.0


def test_loop_after_a_prefix_covers_only_the_periodic_tail():
    tokens = [7, 8, 9] + ABC4  # the prefix is not part of the loop
    assert loop(tokens, budget=15, eos_reached=False) == Loop(True, period=3, covered=12, start=3)
    # a prefix ending in a partial unit ("c") is covered too: c a b c a b c ...
    tokens = [7, 8, C] + ABC4
    assert loop(tokens, budget=15, eos_reached=False) == Loop(True, period=3, covered=13, start=2)


def test_period_one_loop_needs_eight_equal_tokens():
    assert loop([5, 6] + [X] * 8, budget=10, eos_reached=False) == Loop(True, period=1, covered=8, start=2)
    assert loop([5, 6, 7] + [X] * 7, budget=10, eos_reached=False) == Loop(False)


def test_loop_needs_three_repeats_of_the_unit():
    unit = [1, 2, 3, 4, 5, 6]
    assert not loop(unit * 2, budget=12, eos_reached=False).in_loop
    assert loop(unit * 3, budget=18, eos_reached=False) == Loop(True, period=6, covered=18, start=0)


def test_loop_reports_the_unit_that_covers_most_not_a_run_inside_it():
    unit = [A, B] + [X] * 8  # ends in a period-1 run of 8 that qualifies on its own
    tokens = unit * 3
    assert loop(tokens, budget=30, eos_reached=False) == Loop(True, period=10, covered=30, start=0)


def test_loop_longer_than_max_period_is_not_seen():
    tokens = [1, 2, 3, 4, 5] * 4
    assert loop(tokens, budget=20, eos_reached=False, max_period=4) == Loop(False)
    assert loop(tokens, budget=20, eos_reached=False, max_period=5).period == 5


def test_no_loop_when_all_distinct():
    assert loop(list(range(10)), budget=10, eos_reached=False) == Loop(False)


def test_repeating_response_that_stops_with_eos_is_not_a_loop():
    assert loop(ABC4, budget=20, eos_reached=True) == Loop(False)
    assert loop(ABC4, budget=12, eos_reached=True) == Loop(False)


def test_repeating_response_that_did_not_use_the_budget_is_not_a_loop():
    assert loop(ABC4, budget=13, eos_reached=False) == Loop(False)


def test_loop_never_claims_more_tokens_than_the_budget():
    rng = random.Random(1)
    for _ in range(300):
        budget = rng.randrange(1, 40)
        unit = [rng.randrange(3) for _ in range(rng.randrange(1, 6))]
        prefix = [rng.randrange(3) for _ in range(rng.randrange(0, budget + 1))]
        tokens = (prefix + unit * budget)[:budget]
        result = loop(tokens, budget=budget, eos_reached=False)
        assert 0 <= result.covered <= len(tokens) <= budget
        if result.in_loop:
            assert result.start + result.covered == len(tokens)
            assert result.covered >= max(3 * result.period, 8)
            tail = tokens[result.start:]
            assert all(tail[i] == tail[i + result.period] for i in range(len(tail) - result.period))
        else:
            assert result == Loop(False)


def test_more_tokens_than_the_budget_is_a_bug():
    with pytest.raises(ValueError, match="budget"):
        loop(ABC4, budget=11, eos_reached=False)
    with pytest.raises(ValueError, match="budget"):
        degeneration(ABC4, eos_reached=False, budget=0)


# --------------------------------------------------------------------------- one response, many responses


def test_degeneration_of_a_loop_by_hand():
    result = degeneration(ABC4, eos_reached=False, budget=12)
    assert result == Degeneration(length=12, budget=12, eos_reached=False, distinct_1=3 / 12, distinct_2=3 / 11,
                                  repeated_ngram_rate=6 / 9, repeat_n=4, in_loop=True, loop_period=3,
                                  loop_tokens=12)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.length = 3  # type: ignore[misc]


def test_degeneration_of_eos_at_once_is_defined():
    result = degeneration([], eos_reached=True, budget=64)
    assert result == Degeneration(length=0, budget=64, eos_reached=True, distinct_1=1.0, distinct_2=1.0,
                                  repeated_ngram_rate=0.0, repeat_n=4, in_loop=False, loop_period=None,
                                  loop_tokens=0)


def test_degeneration_of_a_diverse_response():
    result = degeneration(list(range(10)), eos_reached=True, budget=64)
    assert (result.distinct_1, result.distinct_2, result.repeated_ngram_rate, result.in_loop) == (1.0, 1.0, 0.0, False)


def test_summarise_by_hand():
    looping = degeneration(ABC4, eos_reached=False, budget=12)
    diverse = degeneration(list(range(10)), eos_reached=True, budget=12)
    empty = degeneration([], eos_reached=True, budget=12)
    summary = summarise([looping, diverse, empty])
    assert summary.n == 3
    assert summary.mean_length == (12 + 10 + 0) / 3
    assert summary.share_eos == 2 / 3
    assert summary.share_full_budget == 1 / 3
    assert summary.mean_distinct_1 == (3 / 12 + 1.0 + 1.0) / 3
    assert summary.mean_distinct_2 == (3 / 11 + 1.0 + 1.0) / 3
    assert summary.mean_repeated_ngram_rate == (6 / 9 + 0.0 + 0.0) / 3
    assert summary.share_in_loop == 1 / 3
    assert summary.mean_loop_period == 3.0
    assert summary.n_empty == 1


def test_summarise_without_loops_and_refusals():
    summary = summarise([degeneration([A, B], eos_reached=True, budget=8)])
    assert summary.share_in_loop == 0.0 and summary.mean_loop_period is None
    with pytest.raises(ValueError):
        summarise([])
    with pytest.raises(ValueError, match="different n"):
        summarise([degeneration([A], True, 8), degeneration([A], True, 8, repeat_n=3)])
