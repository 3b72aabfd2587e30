"""Does a response state the gold answer? The matcher behind ``lldyn judge --judge reference``.

Many built-in prompts carry a gold key fact ``answer`` ("Paris", "72", "cold", "gato") and
``answer_aliases`` (accepted variants). A judge with ground truth then needs no model: response A
beats response B when A states the gold fact and B does not (:func:`reference_verdict`). This
module decides "states the gold fact", the way exact-match scoring of reading-comprehension
answers does (SQuAD's official evaluation, Rajpurkar et al. 2016: lower case, no punctuation,
collapsed white space, then compare), plus numbers and negation. Named ``reference_answer`` so it
is not mistaken for the reference *model* of DPO.

Normalisation (:func:`normalise`; answers, aliases and responses alike), in order:
    1. Unicode NFKD, combining marks (accents) dropped, case-folded: "Bogotá" -> "bogota",
       "Straße" -> "strasse", full-width "７２" -> "72", "ﬁ" -> "fi".
    2. Words are runs of letters and digits; every other character separates words. An apostrophe
       between two letters splits the word ("Paris's" -> "paris s", "d'Ivoire" -> "d ivoire")
       except that "n't" becomes "not" ("isn't" -> "is not", "can't" -> "can not",
       "won't" -> "will not"), and "cannot" -> "can not".
    3. Numbers: "," and "." between digits stay inside the number. Thousands separators are
       removed ("1,000" -> "1000", "1,000,000.5" -> "1000000.5"); a comma that does not group
       thousands separates numbers ("1,2" -> "1 2"); decimals are written without trailing zeros
       ("2.50" -> "2.5", "72.0" -> "72", "007" -> "7"); "-" or "−" directly before a digit and not
       after a letter or digit is a minus sign ("-5" stays "-5", "3-5" -> "3 5"); a number glued
       to letters is split from them ("100km" -> "100 km") except ordinal endings ("72nd" stays
       "72nd", which is not "72"); words that start with a letter keep their digits ("co2").
    4. Number words up to the trillions become digits: "seventy-two" / "seventy two" -> "72",
       "twelve" -> "12", "one hundred and five" -> "105", "a thousand" -> "1000",
       "two thousand and twenty-four" -> "2024", "nineteen hundred" -> "1900",
       "two point five" -> "2.5", "minus five" -> "-5", "3 thousand" -> "3000",
       "1.5 million" -> "1500000". Separate numbers stay separate ("one two three" -> "1 2 3",
       "nineteen eighty" -> "19 80"). Ordinal words ("first") are not converted; "one" is
       converted even as a pronoun ("this one" -> "this 1"), on both sides alike.
    5. Articles are kept in :func:`normalise` (removing them everywhere would turn "vitamin A"
       into "vitamin", which "vitamin C" contains). Instead one leading article of an answer or
       alias is dropped ("The Hague" -> "hague", matched in "the hague" and in "hague"), and
       articles do not count in the negation window below.
Not handled: ordinal words, fractions ("half"), European decimal commas ("2,5"), space-grouped
thousands ("1 000"), and scripts written without spaces (a Chinese answer inside a Chinese
sentence is not a whole word).

Mentions: the answer or an alias is *mentioned* where its normalised words occur as consecutive
whole words of the normalised response (across punctuation, since an answer may hold a comma:
"Paris, France"), so "72" matches neither "172" nor "7.2", "hot" does not match "shot", and
"Parisian" is not a mention of "Paris" (an adjective formed from the answer is a different word;
list it as an alias if it should count). A mention inside a longer mention ("Delhi" inside
"New Delhi") is the longer one only.

Negation. The response is cut into clauses at . , ; : ! ? … — – newlines (and CJK 。、) and
before the words "but", "however", "although", "though", "whereas" ("anything but" stays one cue).
A mention is *negated* when
    * one of :data:`NEGATION_CUES` ends among the :data:`NEGATION_WINDOW` = 3 words right before
      it in its clause, articles not counted: "not Paris", "isn't Paris", "is not the Paris",
      "never Paris", "rather than Paris", "instead of Paris", "neither Paris nor Lyon" (both);
      but "not Lyon, Paris", "It is not Lyon but Paris" and "It's not Lyon it's Paris" (cue 4
      words back) leave Paris affirmed;
    * or it is followed at once, in its clause, by one of :data:`POST_NEGATIONS` ("Paris is not
      the capital", "Paris is wrong");
    * or the next clause is nothing but a rejection, :data:`REJECTIONS` ("Paris? No, Lyon.",
      "Paris. Wrong.").
A cue inside one of :data:`NEGATION_EXCEPTIONS` does not negate ("not only Paris", "no doubt
Paris", "none other than Paris"), nor does a cue that is itself a mention of the answer (a gold
answer "no").

A response states the answer when it has a mention and *every* mention is affirmed. A response that
names the answer and also negates it ("It is Paris. Paris? No, Lyon.") contradicts itself and does
not state it (``reason == CONTRADICTED``): a judge with ground truth rewards committing to the gold
fact, and a self-contradiction ties with silence. Hedges are not negations ("I'm not sure, but it's
Paris" states Paris).

Mentions the prompt already makes. A response that restates its prompt repeats the prompt's
mentions: "Divide 64 by 8." has the gold answer 8, and "Dividing 64 by 8 gives 9." mentions 8.
Given the prompt (``prompt=``, as :class:`ReferenceJudge` and ``lldyn judge --judge reference``
always give it), the first k mentions of the response are the prompt's, where k is the number of
mentions (affirmed or negated) in the prompt, and do not count; the rules above apply to the rest,
and a response with no other mention has the reason :data:`RESTATED`. So "Dividing 64 by 8 gives
8." states 8 and "Dividing 64 by 8 gives 9." does not. A count cannot tell a restatement from an
answer that equals what the prompt says, so a bare "8." does not state 8 either, nor "Seventy-two."
for "Say 72 in words." (false negatives the rule accepts; the built-in data's tests count the same
way, and its only such rows, builtin-0102 and builtin-0106, are training rows). Without a prompt
(k = 0) nothing is skipped.

Known limits, by design of a word matcher: a denial of something else after the mention counts
("Paris is not in Germany" negates Paris); "one" as a pronoun is the number 1.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from lldyn.errors import LldynError

__all__ = [
    "NEGATION_WINDOW",
    "NEGATION_CUES",
    "NEGATION_EXCEPTIONS",
    "POST_NEGATIONS",
    "REJECTIONS",
    "CLAUSE_BREAK_WORDS",
    "STATED",
    "NOT_MENTIONED",
    "NEGATED",
    "CONTRADICTED",
    "EMPTY",
    "RESTATED",
    "normalise",
    "Mention",
    "Match",
    "states_answer",
    "reference_verdict",
    "Reference",
    "ReferenceJudge",
    "prompt_words",
]

# --------------------------------------------------------------------------- the documented lists

NEGATION_WINDOW = 3
"""How many words (articles not counted) before a mention a negation cue may end."""

NEGATION_CUES: tuple[tuple[str, ...], ...] = (
    ("not",), ("no",), ("never",), ("neither",), ("nor",), ("unlike",),
    ("rather", "than"), ("instead", "of"), ("other", "than"), ("as", "opposed", "to"),
    ("anything", "but"), ("far", "from"),
)
"""Cues before a mention, as normalised words ("isn't", "wasn't", "don't", "can't", "cannot" all
contain "not" after normalisation)."""

NEGATION_EXCEPTIONS: tuple[tuple[str, ...], ...] = (
    ("not", "only"), ("not", "just"), ("not", "merely"), ("not", "simply"), ("not", "least"),
    ("no", "doubt"), ("none", "other", "than"), ("no", "other", "than"),
)
"""Phrases in which a cue word does not negate what follows."""

POST_NEGATIONS: tuple[tuple[str, ...], ...] = (
    ("is", "not"), ("are", "not"), ("was", "not"), ("were", "not"), ("s", "not"),
    ("is", "never"), ("was", "never"),
    ("is", "wrong"), ("was", "wrong"), ("is", "incorrect"), ("was", "incorrect"), ("is", "false"),
)
"""Words right after a mention that deny it ("Paris is not the capital", "Paris's not", "Paris is wrong")."""

REJECTIONS: tuple[tuple[str, ...], ...] = (
    ("no",), ("nope",), ("wrong",), ("incorrect",), ("not", "really"), ("not", "quite"),
)
"""A clause consisting of only one of these rejects the clause before it ("Paris? No, ...")."""

CLAUSE_BREAK_WORDS = frozenset({"but", "however", "although", "though", "whereas"})
"""Words that start a new clause (so "not Lyon but Paris" does not negate Paris)."""

_CLAUSE_BREAK_CHARS = frozenset(".,;:!?\u2026\u2014\u2013\n\r\u3002\u3001\u00bf\u00a1")
_APOSTROPHES = frozenset("'\u2019\u02bc\u2018")
_MINUS = frozenset("-\u2212")
_ARTICLES = frozenset({"a", "an", "the"})
_ORDINAL_ENDINGS = frozenset({"st", "nd", "rd", "th"})
_NT_BASES = {"ca": "can", "wo": "will", "sha": "shall", "ai": "is"}

STATED = "stated"
NOT_MENTIONED = "not mentioned"
NEGATED = "only negated"
CONTRADICTED = "stated and negated"
EMPTY = "empty response"
RESTATED = "only the prompt's mentions"

# --------------------------------------------------------------------------- number words

_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_DIGIT_WORDS = {w: v for w, v in _UNITS.items() if v < 10}
_ONES = {w: v for w, v in _UNITS.items() if 1 <= v <= 9}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES = {"thousand": 10 ** 3, "million": 10 ** 6, "billion": 10 ** 9, "trillion": 10 ** 12}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_RAW_NUMBER = re.compile(r"(-?)(\d[\d.,]*)([^\W\d_]*)")
_GROUPED = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_PLAIN = re.compile(r"\d+(?:\.\d+)?")


def _canon(value: Decimal) -> str:
    """A number as normalised text: integers without a point, decimals without trailing zeros."""
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _tens_part(words: Sequence[str], k: int) -> tuple[int, int] | None:
    """0..99 in words at ``k``: "seven", "twelve", "seventy", "seventy two"."""
    if k >= len(words):
        return None
    w = words[k]
    if w in _TENS:
        if k + 1 < len(words) and words[k + 1] in _ONES:
            return _TENS[w] + _ONES[words[k + 1]], k + 2
        return _TENS[w], k + 1
    if w in _UNITS:
        return _UNITS[w], k + 1
    return None


def _small(words: Sequence[str], k: int, allow_digits: bool) -> tuple[Decimal, int] | None:
    """A number below a thousand at ``k`` ("a", digits, "two hundred and five"), before any scale word."""
    if k >= len(words):
        return None
    w = words[k]
    nxt = words[k + 1] if k + 1 < len(words) else ""
    if allow_digits and _NUMBER.fullmatch(w):
        value, end = Decimal(w), k + 1
    elif w == "a" and (nxt == "hundred" or nxt in _SCALES):
        value, end = Decimal(1), k + 1
    else:
        part = _tens_part(words, k)
        if part is None:
            return None
        value, end = Decimal(part[0]), part[1]
    if end < len(words) and words[end] == "hundred" and value == value.to_integral_value() and 1 <= value <= 99:
        value, end = value * 100, end + 1
        rest_at = end + 1 if end < len(words) and words[end] == "and" else end
        rest = _tens_part(words, rest_at)
        # "one hundred and two hundred" is two numbers ("one hundred and two thousand" is one: 102000)
        if rest is not None and not (rest[1] < len(words) and words[rest[1]] == "hundred"):
            value, end = value + rest[0], rest[1]
    return value, end


def _cardinal(words: Sequence[str], k: int) -> tuple[Decimal, int] | None:
    """The longest number at ``k``: smalls joined by decreasing scale words ("two million three thousand")."""
    first = _small(words, k, allow_digits=True)
    if first is None:
        return None
    total, last_scale = Decimal(0), None
    value, end = first
    while True:
        scale = _SCALES.get(words[end]) if end < len(words) else None
        if scale is None or value <= 0 or (last_scale is not None and scale >= last_scale):
            return total + value, end
        total, last_scale, end = total + value * scale, scale, end + 1
        after = end + 1 if end < len(words) and words[end] == "and" else end
        nxt = _small(words, after, allow_digits=False)
        if nxt is None:
            return total, end
        nxt_scale = _SCALES.get(words[nxt[1]]) if nxt[1] < len(words) else None
        if nxt_scale is not None and nxt_scale >= last_scale:  # "one thousand and two thousand"
            return total, end
        value, end = nxt


def _number_at(words: Sequence[str], k: int) -> tuple[Decimal, int] | None:
    """A number written (partly) in words at ``k``, with an optional sign word and decimal part."""
    sign, start = 1, k
    if words[k] in ("minus", "negative"):
        sign, start = -1, k + 1
    if start >= len(words):
        return None
    is_digits = _NUMBER.fullmatch(words[start]) is not None
    if is_digits:  # digits join only a following scale word ("3 thousand") or a sign word ("minus 5")
        has_scale = start + 1 < len(words) and (words[start + 1] in _SCALES or words[start + 1] == "hundred")
        if not (has_scale or sign < 0):
            return None
    found = _cardinal(words, start)
    if found is None:
        return None
    value, end = found
    if (not is_digits and value == value.to_integral_value() and end + 1 < len(words)
            and words[end] == "point" and words[end + 1] in _DIGIT_WORDS):
        digits = ""
        end += 1
        while end < len(words) and words[end] in _DIGIT_WORDS:
            digits += str(_DIGIT_WORDS[words[end]])
            end += 1
        value = Decimal(f"{int(value)}.{digits}")
    return sign * value, end


# --------------------------------------------------------------------------- words with positions


class _Word(NamedTuple):
    text: str       # normalised word
    clause: int     # clause index; words of different clauses never form a phrase
    start: int      # character span in the original text
    end: int


def _chars(text: str) -> list[tuple[str, int]]:
    """Step 1 of the normalisation, one output character at a time with its index in ``text``."""
    out: list[tuple[str, int]] = []
    for i, ch in enumerate(text):
        for folded in unicodedata.normalize("NFKD", ch).casefold():
            for c in unicodedata.normalize("NFKD", folded):
                if not unicodedata.combining(c):
                    out.append((c, i))
    return out


def _is_word_char(c: str) -> bool:
    return bool(c) and unicodedata.category(c)[0] in "LN"


def _raw_words(text: str) -> list[tuple[list[tuple[str, int]], int]]:
    """Step 2's split into words (each a list of (char, index)) with their clause index."""
    stream = _chars(text)
    words: list[tuple[list[tuple[str, int]], int]] = []
    current: list[tuple[str, int]] = []
    clause, clause_used = 0, False

    def flush() -> None:
        nonlocal current, clause_used
        if current:
            words.append((current, clause))
            clause_used = True
            current = []

    for k, (c, i) in enumerate(stream):
        prev = stream[k - 1][0] if k else ""
        nxt = stream[k + 1][0] if k + 1 < len(stream) else ""
        if _is_word_char(c):
            current.append((c, i))
        elif c in _APOSTROPHES and current and _is_word_char(prev) and _is_word_char(nxt):
            current.append(("'", i))
        elif c in ".," and current and prev.isdigit() and nxt.isdigit():
            current.append((c, i))
        elif c in _MINUS and not current and nxt.isdigit() and not _is_word_char(prev):
            current.append(("-", i))
        else:
            flush()
            if c in _CLAUSE_BREAK_CHARS and clause_used:
                clause, clause_used = clause + 1, False
    flush()
    return words


def _piece(chars: Sequence[tuple[str, int]], clause: int, text: str | None = None) -> _Word:
    return _Word("".join(c for c, _ in chars) if text is None else text, clause, chars[0][1], chars[-1][1] + 1)


def _split_number(chars: list[tuple[str, int]], clause: int) -> list[_Word]:
    """Step 3 for a word that starts with a digit or a minus sign."""
    text = "".join(c for c, _ in chars)
    m = _RAW_NUMBER.fullmatch(text)
    if m is None:
        return [_piece(chars, clause)]
    sign, body, suffix = m.groups()
    body_chars = chars[len(sign):len(sign) + len(body)]
    suffix_chars = chars[len(sign) + len(body):]
    if _GROUPED.fullmatch(body) or _PLAIN.fullmatch(body):
        numbers = [(sign, body.replace(",", ""), chars[:len(sign) + len(body)])]
    else:  # "1,2" or "1.2.3": separate integers
        numbers, run = [], []
        for c, i in body_chars:
            if c.isdigit():
                run.append((c, i))
            elif run:
                numbers.append(("", "".join(ch for ch, _ in run), run))
                run = []
        if run:
            numbers.append(("", "".join(ch for ch, _ in run), run))
        if sign and numbers:
            numbers[0] = (sign, numbers[0][1], chars[:1] + numbers[0][2])
    out = []
    for s, digits, span in numbers:
        try:
            canon = _canon(Decimal(s + digits))
        except InvalidOperation:  # pragma: no cover - digits only by construction
            canon = s + digits
        out.append(_piece(span, clause, canon))
    if suffix:
        if suffix in _ORDINAL_ENDINGS and len(out) == 1:
            out[0] = _Word(out[0].text + suffix, clause, out[0].start, suffix_chars[-1][1] + 1)
        else:
            out.append(_piece(suffix_chars, clause))
    return out


def _split_word(chars: list[tuple[str, int]], clause: int) -> list[_Word]:
    """Step 2's apostrophes and "cannot", then step 3 for the parts that are numbers."""
    text = "".join(c for c, _ in chars)
    if text.endswith("n't") and len(text) > 3 and "'" not in text[:-3] and not text[0].isdigit():
        base = chars[:-3]
        base_text = "".join(c for c, _ in base)
        return [_piece(base, clause, _NT_BASES.get(base_text, base_text)), _piece(chars[-3:], clause, "not")]
    if text == "cannot":
        return [_piece(chars[:3], clause), _piece(chars[3:], clause)]
    parts: list[list[tuple[str, int]]] = [[]]
    for c, i in chars:
        if c == "'":
            parts.append([])
        else:
            parts[-1].append((c, i))
    out: list[_Word] = []
    for part in parts:
        if not part:
            continue
        if part[0][0].isdigit() or part[0][0] == "-":
            out.extend(_split_number(part, clause))
        else:
            out.append(_piece(part, clause))
    return out


def _words(text: str) -> list[_Word]:
    """The normalised words of ``text`` with clause indices and character spans (steps 1-4)."""
    words: list[_Word] = []
    for chars, clause in _raw_words(text):
        words.extend(_split_word(chars, clause))
    # clause break words start a new clause; renumber clauses 0, 1, 2, ... in order
    renumbered: list[_Word] = []
    counter, last_clause = -1, None
    for k, w in enumerate(words):
        if w.clause != last_clause:
            counter, last_clause = counter + 1, w.clause
        elif w.text in CLAUSE_BREAK_WORDS and not (w.text == "but" and words[k - 1].text == "anything"):
            counter += 1
        renumbered.append(w._replace(clause=counter))
    # number words, clause by clause
    out: list[_Word] = []
    k = 0
    while k < len(renumbered):
        end_of_clause = k
        while end_of_clause < len(renumbered) and renumbered[end_of_clause].clause == renumbered[k].clause:
            end_of_clause += 1
        group = renumbered[k:end_of_clause]
        texts = [w.text for w in group]
        j = 0
        while j < len(group):
            found = _number_at(texts, j)
            if found is None:
                out.append(group[j])
                j += 1
            else:
                value, end = found
                out.append(_Word(_canon(value), group[j].clause, group[j].start, group[end - 1].end))
                j = end
        k = end_of_clause
    return out


def normalise(text: str) -> str:
    """The normalised form of ``text``: its words (steps 1-4 of the module docstring), space-separated.

    ``normalise("It's  Bogotá, not 1,000 or seventy-two!") == "it s bogota not 1000 or 72"``.
    Clause breaks (punctuation) are gone from the result; :func:`states_answer` uses them from the
    original text for negation scopes.
    """
    return " ".join(w.text for w in _words(text))


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class Mention:
    """One occurrence of the answer or an alias in a response.

    ``alias``: the answer or alias as given (not normalised); ``form``: its normalised words;
    ``start``/``end``: character span in the response (``response[start:end]`` may read
    "seventy-two" for the form "72"); ``negation``: why it is negated (e.g. ``"'not' before"``,
    ``"'is not' after"``, ``"'no' next"``), None when affirmed.
    """

    alias: str
    form: str
    start: int
    end: int
    negation: str | None = None

    @property
    def negated(self) -> bool:
        return self.negation is not None


@dataclass(frozen=True)
class Match:
    """Whether a response states the gold answer, which alias, where, and why not.

    ``matched``: True iff ``reason == STATED``. ``reason``: :data:`STATED`, :data:`NOT_MENTIONED`,
    :data:`NEGATED` (every mention is negated), :data:`CONTRADICTED` (affirmed and negated
    mentions), :data:`EMPTY` (no words at all) or :data:`RESTATED` (no mention beyond the ones the
    prompt accounts for). ``alias``/``start``/``end``: the first affirmed mention that counts (None
    when there is none). ``mentions``: all mentions in order; ``restated``: how many of the first
    ones were taken as the prompt's and did not count.
    """

    matched: bool
    reason: str
    alias: str | None = None
    start: int | None = None
    end: int | None = None
    mentions: tuple[Mention, ...] = field(default=())
    restated: int = 0


def _forms(answer: str, aliases: Iterable[str]) -> list[tuple[str, tuple[str, ...]]]:
    """(given text, normalised words without one leading article), answer first, duplicates dropped."""
    forms: list[tuple[str, tuple[str, ...]]] = []
    seen: set[tuple[str, ...]] = set()
    for kind, given in [("answer", answer)] + [("answer_aliases", a) for a in aliases]:
        if not isinstance(given, str):
            raise LldynError(f"an answer must be text, got {type(given).__name__}", field=kind, expected="a string")
        words = tuple(w.text for w in _words(given))
        if len(words) > 1 and words[0] in _ARTICLES:
            words = words[1:]
        if not words:
            raise LldynError(f"answer {given!r} has no words after normalisation", field=kind,
                             expected="an answer with at least one letter or digit")
        if words not in seen:
            seen.add(words)
            forms.append((given, words))
    return forms


def _occurrences(texts: Sequence[str], clauses: Sequence[int] | None, phrase: tuple[str, ...]) -> list[int]:
    """Start indices where ``phrase`` occurs as consecutive words (of one clause, when ``clauses`` is given)."""
    n = len(phrase)
    return [s for s in range(len(texts) - n + 1)
            if tuple(texts[s:s + n]) == phrase and (clauses is None or clauses[s] == clauses[s + n - 1])]


def _phrase_ending(texts: Sequence[str], clauses: Sequence[int], end: int, phrase: tuple[str, ...]) -> int | None:
    """Start index of ``phrase`` ending at word ``end`` inside one clause, else None."""
    start = end - len(phrase) + 1
    if start < 0 or tuple(texts[start:end + 1]) != phrase or clauses[start] != clauses[end]:
        return None
    return start


def states_answer(response: str, answer: str, aliases: Sequence[str] = (), prompt: str | None = None) -> Match:
    """Whether ``response`` states ``answer`` (or one of ``aliases``); the rules are in the module docstring.

    With ``prompt``, the response's first k mentions, k = the prompt's mentions, are the prompt's and do
    not count (module docstring, "Mentions the prompt already makes").

    >>> states_answer("The capital of France is Paris.", "Paris").matched
    True
    >>> states_answer("It is not Paris but Lyon.", "Paris").reason
    'only negated'
    >>> states_answer("Dividing 64 by 8 gives 9.", "8", prompt="Divide 64 by 8.").reason
    "only the prompt's mentions"
    """
    match = _states_answer(response, answer, aliases)
    if not prompt or not match.mentions:
        return match
    skip = min(len(_states_answer(prompt, answer, aliases).mentions), len(match.mentions))
    return _judged(match.mentions, skip) if skip else match


def _judged(mentions: tuple[Mention, ...], skip: int = 0) -> Match:
    """The match of a response with these ``mentions`` (at least one), the first ``skip`` not counting."""
    counted = mentions[skip:]
    if not counted:
        return Match(matched=False, reason=RESTATED, mentions=mentions, restated=skip)
    affirmed = [m for m in counted if not m.negated]
    if not affirmed:
        return Match(matched=False, reason=NEGATED, mentions=mentions, restated=skip)
    first = affirmed[0]
    reason = CONTRADICTED if len(affirmed) < len(counted) else STATED
    return Match(matched=reason == STATED, reason=reason, alias=first.alias, start=first.start, end=first.end,
                 mentions=mentions, restated=skip)


def _outermost_mentions(texts: Sequence[str], forms: Sequence[tuple[str, tuple[str, ...]]]
                        ) -> list[tuple[int, int, str, tuple[str, ...]]]:
    """(start, end, alias given, normalised form) of every mention of a form in the words ``texts``, in
    order, a mention inside a longer one dropped. A mention may span a clause break: an answer can itself
    hold a comma ("Paris, France")."""
    spans = [(s, s + len(form), given, form) for given, form in forms for s in _occurrences(texts, None, form)]
    # in order of start, longest first, a span is inside an earlier one exactly when an earlier one reaches as far
    spans.sort(key=lambda m: (m[0], -(m[1] - m[0])))
    kept: list[tuple[int, int, str, tuple[str, ...]]] = []
    reach = -1
    for m in spans:
        if m[1] > reach:
            kept.append(m)
            reach = m[1]
    return kept


def _states_answer(response: str, answer: str, aliases: Sequence[str]) -> Match:
    forms = _forms(answer, aliases)
    if not isinstance(response, str):
        raise LldynError(f"a response must be text, got {type(response).__name__}", expected="a string")
    words = _words(response)
    if not words:
        return Match(matched=False, reason=EMPTY)
    texts = [w.text for w in words]
    clauses = [w.clause for w in words]

    kept = _outermost_mentions(texts, forms)
    if not kept:
        return Match(matched=False, reason=NOT_MENTIONED)
    in_mention = {k for s, e, _, _ in kept for k in range(s, e)}
    exceptions = [(s, s + len(p)) for p in NEGATION_EXCEPTIONS for s in _occurrences(texts, clauses, p)]

    def blocked(start: int, end: int) -> bool:
        """A cue over words [start, end) that an exception overlaps, or that is a mention itself."""
        return (any(s < end and start < e for s, e in exceptions)
                or any(k in in_mention for k in range(start, end)))

    clause_words: dict[int, list[str]] = {}
    for w in words:
        clause_words.setdefault(w.clause, []).append(w.text)
    clause_texts = {c: tuple(ws) for c, ws in clause_words.items()}

    def negation_of(s: int, e: int) -> str | None:
        clause = clauses[s]
        window: list[int] = []
        k = s - 1
        while k >= 0 and clauses[k] == clause and len(window) < NEGATION_WINDOW:
            if texts[k] not in _ARTICLES:
                window.append(k)
            k -= 1
        for last in window:
            for cue in NEGATION_CUES:
                start = _phrase_ending(texts, clauses, last, cue)
                if start is not None and not blocked(start, last + 1):
                    return f"'{' '.join(cue)}' before"
        last_clause = clauses[e - 1]
        for cue in POST_NEGATIONS:
            end = e + len(cue)
            if (end <= len(texts) and tuple(texts[e:end]) == cue and clauses[e] == clauses[end - 1] == last_clause
                    and not blocked(e, end)):
                return f"'{' '.join(cue)}' after"
        if clause_texts.get(last_clause + 1) in REJECTIONS:
            return f"'{' '.join(clause_texts[last_clause + 1])}' next"
        return None

    return _judged(tuple(Mention(alias=given, form=" ".join(form), start=words[s].start, end=words[e - 1].end,
                                 negation=negation_of(s, e)) for s, e, given, form in kept))


def reference_verdict(response_a: str, response_b: str, answer: str, aliases: Sequence[str] = (),
                      prompt: str | None = None) -> int | None:
    """0 when A states the gold answer and B does not, 1 for the reverse, None when both or neither do.

    Symmetric by construction: each response is matched on its own, so swapping A and B swaps
    0 and 1 and keeps None (``judge both orders`` always agrees with itself).
    """
    a = states_answer(response_a, answer, aliases, prompt).matched
    b = states_answer(response_b, answer, aliases, prompt).matched
    if a == b:
        return None
    return 0 if a else 1


# --------------------------------------------------------------------------- gold answers of a data set


@dataclass(frozen=True)
class Reference:
    """The gold key fact of one prompt: ``answer`` and accepted ``aliases`` (data fields ``answer``,
    ``answer_aliases``). Checked at construction: each must have words after normalisation."""

    answer: str
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.aliases, str) or not isinstance(self.aliases, Iterable):
            raise LldynError("answer_aliases must be a list of strings", field="answer_aliases",
                             expected='a list such as ["72", "seventy-two"]')
        object.__setattr__(self, "aliases", tuple(self.aliases))
        _forms(self.answer, self.aliases)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], file: str | None = None, line: int | None = None) -> Reference | None:
        """The reference of a data row, None when it has no ``answer``; errors name ``file:line``."""
        if row.get("answer") is None:
            if row.get("answer_aliases"):
                raise LldynError("answer_aliases given without an answer", file=file, line=line,
                                 field="answer_aliases", expected="an 'answer' field as well")
            return None
        try:
            return cls(row["answer"], row.get("answer_aliases") or ())
        except LldynError as err:
            raise LldynError(err.message, file=file, line=line, field=err.field, expected=err.expected) from None

    def states(self, response: str, prompt: str | None = None) -> Match:
        return states_answer(response, self.answer, self.aliases, prompt)

    def verdict(self, response_a: str, response_b: str, prompt: str | None = None) -> int | None:
        return reference_verdict(response_a, response_b, self.answer, self.aliases, prompt)


def prompt_words(prompt: Any) -> str:
    """The text in which a prompt's own mentions of the answer are counted: the prompt itself, or every
    message's content of a chat prompt, one per line."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(m.get("content", "")) for m in prompt if isinstance(m, Mapping))


class ReferenceJudge:
    """A judge with ground truth in the shape of the other judges: ``prefer(prompt, a, b) -> 0 | 1 | None``.

    ``references`` maps a prompt to its :class:`Reference`: a mapping keyed by prompt text, or a
    function of the prompt (for chat prompts). A prompt without a reference is an error rather than
    a silent tie, so win rates are computed only over prompts that have a gold answer. Mentions of the
    answer that the prompt already makes do not count (:func:`states_answer` with ``prompt``).
    """

    name = "reference"

    def __init__(self, references: Mapping[str, Reference] | Callable[[Any], Reference | None]) -> None:
        self._lookup: Callable[[Any], Reference | None]
        if callable(references):
            self._lookup = references
        else:
            table = dict(references)
            self._lookup = lambda prompt: table.get(prompt) if isinstance(prompt, str) else None

    def reference(self, prompt: Any) -> Reference:
        ref = self._lookup(prompt)
        if ref is None:
            shown = prompt if isinstance(prompt, str) else repr(prompt)
            raise LldynError(f"no gold answer for prompt {shown[:80]!r}", field="answer",
                             expected="an 'answer' for every prompt judged with --judge reference")
        return ref

    def prefer(self, prompt: Any, response_a: str, response_b: str) -> int | None:
        """0 = ``response_a`` states the gold answer and ``response_b`` does not, 1 = the reverse, None = tie."""
        return self.reference(prompt).verdict(response_a, response_b, prompt_words(prompt))

    __call__ = prefer

    def explain(self, prompt: Any, response_a: str, response_b: str) -> tuple[Match, Match]:
        """The two matches behind :meth:`prefer`, for reports."""
        ref = self.reference(prompt)
        return ref.states(response_a, prompt_words(prompt)), ref.states(response_b, prompt_words(prompt))

    def states(self, prompt: Any, response: str) -> Match:
        """Whether ``response`` states the gold answer of ``prompt`` (beyond the prompt's own mentions)."""
        return self.reference(prompt).states(response, prompt_words(prompt))
